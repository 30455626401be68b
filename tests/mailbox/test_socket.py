"""The sockets: a MailboxServer served by a thread of the test process and
MailboxClients talking to it. Covers pipelining, batching, deadlines, remote
errors, malformed frames in both directions, close, thread safety and fork.

Raw zmq sockets appear only here, to play a misbehaving peer.
"""

from __future__ import annotations

import os
import threading
import time

import msgpack
import pytest
import zmq

from lightning_db import errors
from lightning_db.mailbox import (
    PROTOCOL_VERSION,
    Envelope,
    MailboxClient,
    MailboxClosed,
    MailboxError,
    MailboxServer,
    MalformedFrame,
    MsgKind,
    Timeout,
    check_address,
    decode,
)
from tests.mailbox.conftest import ServedMailbox, next_name, silent_router
from tests.waiting import wait_until


def test_request_reply_and_tell(served, client):
    assert client.request("echo", {"k": [b"v", 1]}, timeout=30).result(30) == {"k": [b"v", 1]}
    client.tell("note", [1, 2])
    wait_until(lambda: served.tells == [[1, 2]], what="the tell")


def test_pipelining_1000_requests_in_flight(served, client):
    """All 1000 are in flight at once (the server answers none before it has
    them all), and the answers, sent in reverse, find their own futures."""
    futures = [client.request("hold", 1000, timeout=60) for _ in range(1000)]
    ids = [f.result(60) for f in futures]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert client.stats()["pending"] == 0


def test_request_many_travels_as_one_message(served, client):
    before = served.server.stats()
    futures = client.request_many([("echo", i) for i in range(100)], timeout=30)
    assert [f.result(30) for f in futures] == list(range(100))
    after = served.server.stats()
    assert after["received"] - before["received"] == 100
    assert after["messages"] - before["messages"] == 1
    assert max(served.batch_sizes) >= 100


def test_request_many_is_all_or_nothing(served, client):
    with pytest.raises(MalformedFrame):
        client.request_many([("echo", 1), ("echo", object())], timeout=30)
    assert client.request("echo", 2, timeout=30).result(30) == 2
    assert served.server.stats()["received"] == 1


def test_timeout_is_transient_and_a_late_reply_is_dropped(served, client):
    slow = client.request("block", None, timeout=0.2)
    exc = slow.exception(30)
    assert isinstance(exc, Timeout) and isinstance(exc, errors.TransientError)
    served.release.set()
    wait_until(lambda: client.stats()["late"] == 1, what="the late reply")
    assert client.stats()["timeouts"] == 1
    assert client.request("echo", "after", timeout=30).result(30) == "after"


def test_a_peer_that_dies_without_answering_fails_requests_with_peer_lost(runtime_dir):
    """A server that takes requests and goes away (its socket closed, as a
    kill -9 closes it) fails what waits at once with PeerLost, long before
    the deadline; a server back at the same address serves new requests."""
    address = f"ipc://{runtime_dir}/lost{next_name()}.sock"
    router = silent_router(address)
    client = MailboxClient(address)
    try:
        futs = [client.request("a", 1, timeout=60), client.request("b", 2, timeout=60)]
        got = 0
        while got < 2:
            got += len(router.recv_multipart()) - 1     # the requests arrived; never answered
        started = time.monotonic()
        router.close(0)
        for fut in futs:
            exc = fut.exception(30)
            assert isinstance(exc, errors.PeerLost) and isinstance(exc, errors.TransientError)
        assert time.monotonic() - started < 20          # well before the 60 s deadline
        stats = client.stats()
        assert stats["lost"] == 2 and stats["disconnects"] >= 1 and stats["pending"] == 0
        assert stats["timeouts"] == 0
        box = ServedMailbox(address)                    # back at the same address: zmq reconnects
        try:
            assert client.request("echo", "again", timeout=60).result(60) == "again"
        finally:
            box.stop()
    finally:
        client.close()
        router.close(0)


def test_peer_lost_travels_the_wire():
    from lightning_db.mailbox import lookup_error
    assert lookup_error("PeerLost") is errors.PeerLost


@pytest.mark.parametrize("name", ["WriteStalled", "DiskFull", "CorruptionError", "DatabaseShutdown",
                                  "InvalidArgument", "TransactionConflict", "IOFault"])
def test_remote_errors_keep_their_class(served, client, name):
    fut = client.request("raise", [name, "it failed"], timeout=30)
    exc = fut.exception(30)
    assert type(exc) is getattr(errors, name) and str(exc) == "it failed"


def test_bad_arguments_are_refused_before_sending(served, client):
    with pytest.raises(MalformedFrame):
        client.request("echo", object(), timeout=30)
    with pytest.raises(errors.InvalidArgument):
        client.request(b"echo", 1, timeout=30)          # type: ignore[arg-type]
    for bad in (0, -1, "1", float("nan"), float("inf"), True):
        with pytest.raises(errors.InvalidArgument):
            client.request("echo", 1, timeout=bad)      # type: ignore[arg-type]
    assert served.server.stats()["received"] == 0


def test_server_answers_malformed_frames_and_keeps_serving(served):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    try:
        sock.connect(served.address)
        readable_id = bytes([PROTOCOL_VERSION]) + msgpack.packb([42, 99, "op", 0.0, None, None])
        sock.send_multipart([b"garbage", readable_id])
        answers = [decode(f) for f in sock.recv_multipart()] + [decode(f) for f in sock.recv_multipart()]
        assert [(a.kind, a.id, a.payload[0]) for a in answers] == [
            (MsgKind.ERROR, 0, "MalformedFrame"), (MsgKind.ERROR, 42, "MalformedFrame")]
        sock.send(Envelope(7, MsgKind.REQUEST, "echo", 0.0, None, "still here").encode())
        (answer,) = [decode(f) for f in sock.recv_multipart()]
        assert (answer.id, answer.kind, answer.payload) == (7, MsgKind.REPLY, "still here")
        assert served.server.stats()["malformed"] == 2
    finally:
        sock.close(0)


