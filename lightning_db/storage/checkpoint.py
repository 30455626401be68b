"""Checkpoints: a consistent, openable copy of a shard in O(files).

Runs in the shard process, in the caller's thread. Tables are immutable, so
they are hard-linked (copied when the target is on another filesystem); the
live WALs are copied up to the position recorded under the write lock, so the
copy holds exactly the writes acknowledged before the checkpoint began. A
manifest describing that state and a CURRENT naming it are written last, and
everything is fsynced, directory included, before the call returns.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgument, IOFault
from .format import table_name, wal_name
from .version import Version, VersionSet

if TYPE_CHECKING:
    from .engine import Engine


def check_target(fs: Any, target: str) -> None:
    """InvalidArgument unless *target* is absent or an empty directory
    (nothing is written there then)."""
    if fs.exists(target):
        if not fs.isdir(target):
            raise InvalidArgument(f"checkpoint target {target} exists and is not a directory")
        if fs.listdir(target):
            raise InvalidArgument(f"checkpoint target {target} exists and is not empty")


def make_checkpoint(engine: "Engine", target: str) -> dict[str, Any]:
    fs = engine.fs
    check_target(fs, target)
    fs.makedirs(target)
    with engine._write_lock, engine._mutex:
        sv = engine._sv
        files = sv.version.files()
        wals = [(w.number, w.size) for _, w in sv.imms] + [(sv.wal.number, sv.wal.size)]
        last_seq = engine._last_seq
        levels = [list(lvl) for lvl in sv.version.levels]
        next_file = engine.versions.next_file
        # Link while holding the mutex: no compaction can unlink an input now.
        for f in files:
            _link_or_copy(fs, os.path.join(engine.path, table_name(f.number)),
                          os.path.join(target, table_name(f.number)))
    copied = 0
    for number, size in wals:
        data = fs.read_file(os.path.join(engine.path, wal_name(number)))[:size]
        fs.write_file(os.path.join(target, wal_name(number)), data, sync=True)
        copied += len(data)
    write_manifest(fs, target, engine.config.num_levels, levels, min(n for n, _ in wals), next_file, last_seq)
    return {"path": target, "tables": len(files), "wal_files": len(wals), "wal_bytes": copied,
            "sequence": last_seq}


def write_manifest(fs, target: str, num_levels: int, levels: list, log_number: int, next_file: int,
                   last_seq: int) -> None:
    """A manifest holding *levels* in *target*, durable and named by CURRENT."""
    vs = VersionSet(fs, target, num_levels)
    vs.current = Version(levels)
    vs.log_number = log_number
    vs.next_file = next_file
    vs.last_seq = last_seq
    vs.write_new_manifest()
    vs.close()


def _link_or_copy(fs, src: str, dst: str) -> None:
    try:
        fs.link(src, dst)
    except IOFault:
        # Another filesystem (EXDEV) or no hard links there: copy instead.
        fs.write_file(dst, fs.read_file(src), sync=True)
