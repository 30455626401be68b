"""The protocol side of the RESP server: connection and server commands,
RESP3, pipelines, MULTI/EXEC/WATCH, SCAN under concurrent writes, bad input
on raw sockets, several connections across both front ends, and a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
import redis

from tests.server.conftest import ServerProcess
from tests.waiting import wait_until


def error(fn, *args, **kw) -> str:
    with pytest.raises(redis.ResponseError) as info:
        fn(*args, **kw)
    return str(info.value)


def talk(server, data: bytes, close_after: bool = True, timeout: float = 30) -> bytes:
    """Send raw bytes; everything the server sends until it closes the
    connection (with *close_after*, QUIT is sent last to make it close)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data + (b"QUIT\r\n" if close_after else b""))
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


# --- connection and server commands -------------------------------------------------------------


def test_ping_echo_select_time_quit(server, r):
    assert r.ping() is True and r.echo("hi") == b"hi"
    assert r.execute_command("SELECT", 0) is True
    assert error(r.execute_command, "SELECT", 1) == "DB index is out of range"
    assert error(r.execute_command, "SELECT", "x") == "value is not an integer or out of range"
    secs, micros = r.time()
    assert secs > 1_600_000_000 and 0 <= micros < 1_000_000
    assert talk(server, b"PING\r\n*2\r\n$4\r\nPING\r\n$1\r\nx\r\n") == b"+PONG\r\n$1\r\nx\r\n+OK\r\n"


def test_unknown_command_and_arity(server, r):
    assert error(r.execute_command, "FOO", "a", "b") == "unknown command 'FOO', with args beginning with: 'a' 'b' "
    assert talk(server, b"*1\r\n$3\r\nfoo\r\n") == \
        b"-ERR unknown command 'foo', with args beginning with: \r\n+OK\r\n"
    assert error(r.execute_command, "GET") == "wrong number of arguments for 'get' command"
    assert error(r.execute_command, "CONFIG", "GET") == "wrong number of arguments for 'config|get' command"


def test_hello_and_resp3(server, r3):
    hello = r3.execute_command("HELLO", 3)
    assert hello[b"proto"] == 3 and hello[b"server"] == b"redis" and hello[b"mode"] == b"standalone"
    assert r3.get("nothing") is None and r3.set("k3", "v") and r3.get("k3") == b"v"
    assert r3.config_get("port") == {"port": str(server.port)}
    assert r3.info("server")["tcp_port"] == server.port
    assert error(r3.execute_command, "HELLO", 4) == "NOPROTO unsupported protocol version"
    assert talk(server, b"HELLO 3 AUTH bob pw\r\nAUTH pw\r\nAUTH default pw\r\n") == (
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        b"-ERR AUTH <password> called without any password configured for the default user. "
        b"Are you sure your configuration is correct?\r\n+OK\r\n+OK\r\n")
    raw = talk(server, b"HELLO 3 SETNAME raw\r\nGET nothing\r\nCONFIG GET port\r\nCLIENT GETNAME\r\nHELLO 2\r\n"
                       b"GET nothing\r\n")
    assert raw.startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
    port = str(server.port).encode()
    assert b"_\r\n%%1\r\n$4\r\nport\r\n$%d\r\n%s\r\n$3\r\nraw\r\n*14\r\n" % (len(port), port) in raw
    assert raw.endswith(b"$-1\r\n+OK\r\n")
    with server.client(3) as c:
        p = c.pipeline(transaction=True)
        p.set("a3", 1).incr("a3").get("a3").get("none3")
        assert p.execute() == [True, 2, b"2", None]