def test_client_survives_malformed_answers(runtime_dir):
    """A peer answering garbage: a frame whose id is readable fails that
    request at once; unreadable ones are counted; good answers still work."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 30_000)
    address = f"ipc://{runtime_dir}/raw{next_name()}.sock"
    router.bind(address)
    client = MailboxClient(address)
    try:
        first, second = client.request("a", 1, timeout=30), client.request("b", 2, timeout=30)
        got = []
        while len(got) < 2:
            identity, *frames = router.recv_multipart()
            got.extend(decode(f) for f in frames)
        bad_kind = bytes([PROTOCOL_VERSION]) + msgpack.packb([got[0].id, 77, "a", 0.0, None, None])
        router.send_multipart([identity, b"\xff\xfe", bad_kind, got[1].reply("fine").encode()])
        assert isinstance(first.exception(30), MalformedFrame)
        assert second.result(30) == "fine"
        assert client.stats()["malformed"] == 2
    finally:
        client.close()
        router.close(0)


def test_close_fails_requests_in_flight_and_refuses_new_ones(served):
    client = MailboxClient(served.address)
    pending = client.request("block", None, timeout=60)
    wait_until(lambda: served.server.stats()["received"] == 1, what="the request to arrive")
    client.close()
    assert isinstance(pending.exception(30), MailboxClosed)
    with pytest.raises(MailboxClosed):
        client.request("echo", 1)
    client.close()   # idempotent


def test_close_with_a_reason(served):
    client = MailboxClient(served.address)
    pending = client.request("block", None, timeout=60)
    client.close(errors.DatabaseShutdown("shutting down"))
    assert type(pending.exception(30)) is errors.DatabaseShutdown


def test_many_threads_share_one_client(served, client):
    results: dict[int, list[object]] = {}

    def worker(n: int) -> None:
        futures = [client.request("echo", [n, i], timeout=60) for i in range(200)]
        results[n] = [f.result(60) for f in futures]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {n: [[n, i] for i in range(200)] for n in range(8)}


def test_server_reply_to_a_vanished_client_is_not_an_error(served):
    client = MailboxClient(served.address)
    client.request("block", None, timeout=60)
    wait_until(lambda: served.server.stats()["received"] == 1, what="the request to arrive")
    client.close()
    served.release.set()
    with MailboxClient(served.address) as other:
        assert other.request("echo", "ok", timeout=30).result(30) == "ok"


def test_addresses_are_checked():
    for bad in ("foo", "udp://x", "ipc://", "ipc:///" + "x" * 200, 5):
        with pytest.raises(errors.InvalidArgument):
            check_address(bad)  # type: ignore[arg-type]
    assert check_address("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5555"


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_binding_an_address_in_use_is_recoverable(runtime_dir, kind):
    first = MailboxServer("tcp://127.0.0.1:*" if kind == "tcp" else f"ipc://{runtime_dir}/busy{next_name()}.sock")
    try:
        with pytest.raises(MailboxError) as info:
            MailboxServer(first.address)
        assert isinstance(info.value, errors.RecoverableError)
        with MailboxClient(first.address) as c:     # the first one still owns its address
            c.tell("x")
            assert first.recv(30)[0][1].op == "x"
    finally:
        first.close()


def test_a_stale_ipc_file_is_taken_over(runtime_dir):
    path = f"{runtime_dir}/stale{next_name()}.sock"
    open(path, "w").close()
    server = MailboxServer(f"ipc://{path}")
    try:
        with MailboxClient(server.address) as c:
            c.tell("y")
            assert server.recv(30)[0][1].op == "y"
    finally:
        server.close()


def test_a_forked_child_gets_a_fresh_context_and_the_parent_keeps_working(served, client):
    """fork while a client has requests in flight: the child cannot use the
    inherited client (it says so), opens its own and is served; the parent's
    client keeps working."""
    in_flight = [client.request("echo", i, timeout=60) for i in range(100)]
    pid = os.fork()
    if pid == 0:   # child: never return into pytest
        code = 1
        try:
            try:
                client.request("echo", 1)
            except MailboxClosed:
                with MailboxClient(served.address) as own:
                    if own.request("echo", "child", timeout=30).result(30) == "child":
                        code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [f.result(60) for f in in_flight] == list(range(100))
    assert client.request("echo", "parent", timeout=30).result(30) == "parent"


def test_timed_receiver_waits_within_its_bound_and_sets_the_option_only_on_change():
    from lightning_db.mailbox.context import TimedReceiver, context
    ctx = context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        addr = f"inproc://timed-{next_name()}"
        a.bind(addr)
        b.connect(addr)
        r = TimedReceiver(a)
        started = time.monotonic()
        assert r.recv(0.05) is None                     # nothing came within the bound
        assert time.monotonic() - started >= 0.03
        assert a.getsockopt(zmq.RCVTIMEO) == 50
        b.send(b"one")
        assert r.recv(30.0) == b"one"                    # the bound is a limit, not a sleep
        assert a.getsockopt(zmq.RCVTIMEO) == 30000
        b.send_multipart([b"x", b"y"])
        assert r.recv(None, multipart=True) == [b"x", b"y"]
        assert a.getsockopt(zmq.RCVTIMEO) == -1
    finally:
        a.close(0)
        b.close(0)
