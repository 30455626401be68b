"""Restore points: what a shard is rebuilt from when one of its files is damaged.

Runs in the shard process. A restore point lives in ``<shard dir>/restore/``:
its own copies (never hard links: a flipped byte in a live table must not
reach the copy) of the tables of one version, the WALs that were live then
(copied up to the size acknowledged at that moment), a manifest and CURRENT.
From then on every WAL the engine retires is moved into the restore point
instead of being unlinked (the WAL archive), so the restore point plus the
archive plus the live WALs hold every acknowledged write.

Making one (``make``, on the engine's background thread, so no flush retires
a WAL meanwhile): the version's tables are hard-linked into ``restore.tmp``
under the engine's mutex (no compaction can unlink them), then each link is
replaced by a real copy, reusing the previous restore point's copy of a
table it already holds. Every new copy has its block checksums checked: a
table damaged in place never becomes a copy (the point is not taken, and
the engine reports the live file as its background error, so a shard
restores from the point it has). The directory is fsynced, the previous point moved
to ``restore.old``, ``restore.tmp`` renamed to ``restore``, the shard
directory fsynced, and ``restore.old`` removed with the archive it held.

Restoring (``restore``, with the engine closed, after the damaged file was
quarantined): a fresh sibling directory ``<shard dir>.restoring`` receives
copies of the restore point's files (each table's checksums checked: a
damaged copy stops the restore, nothing replaced) and of the live WALs
numbered from the point's log number on; a ``COMPLETE`` marker is written last. Then the
restore point moves into it, the shard directory moves to
``<shard dir>.replaced``, the new directory takes its name, and the replaced
one is removed. Opening the engine on it replays every WAL from the point's
log number: the shard has every write it acknowledged. An interrupted
restore is finished (marker present) or discarded (absent) by the next
``restore`` or ``settle`` call.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import TYPE_CHECKING, Any

from ..errors import CorruptionError, IOFault, LightningError
from .format import CURRENT, parse_name, table_name, wal_name
from .table import TableReader
from .fs import OSFileSystem
from .checkpoint import write_manifest
from .version import VersionSet

if TYPE_CHECKING:
    from .engine import Engine

RESTORE_DIR = "restore"
_TMP, _OLD = "restore.tmp", "restore.old"
_WORK, _REPLACED, _COMPLETE = ".restoring", ".replaced", "COMPLETE"


def has_point(fs: OSFileSystem, shard_dir: str) -> bool:
    return fs.exists(os.path.join(shard_dir, RESTORE_DIR, CURRENT))


def archive_wal(engine: "Engine", number: int) -> None:
    """Retire a WAL: into the restore point's archive when there is one,
    else unlinked. A partial copy taken with the point is replaced."""
    src = engine._file(wal_name(number))
    if engine.restore_points and has_point(engine.fs, engine.path):
        try:
            engine.fs.rename(src, os.path.join(engine.path, RESTORE_DIR, wal_name(number)))
            return
        except IOFault:
            if not engine.fs.exists(src):
                return
            raise
    try:
        engine.fs.remove(src)
    except FileNotFoundError:
        pass


def make(engine: "Engine") -> dict[str, Any] | None:
    """Take a restore point of *engine* (its background thread); None when
    writers kept the write lock (try again later)."""
    fs, path = engine.fs, engine.path
    tmp, cur, old = (os.path.join(path, n) for n in (_TMP, RESTORE_DIR, _OLD))
    # A writer stalled for this very thread holds the write lock: while
    # flushes are behind, or the lock stays taken, give up for now (the
    # next flush tries again) rather than wait for it.
    sv, cfg = engine._sv, engine.config
    if len(sv.imms) >= cfg.max_immutable_memtables or len(sv.version.levels[0]) >= cfg.l0_stop_writes_trigger:
        return None
    if not engine._write_lock.acquire(timeout=0.05):
        return None
    try:
        _rmtree(tmp)
        fs.makedirs(tmp)
    except BaseException:
        engine._write_lock.release()
        raise
    try:
        with engine._mutex:
            sv = engine._sv
            files = sv.version.files()
            wals = [(w.number, w.size) for _, w in sv.imms] + [(sv.wal.number, sv.wal.size)]
            last_seq, next_file = engine._last_seq, engine.versions.next_file
            levels = [list(lvl) for lvl in sv.version.levels]
            for f in files:
                fs.link(engine._file(table_name(f.number)), os.path.join(tmp, table_name(f.number)))
    finally:
        engine._write_lock.release()
    copied = 0
    for f in files:
        name = table_name(f.number)
        dst = os.path.join(tmp, name)
        prev = os.path.join(cur, name)
        if fs.exists(prev):
            fs.remove(dst)
            fs.link(prev, dst)               # the previous point's own copy
        else:
            data = fs.read_file(dst)         # through the link: compaction may unlink the live name
            fs.remove(dst)
            fs.write_file(dst, data, sync=True)
            # A table damaged in place must not become the point's copy (every
            # later restore would bring the damage back): the live file is named.
            _check_copy(fs, dst, f.number, engine._file(name))
            copied += 1
    for number, size in wals:
        data = fs.read_file(engine._file(wal_name(number)))[:size]
        fs.write_file(os.path.join(tmp, wal_name(number)), data, sync=True)
    write_manifest(fs, tmp, engine.config.num_levels, levels, min(n for n, _ in wals), next_file, last_seq)
    fs.sync_dir(tmp)
    _rmtree(old)
    if fs.exists(cur):
        fs.rename(cur, old)
    fs.rename(tmp, cur)
    fs.sync_dir(path)
    _rmtree(old)
    return {"tables": len(files), "tables_copied": copied, "sequence": last_seq, "time": time.time()}


def swap_pending(shard_dir: str) -> bool:
    """Whether a finished rebuild waits to replace *shard_dir* (``settle``
    puts it in place; the shard directory may be missing until then)."""
    return os.path.exists(os.path.join(shard_dir + _WORK, _COMPLETE))


def settle(fs: OSFileSystem, shard_dir: str) -> None:
    """Finish or discard what an interrupted ``make`` or ``restore`` left."""
    work, replaced = shard_dir + _WORK, shard_dir + _REPLACED
    if fs.exists(os.path.join(work, _COMPLETE)):
        if fs.exists(shard_dir):
            if not fs.exists(os.path.join(work, RESTORE_DIR)) and fs.exists(os.path.join(shard_dir, RESTORE_DIR)):
                fs.rename(os.path.join(shard_dir, RESTORE_DIR), os.path.join(work, RESTORE_DIR))
            _rmtree(replaced)
            fs.rename(shard_dir, replaced)
        fs.rename(work, shard_dir)
        fs.sync_dir(os.path.dirname(shard_dir))
        fs.remove(os.path.join(shard_dir, _COMPLETE))
    else:
        _rmtree(work)
    _rmtree(replaced)
    if fs.exists(shard_dir):
        if not fs.exists(os.path.join(shard_dir, RESTORE_DIR)) and fs.exists(os.path.join(shard_dir, _OLD)):
            fs.rename(os.path.join(shard_dir, _OLD), os.path.join(shard_dir, RESTORE_DIR))
        _rmtree(os.path.join(shard_dir, _TMP))
        _rmtree(os.path.join(shard_dir, _OLD))


def restore(fs: OSFileSystem, shard_dir: str, num_levels: int) -> dict[str, Any]:
    """Rebuild *shard_dir* from its restore point plus every WAL since (the
    engine is closed). Raises ``CorruptionError`` when there is no point."""
    settle(fs, shard_dir)
    point = os.path.join(shard_dir, RESTORE_DIR)
    if not has_point(fs, shard_dir):
        raise CorruptionError("the shard has no restore point to rebuild from", shard_dir)
    probe = VersionSet(fs, point, num_levels)
    probe.recover()
    log_number = probe.log_number
    probe.close()
    work = shard_dir + _WORK
    fs.makedirs(work)
    files = live_wals = 0
    try:
        for name in fs.listdir(point):
            dst = os.path.join(work, name)
            fs.write_file(dst, fs.read_file(os.path.join(point, name)), sync=True)
            p = parse_name(name)
            if p is not None and p[0] == "table":
                _check_copy(fs, dst, p[1], os.path.join(point, name))
            files += 1
        for name in fs.listdir(shard_dir):
            p = parse_name(name)
            if p is not None and p[0] == "wal" and p[1] >= log_number:
                dst = os.path.join(work, name)
                data = fs.read_file(os.path.join(shard_dir, name))
                if not fs.exists(dst) or len(data) >= fs.file_size(dst):
                    fs.write_file(dst, data, sync=True)
                    live_wals += 1
        fs.write_file(os.path.join(work, _COMPLETE), b"", sync=True)
    except (LightningError, OSError):
        _rmtree(work)               # nothing replaced: the shard stays as it was
        raise
    fs.sync_dir(work)
    settle(fs, shard_dir)
    return {"files_from_point": files, "live_wals": live_wals, "log_number": log_number}


def _check_copy(fs: OSFileSystem, copy: str, number: int, source: str) -> None:
    """Every block checksum of the table copied to *copy* holds; else
    ``CorruptionError`` naming *source*, where the damage came from."""
    try:
        reader = TableReader.open(fs, copy, number, None)
        try:
            reader.check_sums()
        finally:
            reader.close()
    except CorruptionError as exc:
        raise CorruptionError(f"table {number} is damaged: {exc}", source) from None


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