def test_client_commands(server):
    with server.client() as c:
        cid = c.client_id()
        assert isinstance(cid, int) and cid > 0
        assert c.client_getname() is None
        assert c.client_setname("worker-1") is True and c.client_getname() == "worker-1"
        mine = [e for e in c.client_list() if int(e["id"]) == cid]
        assert len(mine) == 1 and mine[0]["name"] == "worker-1" and mine[0]["cmd"] == "client|list"
        assert f"id={cid} " in c.execute_command("CLIENT", "INFO").decode()
        assert error(c.client_setname, "a b") == "Client names cannot contain spaces, newlines or special characters."
        assert error(c.execute_command, "CLIENT", "FOO") == "unknown subcommand 'FOO'. Try CLIENT HELP."
        assert c.execute_command("CLIENT", "SETINFO", "LIB-NAME", "mylib") == b"OK"


def test_command_config_info(server, r):
    count = r.command_count()
    assert count == len(r.execute_command("COMMAND")) >= 55
    info = r.execute_command("COMMAND", "INFO", "get")
    assert info["get"]["arity"] == 2 and info["get"]["flags"] == ["readonly", "fast"]
    assert info["get"]["first_key_pos"] == info["get"]["last_key_pos"] == info["get"]["step_count"] == 1
    assert talk(server, b"COMMAND INFO nosuch\r\n") == b"*1\r\n$-1\r\n+OK\r\n"
    assert r.execute_command("COMMAND", "INFO", "set")["set"]["arity"] == -3
    docs = r.execute_command("COMMAND DOCS", "get")
    assert docs[0] == b"get" and b"summary" in docs[1]
    assert {b"get", b"getex", b"getrange"} <= set(r.execute_command("COMMAND LIST", "FILTERBY", "PATTERN", "get*"))
    assert r.config_get("port") == {"port": str(server.port)}
    assert r.config_get("databases") == {"databases": "1"}
    assert r.config_set("timeout", 0) is True
    assert error(r.config_set, "port", 1) == \
        "CONFIG SET failed (possibly related to argument 'port') - can't set immutable config"
    assert error(r.config_set, "nope", 1) == "Unknown option or number of arguments for CONFIG SET - 'nope'"
    r.mset({"i1": "a", "i2": "b"})
    info = r.info()
    assert info["redis_version"] and info["connected_clients"] >= 1 and info["role"] == "master"
    assert info["multiplexing_api"] == "uvloop"      # a dependency: the front ends run on its loop
    # The loop thread's policy as INFO reports it is the one the kernel has
    # for that thread (the process's main thread, whose id is its pid).
    policy = os.sched_getscheduler(info["process_id"])
    assert info["loop_sched"] == ("batch" if policy == os.SCHED_BATCH else "normal")
    assert policy == os.SCHED_BATCH          # no privilege needed (tests/actors/test_placement.py)
    assert r.info("keyspace") == {"db0": {"keys": 2}}
    assert r.info("stats")["total_commands_processed"] > 0
    r.set("sw", "1")                                 # a plain SET: this front end's SetWriter sends it
    stats = r.info("stats")
    assert stats["setwriter_sets"] >= 1 and stats["setwriter_messages"] >= 1
    assert stats["setwriter_flushes"] >= stats["setwriter_short"] >= 0
    assert r.config_resetstat() is True
    assert r.info("stats")["setwriter_sets"] == 0


# --- pipelines and transactions ------------------------------------------------------------------


def test_pipeline_of_1000_commands_keeps_order(r):
    p = r.pipeline(transaction=False)
    for i in range(250):
        p.set(f"p{i}", i)
        p.incr(f"p{i}")
        p.get(f"p{i}")
        p.append("plog", f"{i},")
    out = p.execute()
    assert len(out) == 1000
    for i in range(250):
        assert out[4 * i:4 * i + 3] == [True, i + 1, str(i + 1).encode()]
    assert r.get("plog") == "".join(f"{i}," for i in range(250)).encode()


def test_pipelined_runs_of_set(r):
    r.set("ttl-key", "old", ex=100)
    p = r.pipeline(transaction=False)
    for i in range(300):
        p.set(f"run{i % 100}", i)                        # each key three times: the last one wins
        if i == 150:
            p.set("", "bad key")
            p.set("ttl-key", "new")
    out = p.execute(raise_on_error=False)
    assert len(out) == 302 and isinstance(out[151], redis.ResponseError)
    assert all(x is True for i, x in enumerate(out) if i != 151)
    assert r.mget([f"run{i}" for i in range(100)]) == [str(200 + i).encode() for i in range(100)]
    assert r.get("ttl-key") == b"new" and r.ttl("ttl-key") == -1


