"""Direct asks (mailbox/direct.py): a thread's own connection, answers read
by the thread that waits. Same semantics as the client's futures: payloads,
remote errors, deadlines, a dropped connection, close and fork. Each test
that takes ``served`` runs twice: on the worker's lane (mailbox/lane.py,
an address ``ipc://...sock``) and on a DEALER of its own (any other
address); what only one of them has is pinned to it."""

from __future__ import annotations

import os
import threading
import time

import pytest

from lightning_db import errors
from lightning_db.mailbox import MailboxClient, MailboxClosed, MailboxError, Timeout
from lightning_db.mailbox import socket as mailbox_socket
from lightning_db.mailbox.direct import DirectFuture
from tests.mailbox.conftest import ServedMailbox, next_name, silent_router
from tests.waiting import wait_until

ZMQ_ONLY = pytest.mark.parametrize("served", ["zmq"], indirect=True)


@pytest.fixture(params=["lane", "zmq"])
def served(request, runtime_dir):
    suffix = ".sock" if request.param == "lane" else ".zmq"
    box = ServedMailbox(f"ipc://{runtime_dir}/s{next_name()}{suffix}")
    try:
        yield box
    finally:
        box.stop()


def test_the_address_decides_the_transport(served, client):
    fut = client.ask_here("echo", 1, timeout=30)
    assert fut.result(30) == 1
    lanes = served.server.stats().get("lanes_accepted", 0)
    if served.address.endswith(".sock"):
        assert type(fut.client).__name__ == "LaneClient" and lanes == 1
    else:
        assert type(fut.client).__name__ == "DirectClient" and lanes == 0


def test_an_ask_here_is_answered_on_the_threads_own_socket(served, client):
    fut = client.ask_here("echo", {"k": [b"v", 1]}, timeout=30)
    assert isinstance(fut, DirectFuture)
    assert fut.result(30) == {"k": [b"v", 1]} and fut.done() and fut.exception() is None
    assert client.ask_here("echo", 2, 30) is not fut and len(client._directs) == 1
    assert client.request("echo", 3, timeout=30).result(30) == 3     # the I/O thread's socket too
    stats = client.stats()
    assert stats["replies"] == 2 and stats["pending"] == 0


def test_answers_find_their_own_futures_in_any_order(served, client):
    """Five asks in flight at once; the server answers them in reverse."""
    futs = [client.ask_here("hold", 5, timeout=60) for _ in range(5)]
    ids = [f.result(60) for f in reversed(futs)]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5


@pytest.mark.parametrize("name", ["TransactionConflict", "InvalidArgument", "DatabaseShutdown"])
def test_remote_errors_keep_their_class(served, client, name):
    fut = client.ask_here("raise", [name, "from the server"], timeout=30)
    exc = fut.exception(30)
    assert type(exc) is getattr(errors, name) and "from the server" in str(exc)
    with pytest.raises(getattr(errors, name)):
        fut.result()


def test_a_deadline_is_a_timeout_and_the_late_reply_is_dropped(served, client):
    slow = client.ask_here("block", None, timeout=0.2)
    started = time.monotonic()
    exc = slow.exception(30)
    assert isinstance(exc, Timeout) and isinstance(exc, errors.TransientError)
    assert time.monotonic() - started < 20
    served.release.set()
    assert client.ask_here("echo", "after", timeout=30).result(30) == "after"   # reads past the late one
    stats = client.stats()
    assert stats["timeouts"] == 1 and stats["late"] == 1


@ZMQ_ONLY
def test_readable_says_whether_an_answer_waits_on_the_socket(served, client):
    """What a thread that reads answers from an event loop looks at after a
    send: no answer yet, one waiting, none once pumped; a closed socket says
    yes (pump then tells every ask why)."""
    fut = client.ask_here("block", None, timeout=60)
    direct = fut.client
    assert direct.readable() is False
    served.release.set()
    wait_until(direct.readable, what="the answer to arrive")
    assert not fut.done()
    direct.pump()
    assert fut.done() and fut.result() is True and direct.readable() is False
    client.close()
    assert direct.readable() is True


