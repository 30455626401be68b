"""Faults under the RESP server: a shard worker killed (SIGKILL) while
clients write through it, and a flood of malformed frames on raw sockets.

- Killed worker: the node restarts it and the database's router retries
  what the kill lost, so a client sees at most an error for the command it
  had in flight, and service resumes. Every SET that was answered OK is
  read back at the end with its last acknowledged value (a SET that failed
  is sent again until it is acknowledged); an INCR counter holds the number
  of acknowledged increments, plus at most one per INCR that failed (it may
  or may not have been applied).
- Malformed frames: each one ends only its own connection (the error
  reply, then close); afterwards a fresh connection is answered and the
  front ends' memory has not grown without bound.
"""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import redis

from tests.server.conftest import ServerProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.crash

WRITERS = 4
KEYS_PER_WRITER = 40
FRAMES = 10_000
FRAMES_PER_CONNECTION = 20
RSS_GROWTH_LIMIT = 64 << 20


# --- finding the shard workers ----------------------------------------------------------------------


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def node_of(server) -> psutil.Process:
    """The node process serve started (it runs the shard workers)."""
    nodes = [p for p in psutil.Process(server.proc.pid).children() if "lightning_db.shards.node" in _cmd(p)]
    assert len(nodes) == 1, [(p.pid, _cmd(p)) for p in psutil.Process(server.proc.pid).children()]
    return nodes[0]


def workers_of(node: psutil.Process) -> dict[int, psutil.Process]:
    """The node's live shard workers (its spawned children; not the
    multiprocessing resource tracker)."""
    out = {}
    for p in node.children():
        cmd = _cmd(p)
        if _alive(p) and "multiprocessing.spawn" in cmd and "resource_tracker" not in cmd:
            out[p.pid] = p
    return out


# --- writers ------------------------------------------------------------------------------------------------


class Writer(threading.Thread):
    """SET/GET/INCR in a loop on keys of its own. A SET that fails is sent
    again (same value) until acknowledged, so the last acknowledged value of
    a key is its final value; an INCR that fails is counted, not repeated."""

    def __init__(self, server, n: int) -> None:
        super().__init__(name=f"writer-{n}", daemon=True)
        self.client = server.client(socket_connect_timeout=10)
        self.n = n
        self.acked: dict[str, str] = {}
        self.incr_acked = 0
        self.incr_failed = 0
        self.ops = 0
        self.errors: list[tuple[float, str, str]] = []        # (time, command, error)
        self.failure: BaseException | None = None
        self.stop = threading.Event()

    @property
    def counter(self) -> str:
        return f"w{self.n}:counter"

    def _error(self, what: str, exc: Exception) -> None:
        self.errors.append((time.monotonic(), what, f"{type(exc).__name__}: {exc}"))

    def run(self) -> None:
        rng = random.Random(self.n)
        seq = 0
        try:
            while not self.stop.is_set():
                key = f"w{self.n}:k{rng.randrange(KEYS_PER_WRITER)}"
                seq += 1
                value = f"{self.n}:{seq}"
                while True:
                    try:
                        assert self.client.set(key, value) is True
                        break
                    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                        self._error("SET", exc)
                        if len(self.errors) > 1000:
                            raise
                self.acked[key] = value
                try:
                    got = self.client.get(key)
                    # read-your-writes: nothing else writes this key
                    assert got == value.encode(), f"GET {key} after SET {value!r} gave {got!r}"
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                    self._error("GET", exc)
                try:
                    self.client.incr(self.counter)
                    self.incr_acked += 1
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                    self._error("INCR", exc)
                    self.incr_failed += 1
                self.ops += 1
        except BaseException as exc:   # noqa: BLE001 - reported by the test
            self.failure = exc
        finally:
            self.client.close()


def test_kill_9_a_shard_worker_while_clients_write(tmp_path):
    # a server of its own: the restarted workers are new processes, which
    # must be gone when the test ends
    srv = ServerProcess(tmp_path / "db", shards=2, frontends=2)
    try:
        srv.wait_ready()
        _kill_workers_during_writes(srv)
    finally:
        code = srv.stop()
    assert code == 0, f"serve exited with {code}:\n{srv.output()}"


