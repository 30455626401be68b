"""The native protocol's package imports neither zmq (the mailbox alone
does) nor the storage engine (it serves any handle with the Database API)."""

from __future__ import annotations

from ..test_layers import PACKAGE_DIR, tree_violations


def test_remote_imports_no_zmq_and_no_storage():
    files, found = tree_violations(PACKAGE_DIR, "remote", ("zmq", "lightning_db.storage"))
    assert {p.name for p in files} >= {"__init__.py", "server.py", "client.py", "pool.py", "aio.py"}
    assert found == []
