"""The server side: bad requests answered and survived, server-side
objects released with their session (bye, silence), and the standalone
server as a process stopped by SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import lightning_db as ldb
from lightning_db import InvalidArgument
from lightning_db.errors import MailboxError, RemoteError, TransactionExpired
from lightning_db.mailbox import MailboxClient
from lightning_db.remote import NativeServer, connect
from lightning_db.remote import server as server_module
from lightning_db.remote.protocol import NATIVE_VERSION, OPS, TxAction, Write

from ..waiting import wait_until
from .conftest import FAST

SESSION = b"s" * 16


@pytest.fixture
def raw(server):
    c = MailboxClient(server.address, name="test-raw")
    yield c
    c.close()


def ask(raw, op, payload=None):
    return raw.request(op, payload, 10).result()


def test_hello_and_ops(raw, server):
    info = ask(raw, "hello", [SESSION])
    assert info["version"] == NATIVE_VERSION and info["max_value_size"] == 1024
    assert info["address"] == server.address
    assert ask(raw, "ping", [SESSION]) is True
    assert ask(raw, "_ping") is True
    assert set(server._handlers) | {"ping", "touch"} == set(OPS)


@pytest.mark.parametrize("op, payload", [
    ("no_such_op", []), ("get", None), ("get", [b"k", b"extra"]), ("get", [""]), ("get", [b""]),
    ("put", [b"k", "str", None, None, None]), ("put", [b"k", b"v", None, -5, None]), ("get_many", [b"k"]),
    ("put_many", [[b"k", b"v"], None]), ("batch", ["nope", None]), ("scan", [0, SESSION, None, None, False, None, 0]),
    ("scan", [12345, SESSION, None, None, False, None, 10]), ("scan_next", [999, 10]), ("snap_get", [1, b"k"]),
    ("tx", [0, SESSION, "dirty", None, [], 1, [b"k"]]), ("tx", [0, SESSION, "snapshot", None, [], 99, []]),
    ("tx", [0, SESSION, "snapshot", None, [[9]], int(TxAction.GET), [b"k"]]), ("snapshot", ["not bytes"]),
])
def test_bad_requests_get_an_error_and_the_server_keeps_serving(raw, client, op, payload):
    with pytest.raises(InvalidArgument):
        ask(raw, op, payload)
    client.put(b"k", b"v")
    assert client.get(b"k") == b"v"


def test_unknown_transaction_is_expired(raw):
    with pytest.raises(TransactionExpired):
        ask(raw, "tx", [424242, SESSION, "snapshot", None, [], int(TxAction.GET), [b"k"]])


def test_a_bad_write_in_a_batch_writes_nothing(raw, client, server):
    writes = [[int(Write.PUT), b"a", b"1", None, None], [int(Write.DELETE), b"b"], [7, b"c"]]
    with pytest.raises(InvalidArgument, match="a write is"):
        ask(raw, "batch", [writes, None])
    writes[2] = [int(Write.PUT), b"", b"1", None, None]
    with pytest.raises(InvalidArgument, match="key must be 1 to"):
        ask(raw, "batch", [writes, None])
    assert client.get(b"a") is None
    assert server.stats()["errors"] >= 2


def test_a_failed_new_transaction_is_dropped(raw, server):
    with pytest.raises(InvalidArgument):
        ask(raw, "tx", [0, SESSION, "snapshot", None, [[int(Write.PUT), b"", b"v", None, None]],
                        int(TxAction.COMMIT), []])
    assert server.registry.stats()["objects"]["tx"] == 0


def test_a_handler_bug_comes_back_as_a_remote_error(client, server, local):
    class Broken:
        def __getattr__(self, name):
            return getattr(local, name)

        def flush(self):
            raise ZeroDivisionError("bug")

    server.db = Broken()
    with pytest.raises(RemoteError, match="ZeroDivisionError: bug"):
        client.flush()
    assert client.get(b"k") is None


def test_bye_releases_the_sessions_objects(server):
    db = connect(server.address, **FAST)
    snap = db.snapshot()
    tx = db.transaction()
    tx.get(b"k")
    db.put_many({b"%04d" % i: b"v" for i in range(3000)})
    it = db.scan()
    next(it)
    assert server.registry.stats()["objects"] == {"snapshot": 1, "tx": 1, "cursor": 1}
    db.close()
    assert server.registry.stats()["objects"] == {"snapshot": 0, "tx": 0, "cursor": 0}
    del snap, tx, it


def test_silent_sessions_are_released(local, monkeypatch):
    monkeypatch.setattr(server_module, "REAP_EVERY", 0.05)
    with NativeServer(local, "tcp://127.0.0.1:*", idle_timeout=0.3) as srv:
        with MailboxClient(srv.address, name="test-silent") as raw:
            sid = ask(raw, "snapshot", [SESSION])
            assert srv.registry.stats()["objects"]["snapshot"] == 1
            wait_until(lambda: srv.registry.stats()["objects"]["snapshot"] == 0, 10, "the snapshot to expire")
            assert srv.registry.stats()["expired"] == 1
            with pytest.raises(InvalidArgument, match="snapshot was released"):
                ask(raw, "snap_get", [sid, b"k"])


def test_pings_keep_a_session_alive(local, monkeypatch):
    monkeypatch.setattr(server_module, "REAP_EVERY", 0.05)
    with NativeServer(local, "tcp://127.0.0.1:*", idle_timeout=1.0) as srv:
        with connect(srv.address, health_check_interval=0.1, **FAST) as db:
            with db.snapshot() as snap:
                db.put(b"k", b"v")
                checks = db.pool.stats()["health_checks"]
                wait_until(lambda: db.pool.stats()["health_checks"] >= checks + 15, 20, "several health checks")
                assert snap.get(b"k") is None          # still there after 1.5 s of no use
            assert srv.registry.stats()["expired"] == 0


def test_any_request_on_the_connection_keeps_its_session_alive(local, monkeypatch):
    """No health checks: the client's plain gets and puts on the same
    connection count as hearing from it, so its snapshot outlives the idle
    timeout while the client keeps talking."""
    monkeypatch.setattr(server_module, "REAP_EVERY", 0.05)
    with NativeServer(local, "tcp://127.0.0.1:*", idle_timeout=0.6) as srv:
        with connect(srv.address, health_check_interval=None, max_size=1, **FAST) as db:
            with db.snapshot() as snap:
                deadline = time.monotonic() + 1.8        # three idle timeouts of plain traffic
                while time.monotonic() < deadline:
                    db.get(b"a")
                    db.put(b"c", b"1")
                    time.sleep(0.05)
                assert snap.get(b"c") is None
            assert srv.registry.stats()["expired"] == 0


def test_a_client_that_exits_without_close_releases_its_objects(server, tmp_path):
    """Its pools close at interpreter exit (the server drops what they made)."""
    script = tmp_path / "client.py"
    script.write_text(
        "import lightning_db as ldb\n"
        f"db = ldb.connect({server.address!r}, connect_timeout=5, timeout=10)\n"
        "snap = db.snapshot()\n"
        "tx = db.transaction(); tx.get(b'k')\n"
        "print('ready', flush=True)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ready" in out.stdout, out.stderr
    assert server.registry.stats()["objects"] == {"snapshot": 0, "tx": 0, "cursor": 0}


def test_start_errors(local, server):
    with pytest.raises(MailboxError):
        NativeServer(local, server.address).start()          # in use
    with pytest.raises(InvalidArgument):
        NativeServer(local, "http://nope").start()
    with pytest.raises(InvalidArgument):
        NativeServer(local, workers=0)
    with pytest.raises(InvalidArgument):
        server.start()


def test_standalone_server_process_stops_on_sigterm(tmp_path):
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "lightning_db.remote.server", "--data", str(data),
                             "--address", "tcp://127.0.0.1:*", "--shards", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(ldb.__file__)))
    try:
        line = proc.stdout.readline()
        match = re.search(r"listening on (tcp://\S+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        with connect(match.group(1), **FAST) as db:
            db.put(b"k", b"v")
            with db.transaction() as tx:
                tx.put(b"t", b"x")
            assert db.get_many([b"k", b"t"]) == [b"v", b"x"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    with ldb.open(data, shards=0) as db:
        assert db.get(b"k") == b"v" and db.get(b"t") == b"x"


def test_standalone_server_reports_a_bad_address(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lightning_db.remote.server", "--data", str(tmp_path / "d"),
                        "--address", "nope", "--shards", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "error:" in r.stderr and "RuntimeWarning" not in r.stderr