def test_a_run_of_gets_larger_than_the_reply_chunk_keeps_order(r):
    """A pipelined run of GETs whose replies pass the bytes a front end
    holds before writing (1 MiB) is answered in order, misses, bad keys
    and other commands between them included."""
    values = {f"g{i}": bytes([65 + i]) * (300_000 + i) for i in range(8)}
    for k, v in values.items():
        r.set(k, v)
    p = r.pipeline(transaction=False)
    want: list = []
    for n in range(40):
        k = f"g{n % 8}"
        p.get(k)
        want.append(values[k])
        if n % 13 == 5:
            p.get("absent")
            p.ping()
            want += [None, True]
        if n == 20:
            p.get("")
            want.append("bad key")
    out = p.execute(raise_on_error=False)
    assert len(out) == len(want)
    for got, w in zip(out, want):
        if w == "bad key":
            assert isinstance(got, redis.ResponseError) and "key" in str(got)
        else:
            assert got == w


def test_a_pipeline_larger_than_a_read_chunk_keeps_order(server, r):
    """Requests that arrive while a SET waits for its shard or a command
    runs in a worker thread are queued behind it, and reading pauses once
    a chunk is queued: every reply comes, in order."""
    import hiredis

    n = 3000
    reqs = b"".join(b"*3\r\n$3\r\nSET\r\n$6\r\nbig%03d\r\n$40\r\n%040d\r\n" % (i % 1000, i)
                    + b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n"
                    + b"*2\r\n$3\r\nGET\r\n$6\r\nbig%03d\r\n" % (i % 1000) for i in range(n))
    assert len(reqs) > 4 * 65536
    replies: list = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        sender = threading.Thread(target=s.sendall, args=(reqs,))
        sender.start()
        reader = hiredis.Reader()
        while len(replies) < 3 * n:
            chunk = s.recv(65536)
            assert chunk, "the server closed the connection"
            reader.feed(chunk)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
        sender.join(60)
    for i in range(n):
        assert replies[3 * i:3 * i + 3] == [b"OK", i + 1, b"%040d" % i]
    assert r.get("counter") == str(n).encode()


def test_multi_exec_discard(server, r):
    p = r.pipeline(transaction=True)
    assert p.set("m", 1).incr("m").get("m").execute() == [True, 2, b"2"]
    r.set("text", "abc")
    p = r.pipeline(transaction=True)
    out = p.set("n", 1).incr("text").incr("n").execute(raise_on_error=False)
    assert out[0] is True and isinstance(out[1], redis.ResponseError) and out[2] == 2
    raw = talk(server, b"MULTI\r\nSET a\r\nSET b 1\r\nEXEC\r\nEXEC\r\nDISCARD\r\nMULTI\r\nMULTI\r\nNOPE\r\nEXEC\r\n"
                       b"MULTI\r\nSET c 1\r\nDISCARD\r\nGET c\r\nGET b\r\nMULTI\r\nEXEC\r\n")
    assert raw == (b"+OK\r\n-ERR wrong number of arguments for 'set' command\r\n+QUEUED\r\n"
                   b"-EXECABORT Transaction discarded because of previous errors.\r\n"
                   b"-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n"
                   b"+OK\r\n-ERR MULTI calls can not be nested\r\n"
                   b"-ERR unknown command 'NOPE', with args beginning with: \r\n"
                   b"-EXECABORT Transaction discarded because of previous errors.\r\n"
                   b"+OK\r\n+QUEUED\r\n+OK\r\n$-1\r\n$-1\r\n+OK\r\n*0\r\n+OK\r\n")


