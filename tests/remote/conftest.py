"""Fixtures of the native-protocol tests: a ``NativeServer`` in this
process over an in-process database (``shards=0``) on a free 127.0.0.1
port, and clients with short timeouts so that failure paths stay fast.

Every test must also stop every thread it started (servers, pools,
mailbox clients, executors): ``no_stray_threads`` checks that, as
``tests/conftest.py`` does for processes.
"""

from __future__ import annotations

import threading
import time

import pytest

import lightning_db as ldb
from lightning_db.remote import NativeServer, connect

FAST = dict(connect_timeout=1.0, timeout=10.0, acquire_timeout=2.0)
SMALL_VALUE_LIMIT = 1024


# Threads of this package and of the tests' own mailbox clients; a sharded
# database's threads (its write pipeline, started on first use) belong to
# the module's database and outlive a test by design.
OURS = ("ldb-native", "ldb-mailbox native-", "ldb-mailbox test-")


@pytest.fixture(autouse=True)
def no_stray_threads():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10.0
    while True:
        new = [t for t in threading.enumerate()
               if t not in before and t.is_alive() and t.name.startswith(OURS)]
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not new, f"threads left behind by this test: {[t.name for t in new]}"


@pytest.fixture
def local(tmp_path):
    """The database the server serves (small values: the limit tests)."""
    db = ldb.open(tmp_path / "db", shards=0, max_value_size=SMALL_VALUE_LIMIT)
    yield db
    db.close()


@pytest.fixture
def server(local):
    srv = NativeServer(local, "tcp://127.0.0.1:*", workers=4).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    db = connect(server.address, **FAST)
    yield db
    db.close()