def _kill_workers_during_writes(server) -> None:
    node = node_of(server)
    before = workers_of(node)
    assert len(before) == 2, before
    writers = [Writer(server, n) for n in range(WRITERS)]
    kills: list[float] = []
    try:
        for w in writers:
            w.start()
        wait_until(lambda: all(w.ops >= 10 or w.failure for w in writers), timeout=60, what="the first writes")
        order = sorted(before)
        random.Random(11).shuffle(order)
        for victim in order:                          # each shard worker once, in a random order
            live = workers_of(node)
            assert victim in live
            done = [w.ops for w in writers]
            live[victim].send_signal(signal.SIGKILL)
            kills.append(time.monotonic())
            live[victim].wait(30)                     # reaped by the node: gone

            def restarted(victim=victim) -> bool:
                now = workers_of(node)
                return len(now) == 2 and victim not in now

            wait_until(restarted, timeout=60, what="the node to start the killed worker again")
            # service resumes: every writer gets on with acknowledged writes
            wait_until(lambda done=done: all(w.ops >= d + 10 or w.failure for w, d in zip(writers, done)),
                       timeout=90, what="every writer to go on after the restart")
            assert all(w.failure is None for w in writers), [repr(w.failure) for w in writers]
    finally:
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(90)
    assert not any(w.is_alive() for w in writers)
    assert all(w.failure is None for w in writers), [repr(w.failure) for w in writers]
    assert node_of(server).pid == node.pid and not set(workers_of(node)) & set(before)

    # errors only around the kills: each writer has one command in flight,
    # and a command may fail a few times while its shard restarts
    for w in writers:
        assert len(w.errors) <= 10 * len(kills), (w.name, w.errors)
    with server.client() as c:
        for w in writers:
            keys = sorted(w.acked)
            assert c.mget(keys) == [w.acked[k].encode() for k in keys], w.name
            count = int(c.get(w.counter) or 0)
            assert w.incr_acked <= count <= w.incr_acked + w.incr_failed, \
                (w.name, count, w.incr_acked, w.incr_failed)
        assert c.ping() is True
    errors = [e for w in writers for e in w.errors]
    print(f"\n{len(kills)} kills; {sum(w.ops for w in writers)} rounds of SET/GET/INCR by {WRITERS} clients; "
          f"{len(errors)} errors seen: {sorted({e[2][:80] for e in errors})}")


# --- malformed frames -------------------------------------------------------------------------------------------


def malformed_frame(rng: random.Random) -> bytes:
    """One request that is not valid RESP (or is cut short)."""
    kind = rng.randrange(12)
    if kind == 0:                                         # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 1:                                         # random bytes after a multibulk start
        return b"*" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 32)))
    if kind == 2:                                         # a truncated multibulk header
        return rng.choice([b"*", b"*3", b"*3\r", b"*3\r\n$", b"*3\r\n$3", b"*3\r\n$3\r\nSE", b"*2\r\n$3\r\nGET\r\n$"])
    if kind == 3:                                         # negative lengths
        return rng.choice([b"*1\r\n$-5\r\n", b"*2\r\n$3\r\nGET\r\n$-2\r\nab\r\n", b"*-7\r\n$3\r\nGET\r\n",
                           b"*1\r\n$-1\r\n"])
    if kind == 4:                                         # huge lengths (see the array count tests below)
        count = rng.choice([1024 * 1024 + 1, 2**63, 10**30, 2**64 + 5])
        size = rng.choice([2**31, 2**63, 10**30, 512 * 1024 * 1024 + 1, 2**64 + 5])
        return rng.choice([b"*%d\r\n" % count, b"*1\r\n$%d\r\n" % size, b"*2\r\n$3\r\nSET\r\n$%d\r\nabc\r\n" % size])
    if kind == 5:                                         # large but allowed lengths, then nothing
        return b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\nxx" % rng.choice([1 << 20, 8 << 20, 60 << 20])
    if kind == 6:                                         # bad CRLF
        return rng.choice([b"*1\n$4\r\nPING\r\n", b"*1\r\n$4\nPING\r\n", b"*1\r\n$4\r\nPINGxx",
                           b"*1\r\r\n$4\r\nPING\r\n", b"*2\r\n$4\r\nECHO\r\n$1\r\nabc\r\n"])
    if kind == 7:                                         # not a number
        return rng.choice([b"*abc\r\n", b"*1\r\n$x\r\n", b"*1\r\n$+4\r\nPING\r\n", b"*1\r\n$04\r\nPING\r\n",
                           b"*1.5\r\n", b"*1\r\n$\r\n"])
    if kind == 8:                                         # a type other than bulk inside the array
        return rng.choice([b"*2\r\n$4\r\nECHO\r\n:1\r\n", b"*1\r\n+PING\r\n", b"*1\r\n*1\r\n$4\r\nPING\r\n",
                           b"*1\r\n-ERR\r\n"])
    if kind == 9:                                         # inline: unbalanced quotes, a long line
        return rng.choice([b'ECHO "abc\r\n', b"SET 'a b\r\n", b"X" * rng.randrange(1000, 70000)])
    if kind == 10:                                        # a valid frame cut anywhere
        frame = b"*3\r\n$3\r\nSET\r\n$5\r\nfuzz:\r\n$10\r\n0123456789\r\n"
        return frame[:rng.randrange(1, len(frame))]
    # valid frames with flipped bytes
    frame = bytearray(b"*2\r\n$3\r\nGET\r\n$5\r\nfuzz:\r\n")
    for _ in range(rng.randrange(1, 4)):
        frame[rng.randrange(len(frame))] = rng.randrange(256)
    return bytes(frame)


