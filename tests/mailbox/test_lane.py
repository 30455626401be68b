"""Lanes (mailbox/lane.py): direct asks over the worker's Unix socket.

What test_direct.py checks on both transports is not repeated here: these
are what only a lane has (its path, its descriptor, its framing, a worker
that is not there yet, answers or requests larger than a socket buffer,
a peer that stops reading) and what a raw peer can send it."""

from __future__ import annotations

import os
import select
import socket
import struct
import time

import pytest

from lightning_db import errors
from lightning_db.mailbox import MailboxClient, MsgKind
from lightning_db.mailbox import lane as lane_mod
from lightning_db.mailbox import socket as mailbox_socket
from lightning_db.mailbox.context import ipc_in_use
from lightning_db.mailbox.envelope import Envelope, decode
from lightning_db.mailbox.lane import LaneClient, lane_path
from lightning_db.mailbox.wire import MAX_FRAME_SIZE
from tests.mailbox.conftest import ServedMailbox, next_name
from tests.waiting import wait_until

_LEN = struct.Struct(">I")


def _raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    return s


def _frame(env: Envelope) -> bytes:
    f = env.encode()
    return _LEN.pack(len(f)) + f


def _read_frame(s: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf
    return exactly(_LEN.unpack(exactly(4))[0])


def _closed_by_peer(s: socket.socket) -> bool:
    try:
        while True:
            if not s.recv(1 << 16):
                return True
    except ConnectionResetError:
        return True


def test_lane_path_sits_beside_a_workers_ipc_socket():
    assert lane_path("ipc:///run/x/shard-001.sock") == "/run/x/shard-001.lane"
    assert len(lane_path("ipc:///a/b.sock")) == len("/a/b.sock")
    assert lane_path("ipc:///run/x/other.ipc") is None
    assert lane_path("tcp://127.0.0.1:7000") is None


def test_an_answer_makes_the_lane_readable_until_pumped(served, client):
    """The descriptor is level-triggered: an event loop sees an answer that
    came before it looked; ``readable`` has no edge to report."""
    fut = client.ask_here("block", None, timeout=60)
    lane = fut.client
    assert isinstance(lane, LaneClient) and lane.readable() is False
    assert not select.select([lane.fileno()], [], [], 0)[0]
    served.release.set()
    assert select.select([lane.fileno()], [], [], 30)[0]
    assert not fut.done()
    lane.pump()
    assert fut.done() and fut.result() is True
    assert not select.select([lane.fileno()], [], [], 0)[0]


def test_a_worker_that_goes_away_fails_the_wait_and_a_new_one_is_used(runtime_dir):
    address = f"ipc://{runtime_dir}/lgone{next_name()}.sock"
    first = ServedMailbox(address)
    client = MailboxClient(address)
    try:
        fut = client.ask_here("block", None, timeout=60)
        wait_until(lambda: first.server.stats()["received"] == 1, what="the ask to arrive")
        started = time.monotonic()
        lanes = first.server._lane
        for conn in list(lanes._conns.values()):
            lanes._drop(conn)               # what the worker's death does to its lanes
        exc = fut.exception(30)
        assert isinstance(exc, errors.PeerLost) and isinstance(exc, errors.TransientError)
        assert time.monotonic() - started < 20 and client.stats()["lost"] == 1
        first.stop()
        wait_until(lambda: not ipc_in_use(address), what="the first worker's socket to close")
        second = ServedMailbox(address)     # a restarted worker at the same address
        try:
            fut = client.ask_here("echo", "again", timeout=60)
            assert isinstance(fut.client, LaneClient) and fut.result(60) == "again"
        finally:
            second.stop()
    finally:
        first.stop()
        client.close()


def test_no_lane_yet_means_the_ordinary_futures_and_a_later_try(served, client, monkeypatch):
    """A lane that cannot be reached (a worker not listening yet): asks go
    on the shared socket, and the lane is tried again LANE_RETRY later."""
    path = lane_path(served.address)
    os.rename(path, path + ".away")
    first = client.ask_here("echo", 1, timeout=30)
    assert type(first).__name__ == "Future" and first.result(30) == 1
    assert type(client.ask_here("echo", 2, timeout=30)).__name__ == "Future"     # within LANE_RETRY
    os.rename(path + ".away", path)
    monkeypatch.setattr(mailbox_socket, "LANE_RETRY", 0.0)
    client._lane_retry = 0.0
    third = client.ask_here("echo", 3, timeout=30)
    assert isinstance(third.client, LaneClient) and third.result(30) == 3


def test_large_requests_and_answers_cross_in_pieces(served, client):
    """Frames far larger than the socket buffers: the client waits for room
    to send, the worker keeps what its socket did not take and sends it
    as the peer reads."""
    big = os.urandom(6 << 20)
    futs = [client.ask_here("echo", big, timeout=120) for _ in range(3)]
    assert all(f.result(120) == big for f in futs)
    assert served.server.stats()["lanes_dropped"] == 0


def test_malformed_envelopes_are_answered_and_the_lane_stays(served):
    path = lane_path(served.address)
    s = _raw(path)
    try:
        s.sendall(_LEN.pack(3) + b"\xffxx")
        err = decode(_read_frame(s))
        assert err.kind is MsgKind.ERROR and err.payload[0] == "MalformedFrame"
        s.sendall(_frame(Envelope(7, MsgKind.REQUEST, "echo", 0.0, None, "fine")))
        ok = decode(_read_frame(s))
        assert (ok.id, ok.kind, ok.payload) == (7, MsgKind.REPLY, "fine")
        assert served.server.stats()["malformed"] == 1
    finally:
        s.close()


def test_a_length_past_the_limit_closes_only_that_lane(served, client):
    s = _raw(lane_path(served.address))
    try:
        s.sendall(_LEN.pack(MAX_FRAME_SIZE + 1) + b"x" * 64)
        assert _closed_by_peer(s)
    finally:
        s.close()
    assert client.ask_here("echo", "still", timeout=30).result(30) == "still"
    assert served.server.stats()["lanes_dropped"] == 1


def test_a_peer_that_stops_reading_loses_its_lane(served, client, monkeypatch):
    """Answers pile up for a peer that never reads: past MAX_QUEUED of them
    waiting, the worker closes that lane; others are served meanwhile."""
    monkeypatch.setattr(lane_mod, "MAX_QUEUED", 4)
    s = _raw(lane_path(served.address))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        payload = b"x" * (256 << 10)
        for n in range(64):
            try:
                s.sendall(_frame(Envelope(n + 1, MsgKind.REQUEST, "echo", 0.0, None, payload)))
            except OSError:         # closed by the worker already
                break
        wait_until(lambda: served.server.stats()["lanes_dropped"] == 1, what="the lane to be closed")
        assert client.ask_here("echo", "others", timeout=30).result(30) == "others"
    finally:
        s.close()


def test_a_worker_that_takes_nothing_fails_the_send_and_not_the_thread(served, client, monkeypatch):
    """While the worker's loop is held, requests fill its socket: the send
    that finds no room for SEND_STALL gives the lane up with Timeout (a
    transient fault), and so do the asks waiting on it; once the worker reads again, a new lane serves."""
    monkeypatch.setattr(lane_mod, "SEND_STALL", 0.3)
    blocked = client.ask_here("block", None, timeout=120)
    wait_until(lambda: served.server.stats()["received"] == 1, what="the worker to be held")
    payload = b"x" * (1 << 20)
    with pytest.raises(errors.Timeout):
        for _ in range(64):
            client.ask_here("echo", payload, timeout=120)
    assert blocked.client.closed and isinstance(blocked.exception(30), errors.Timeout)
    served.release.set()
    wait_until(lambda: served.server.stats()["lanes_dropped"] == 1, what="the worker to drop the lane given up")
    fut = client.ask_here("echo", "after", timeout=60)
    assert isinstance(fut.client, LaneClient) and fut.client is not blocked.client
    assert fut.result(60) == "after"


def test_a_lane_whose_backlog_is_full_does_not_hold_the_thread(served, client):
    """A worker that does not accept (stopped, say) with its backlog full:
    the connect is refused at once and the ask goes on the shared socket."""
    path = lane_path(served.address)
    os.rename(path, path + ".away")
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        stuck.bind(path)
        stuck.listen(0)
        while True:                         # fill the backlog
            f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            f.setblocking(False)
            fillers.append(f)
            try:
                f.connect(path)
            except BlockingIOError:
                break
            assert len(fillers) < 64, "the backlog never filled"
        started = time.monotonic()
        fut = client.ask_here("echo", "shared", timeout=30)
        assert type(fut).__name__ == "Future" and fut.result(30) == "shared"
        assert time.monotonic() - started < 20
    finally:
        for f in fillers:
            f.close()
        stuck.close()
        os.unlink(path)
        os.rename(path + ".away", path)