def test_a_bounded_wait_leaves_the_ask_pending(served, client):
    fut = client.ask_here("block", None, timeout=60)
    with pytest.raises(TimeoutError):
        fut.result(0.05)
    assert not fut.done()
    served.release.set()
    assert fut.result(30) is True


def test_only_the_asking_thread_may_wait(served, client):
    fut = client.ask_here("echo", 1, timeout=30)
    seen: list[BaseException] = []

    def other() -> None:
        try:
            fut.result(30)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            seen.append(exc)
    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    assert len(seen) == 1 and isinstance(seen[0], RuntimeError)
    assert fut.result(30) == 1


def test_a_peer_that_dies_fails_the_wait_with_peer_lost(runtime_dir):
    """The server takes the ask and goes away: the wait ends with PeerLost
    long before the deadline; a server back at the address answers the next."""
    address = f"ipc://{runtime_dir}/dlost{next_name()}.zmq"
    router = silent_router(address)
    client = MailboxClient(address)
    try:
        client.request("echo", 0, timeout=60)        # the I/O thread's connection, watched for drops
        fut = client.ask_here("a", 1, timeout=60)
        got = 0
        while got < 2:
            got += len(router.recv_multipart()) - 1
        started = time.monotonic()
        router.close(0)
        exc = fut.exception(30)
        assert isinstance(exc, errors.PeerLost) and isinstance(exc, errors.TransientError)
        assert time.monotonic() - started < 20
        assert client.stats()["lost"] >= 2 and client.stats()["timeouts"] == 0
        served = ServedMailbox(address)
        try:
            assert client.ask_here("echo", "again", timeout=60).result(60) == "again"
        finally:
            served.stop()
    finally:
        client.close()
        router.close(0)


def test_a_fail_fast_client_refuses_at_once_while_the_peer_is_gone(runtime_dir):
    address = f"ipc://{runtime_dir}/dfast{next_name()}.zmq"
    served = ServedMailbox(address)
    client = MailboxClient(address, fail_fast=True)
    try:
        assert client.ask_here("echo", 1, timeout=30).result(30) == 1
        wait_until(lambda: client.request("echo", 2, timeout=30).result(30) == 2, what="the watched connection")
        served.stop()
        wait_until(lambda: client.stats()["disconnects"] >= 1, what="the drop to be seen")
        with pytest.raises(errors.PeerLost):
            client.ask_here("echo", 3, timeout=30)
    finally:
        client.close()


def test_each_thread_has_its_own_socket_up_to_the_limit(served, client, monkeypatch):
    monkeypatch.setattr(mailbox_socket, "MAX_DIRECT", 3)
    kinds: dict[int, str] = {}
    hold = threading.Event()

    def worker(n: int) -> None:
        fut = client.ask_here("echo", n, timeout=30)
        assert fut.result(30) == n
        kinds[n] = type(fut).__name__
        hold.wait(30)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    wait_until(lambda: len(kinds) == 5, what="every thread's answer")
    assert sorted(kinds.values()) == ["DirectFuture"] * 3 + ["Future"] * 2
    hold.set()
    for t in threads:
        t.join(30)
    # Their threads ended: the next thread's socket replaces theirs.
    assert client.ask_here("echo", "main", timeout=30).result(30) == "main"
    assert len(client._directs) == 1 and all(not d.closed for d in client._directs)