def test_watch(server, r):
    other = server.client()
    r.set("w", "0")
    with r.pipeline() as p:
        p.watch("w")
        other.set("w", "changed")
        p.multi()
        p.set("w", "mine")
        with pytest.raises(redis.WatchError):
            p.execute()
    assert r.get("w") == b"changed"
    with r.pipeline() as p:
        p.watch("w", "absent")
        assert p.get("w") == b"changed"
        p.multi()
        p.set("w", "mine")
        assert p.execute() == [True]
    with r.pipeline() as p:
        p.watch("absent")
        other.set("absent", "now")
        p.multi()
        p.get("absent")
        with pytest.raises(redis.WatchError):
            p.execute()
    assert talk(server, b"WATCH w\r\nUNWATCH\r\nMULTI\r\nGET w\r\nEXEC\r\n") == \
        b"+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n$4\r\nmine\r\n+OK\r\n"
    assert talk(server, b"MULTI\r\nWATCH w\r\nDISCARD\r\n") == \
        b"+OK\r\n-ERR WATCH inside MULTI is not allowed\r\n+OK\r\n+OK\r\n"
    other.close()


def test_exec_blocks_are_isolated(server, r):
    r.mset({"x": "0", "y": "0"})
    stop = threading.Event()
    bad: list[tuple[bytes, bytes]] = []

    def writer():
        with server.client() as c:
            for _ in range(25):
                c.pipeline(transaction=True).incr("x").incr("y").execute()

    def reader():
        with server.client() as c:
            while not stop.is_set():
                x, y = c.pipeline(transaction=True).get("x").get("y").execute()
                if x != y:
                    bad.append((x, y))

    threads = [threading.Thread(target=writer) for _ in range(3)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert bad == [] and r.mget("x", "y") == [b"75", b"75"]


def test_scan_under_concurrent_writes(server, r):
    stable = {f"s:{i:04d}".encode() for i in range(400)}
    r.mset({k: "v" for k in stable})
    stop = threading.Event()

    def churn():
        with server.client() as c:
            n = 0
            while not stop.is_set():
                p = c.pipeline(transaction=False)
                for i in range(0, 400, 7):                      # keys sorted between the stable ones
                    p.set(f"s:{i:04d}:{n}", "x")
                    p.delete(f"s:{i:04d}:{n - 1}")
                p.execute()
                n += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(2):
            seen = list(r.scan_iter(match="s:*", count=25))
            assert stable <= set(seen)
            assert len(seen) == len(set(seen))
    finally:
        stop.set()
        t.join()


# --- bad input -----------------------------------------------------------------------------------


def test_oversized_and_malformed_frames_close_only_that_connection(server, r):
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    slow.sendall(b"*2\r\n$3\r\nGET")                     # an incomplete request held open
    try:
        assert talk(server, b"*1\r\n$999999999999\r\n", close_after=False) == \
            b"-ERR Protocol error: invalid bulk length\r\n"
        assert talk(server, b"*99999999999\r\n", close_after=False) == \
            b"-ERR Protocol error: invalid multibulk length\r\n"
        assert talk(server, b"*3\r\n$3\r\nSET\r\n$2\r\npx\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$100000000000\r\n",
                    close_after=False) == b"+OK\r\n-ERR Protocol error: invalid bulk length\r\n"
        assert talk(server, b"*2\r\n$4\r\nECHO\r\n:1\r\n", close_after=False) == \
            b"-ERR Protocol error: expected '$', got ':'\r\n"
        assert talk(server, b'ECHO "abc\r\n', close_after=False) == \
            b"-ERR Protocol error: unbalanced quotes in request\r\n"
        assert talk(server, b"X" * 70000, close_after=False) == b"-ERR Protocol error: too big inline request\r\n"
        assert r.ping() is True and r.get("px") == b"1"
    finally:
        slow.close()


def test_a_client_that_does_not_read_holds_up_nobody(server, r):
    r.set("big", b"x" * (1 << 20))
    hog = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        hog.sendall(frame_get_big := b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 500)   # 500 MiB of replies
        assert len(frame_get_big) < 20000
        for i in range(50):
            assert r.set(f"free{i}", i) and r.get(f"free{i}") == str(i).encode()
        fronts = server.frontends()
        assert len(fronts) == 2 and all(p.memory_info().rss < 400 << 20 for p in fronts)
    finally:
        hog.close()
    assert r.ping() is True


def test_inline_commands(server):
    assert talk(server, b'PING\r\nSET il "hello world"\r\nGET il\r\nECHO \'a b\'\r\n\r\nEXISTS il nope\n') == \
        b"+PONG\r\n+OK\r\n$11\r\nhello world\r\n$3\r\na b\r\n:1\r\n+OK\r\n"


# --- several connections and front ends ------------------------------------------------------------


def test_connections_spread_over_both_front_ends(server):
    clients, fronts = [], set()
    while len(fronts) < 2 and len(clients) < 128:      # SO_REUSEPORT hashes each connection
        c = server.client()
        fronts.add(c.client_id() % 2)
        clients.append(c)
    assert fronts == {0, 1}
    a = next(c for c in clients if c.client_id() % 2 == 0)
    b = next(c for c in clients if c.client_id() % 2 == 1)
    for i in range(20):                                   # a reply means the write is visible everywhere
        a.set("across", i)
        assert b.get("across") == str(i).encode()
        b.incr("across")
        assert a.get("across") == str(i + 1).encode()
    errors: list[BaseException] = []

    def work(c, n):
        try:
            for i in range(30):
                c.set(f"conn{n}:{i}", i)
                assert c.get(f"conn{n}:{i}") == str(i).encode()
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c, n)) for n, c in enumerate(clients[:8])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for c in clients:
        c.close()