def _send_frames(port: int, frames: list[bytes]) -> bytes:
    """Send *frames* on one connection, half-close, read until the server
    closes (or 20 s pass). The server may close (or reset) the connection
    while we still send: what it sent before is returned."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        try:
            s.sendall(b"".join(frames))
            s.shutdown(socket.SHUT_WR)
        except OSError:                       # reset, broken pipe, or already closed (ENOTCONN)
            pass
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            return b"<timeout>"
        except OSError:
            pass
        return out


def _rss(procs: list[psutil.Process]) -> dict[int, int]:
    return {p.pid: p.memory_info().rss for p in procs}


def test_malformed_frames_leave_the_server_answering_with_bounded_memory(server):
    fronts = server.frontends()
    assert len(fronts) == 2
    with server.client() as c:
        c.set("fuzz:keep", "v")
    start = _rss(fronts)
    rng = random.Random(2026)
    frames = [malformed_frame(rng) for _ in range(FRAMES)]
    batches = [frames[i:i + FRAMES_PER_CONNECTION] for i in range(0, FRAMES, FRAMES_PER_CONNECTION)]
    peak = dict(start)
    with ThreadPoolExecutor(8) as pool:
        replies = []
        for i, out in enumerate(pool.map(lambda b: _send_frames(server.port, b), batches)):
            replies.append(out)
            if i % 50 == 0:
                peak = {pid: max(peak[pid], rss) for pid, rss in _rss(fronts).items()}
    errors = sum(b"Protocol error" in r for r in replies)
    assert errors > len(batches) // 4, (errors, replies[:5])
    assert b"<timeout>" not in replies, "a connection was left open after its client half-closed"

    # the same front ends still serve, on a fresh connection
    assert [p.pid for p in server.frontends()] == [p.pid for p in fronts], "a front end died"
    with server.client() as c:
        assert c.ping() is True and c.get("fuzz:keep") == b"v"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(64) == b"+PONG\r\n"
    end = _rss(fronts)
    for pid in start:
        assert end[pid] - start[pid] < RSS_GROWTH_LIMIT, (pid, start[pid] >> 20, end[pid] >> 20, peak[pid] >> 20)
        assert peak[pid] - start[pid] < 2 * RSS_GROWTH_LIMIT, (pid, start[pid] >> 20, peak[pid] >> 20)
    print(f"\n{FRAMES} malformed frames on {len(batches)} connections ({errors} got a protocol error); "
          "front-end RSS MiB start/peak/end: "
          + ", ".join(f"{start[p] >> 20}/{peak[p] >> 20}/{end[p] >> 20}" for p in start))


# --- array counts between the server's limit and hiredis's ---------------------------------------------------
#
# hiredis allocates an array's list as soon as it reads the count, so the
# parser refuses a count over ``max_args`` (1,048,576) before hiredis sees it:
# ``*4294967295`` (hiredis's own limit) would raise MemoryError in the front
# end, and ``*1073741824`` (13 bytes) would make it allocate 8 GiB and block
# its event loop for seconds while freeing it.


def test_array_count_at_hiredis_limit_gets_the_error_reply(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"*4294967295\r\n")
        assert s.recv(256) == b"-ERR Protocol error: invalid multibulk length\r\n"


def test_huge_array_count_does_not_stall_other_clients(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"*1073741824\r\n")
        assert s.recv(256) == b"-ERR Protocol error: invalid multibulk length\r\n"
    # 16 fresh connections: the kernel spreads them over both front ends
    others = [socket.create_connection(("127.0.0.1", server.port), timeout=1.0) for _ in range(16)]
    try:
        for o in others:
            o.sendall(b"PING\r\n")
        assert [o.recv(64) for o in others] == [b"+PONG\r\n"] * 16
    finally:
        for o in others:
            o.close()