def test_close_ends_a_wait_in_progress_and_refuses_new_asks(served):
    client = MailboxClient(served.address)
    outcome: list[BaseException | None] = []
    fut_ready = threading.Event()

    def waiter() -> None:
        fut = client.ask_here("block", None, timeout=60)
        fut_ready.set()
        outcome.append(fut.exception(60))
    t = threading.Thread(target=waiter)
    t.start()
    fut_ready.wait(30)
    wait_until(lambda: served.server.stats()["received"] == 1, what="the ask to arrive")
    started = time.monotonic()
    client.close()
    t.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], MailboxClosed)
    assert time.monotonic() - started < 20
    with pytest.raises(MailboxClosed):
        client.ask_here("echo", 1)
    assert all(d.closed for d in client._directs) or not client._directs


def test_bad_arguments_are_refused_before_sending(served, client):
    with pytest.raises(errors.InvalidArgument):
        client.ask_here("echo", 1, timeout=-1)
    with pytest.raises(errors.InvalidArgument):
        client.ask_here(b"echo", 1)        # type: ignore[arg-type]
    assert served.server.stats()["received"] == 0


def test_a_forked_child_cannot_use_the_parents_direct_socket(served, client):
    assert client.ask_here("echo", 1, timeout=30).result(30) == 1
    pid = os.fork()
    if pid == 0:                                    # the child: refused, nothing touched
        code = 1
        try:
            client.ask_here("echo", 2, timeout=5)
        except MailboxClosed:
            code = 0
        except BaseException:  # noqa: BLE001, S110 - the exit code tells
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.ask_here("echo", 3, timeout=30).result(30) == 3


@ZMQ_ONLY
def test_a_socket_that_cannot_be_made_leaves_the_ordinary_futures(served, client, monkeypatch):
    """Where no direct socket can be made (a context's socket limit, say),
    asks go as before, and no more sockets are tried for this client."""
    tries = []

    def refuse(owner):
        tries.append(owner)
        raise MailboxError("Too many open files (test)", 24)
    monkeypatch.setattr(mailbox_socket, "DirectClient", refuse)
    first = client.ask_here("echo", 1, timeout=30)
    assert type(first).__name__ == "Future" and first.result(30) == 1
    assert client.ask_here("echo", 2, timeout=30).result(30) == 2
    assert len(tries) == 1 and client._directs == []


def test_a_tell_here_arrives_before_the_threads_later_asks(served, client):
    """Tells on the thread's own socket keep their order with its direct
    asks: once an ask sent after them is answered, the server has them all."""
    for n in range(50):
        assert client.tell_here("note", n) is True
    assert client.ask_here("echo", "after", timeout=30).result(30) == "after"
    assert served.tells == list(range(50))
    assert len(client._directs) == 1


def test_a_tell_here_without_a_direct_socket_goes_on_the_shared_one(served, client, monkeypatch):
    monkeypatch.setattr(mailbox_socket, "MAX_DIRECT", 0)
    assert client.tell_here("note", "shared") is False
    wait_until(lambda: served.tells == ["shared"], what="the tell on the shared socket")
    with pytest.raises(errors.InvalidArgument):
        client.tell_here(7, None)


LANE_ONLY = pytest.mark.parametrize("served", ["lane"], indirect=True)


@LANE_ONLY
def test_a_send_stopped_by_a_keyboard_interrupt_gives_the_lane_up(served, client):
    """A frame cut short (Ctrl-C between two sends of it) would break the
    stream: the lane is given up and the thread's next ask makes a new one."""
    first = client.ask_here("echo", 1, timeout=30)
    assert first.result(30) == 1
    lane = first.client

    class HalfThenInterrupt:
        def __init__(self, sock):
            self._sock = sock

        def send(self, data):
            self._sock.send(bytes(data)[: max(1, len(data) // 2)])
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self._sock, name)

    real = lane._sock
    lane._sock = HalfThenInterrupt(real)
    try:
        with pytest.raises(KeyboardInterrupt):
            client.ask_here("echo", b"x" * 1000, timeout=30)
    finally:
        lane._sock = real
    assert lane.closed
    again = client.ask_here("echo", 2, timeout=30)
    assert again.result(30) == 2 and again.client is not lane