def _answers(srv) -> bool:
    try:
        with srv.client() as c:
            return c.ping()
    except redis.ConnectionError:
        return False


def test_killed_front_end_is_restarted_and_data_survives_a_restart(tmp_path):
    srv = ServerProcess(tmp_path / "db", shards=1, frontends=1)
    try:
        srv.wait_ready()
        with srv.client() as c:
            c.mset({f"keep:{i}": str(i) for i in range(100)})
        victim = srv.frontends()[0]
        victim.kill()
        wait_until(lambda: [p.pid for p in srv.frontends()] not in ([], [victim.pid]) and _answers(srv),
                   timeout=60, what="the front end to be started again")
        with srv.client() as c:
            assert c.get("keep:7") == b"7"
            c.incrby("counter", 41)
    finally:
        assert srv.stop() == 0, srv.output()
    assert "connect with: redis-cli -p" in srv.output()
    srv = ServerProcess(tmp_path / "db", shards=1, frontends=1)
    try:
        srv.wait_ready()
        with srv.client() as c:
            assert c.dbsize() == 101 and c.get("keep:99") == b"99" and c.incr("counter") == 42
    finally:
        assert srv.stop(signal.SIGINT) == 0, srv.output()


def test_an_idle_client_is_closed_after_the_timeout(tmp_path):
    srv = ServerProcess(tmp_path / "db", shards=1, frontends=1)
    try:
        srv.wait_ready()
        with srv.client() as c:
            assert c.config_set("timeout", 1) is True
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as idle:
            idle.sendall(b"PING\r\n")
            assert idle.recv(100) == b"+PONG\r\n"
            assert idle.recv(100) == b""                  # closed by the server, well within the 60 s
        with srv.client() as c:
            assert c.config_set("timeout", 0) is True and c.ping() is True
    finally:
        assert srv.stop() == 0, srv.output()


def test_usage_errors_and_a_port_in_use(tmp_path):
    cmd = [sys.executable, "-m", "lightning_db.server.serve", "--data", str(tmp_path / "db")]
    bad = subprocess.run(cmd + ["--shards", "0"], check=False, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "shards from 1 to 1024" in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = subprocess.run(cmd + ["--port", str(busy.getsockname()[1])], check=False, capture_output=True,
                               text=True, timeout=120)
    assert taken.returncode == 1 and "in use" in taken.stderr
