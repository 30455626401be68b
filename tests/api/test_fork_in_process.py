"""An in-process database (``shards=0``) in a process that forks: the
handle belongs to the process that opened it. In the child every call
raises DatabaseClosed naming that process, close() touches nothing (the
parent keeps its directory lock), and the parent's data and acknowledged
writes stay whole."""

from __future__ import annotations

import os

import pytest

import lightning_db as ldb


def _in_child(fn) -> int:
    """Run *fn* in a forked child; its exit code (0: fn returned True)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if fn() else 3
        except BaseException:          # noqa: BLE001 - any failure is the child's exit code
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_cannot_use_or_close_the_parents_handle(tmp_path):
    path = tmp_path / "db"
    db = ldb.open(path, shards=0)
    try:
        db.put(b"base", b"0", sync=True)
        snap = db.snapshot()
        tx = db.transaction()
        assert tx.get(b"base") == b"0"

        def child() -> bool:
            for call in (lambda: db.put(b"child", b"C" * 40), lambda: db.get(b"base"), lambda: db.scan(),
                         lambda: db.put_many({b"c": b"1"}), db.flush, lambda: snap.get(b"base"),
                         lambda: tx.put(b"child-tx", b"1")):
                with pytest.raises(ldb.DatabaseClosed, match=f"opened in process {os.getppid()}"):
                    call()
            snap.close()
            tx.rollback()
            db.close()                                  # touches nothing of the parent's
            with pytest.raises(ldb.DatabaseLocked):
                ldb.open(path, shards=0)                # the parent still holds the directory
            return True

        assert _in_child(child) == 0
        db.put(b"parent", b"P" * 8, sync=True)
        assert db.get(b"parent") == b"P" * 8 and db.get(b"child") is None
        with pytest.raises(ldb.DatabaseLocked):
            ldb.open(path, shards=0)                    # the child's close() did not release the lock
        assert snap.get(b"base") == b"0"
        snap.close()
        tx.rollback()
        db.put(b"after", b"1", sync=True)
    finally:
        db.close()
    with ldb.open(path, shards=0) as again:
        assert list(again.scan()) == [(b"after", b"1"), (b"base", b"0"), (b"parent", b"P" * 8)]
