"""Helpers shared by the crash and fault tests (not fixtures: see conftest.py)."""

from __future__ import annotations

import os
from typing import Any

from lightning_db.config import Config
from lightning_db.db import Database
from lightning_db.storage.engine import Engine
from lightning_db.storage.format import parse_name
from lightning_db.storage.fs import OSFileSystem
from tests.waiting import wait_until  # noqa: F401  (re-exported)


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment (long forms of the tests)."""
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def open_db(path: str | os.PathLike[str], fs: OSFileSystem | None = None, **options: Any) -> Database:
    """The public API over an engine that uses *fs* (the fault seam)."""
    return Database(Engine(os.fspath(path), Config().replace(**options), fs=fs))


def full_state(db: Database, keys: list[bytes]) -> dict[bytes, bytes]:
    """Read the whole database twice (get per key, and a full scan) and
    check that the two agree; return the scanned contents."""
    scanned = dict(db.scan())
    got = db.get_many(keys)
    for k, v in zip(keys, got):
        assert scanned.get(k) == v, f"get({k!r}) = {v!r} but scan has {scanned.get(k)!r}"
    return scanned


def engine_idle(engine: Engine) -> bool:
    """No background work left and no obsolete file on disk. Raises
    SimulatedCrash (through the fs) once the filesystem has crashed."""
    fs = engine.fs
    fs.exists(engine.path)
    with engine._mutex:
        if engine._bg_error is not None:
            raise AssertionError(f"background error: {engine._bg_error!r}")
        sv = engine._sv
        if sv.imms or engine._bg_pending():
            return False
        tables = {f.number for f in sv.version.files()}
        wal, seg, manifest = sv.wal.number, sv.mem.number, engine.versions.manifest_number
    found: dict[str, set[int]] = {"table": set(), "wal": set(), "segment": set(), "manifest": set()}
    for name in fs.listdir(engine.path):
        p = parse_name(name)
        if p is not None:
            found[p[0]].add(p[1])
        elif name.startswith("CURRENT."):
            return False
    return found == {"table": tables, "wal": {wal}, "segment": {seg}, "manifest": {manifest}}


def quiesce(engine: Engine) -> None:
    wait_until(lambda: engine_idle(engine), 60.0, "the engine to become idle")
