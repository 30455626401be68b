"""The engine's background work: the background thread (flushes of
immutable memtables to L0, compactions, the expiry sweep, restore points)
and, with ``sync="interval"``, the WAL syncer; and the super version
readers see. ``Background`` is a part of ``Engine`` (engine.py), which owns
the state these methods use: the state mutex and condition, the current
super version, the version set, the counters.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import CorruptionError, DiskFull, LightningError
from . import compaction, gil, restore
from .outputs import discard
from .format import Kind, segment_name, table_name
from .lookup import lookup
from .ttl import VALUE_TTL, expired, now_ms
from .scan import newest_entries
from .version import FileMeta, Version, VersionEdit

if TYPE_CHECKING:
    from .memtable import Memtable
    from .wal import Op, Wal

_DELETE = int(Kind.DELETE)
BG_DISK_FULL_RETRY_S = 0.5  # a flush or compaction that met a full disk is tried again this much later


class SuperVersion:
    """What readers of this process see at once: the live memtable and its WAL,
    the immutable ones waiting for a flush, and the version of tables."""

    __slots__ = ("mem", "wal", "imms", "imm_mems", "version")

    def __init__(self, mem: Memtable, wal: Wal, imms: tuple[tuple[Memtable, Wal], ...], version: Version):
        self.mem = mem
        self.wal = wal
        self.imms = imms            # newest first: (memtable, its WAL)
        self.imm_mems = tuple(m for m, _ in imms)
        self.version = version


class Background:
    """Engine methods run by its background threads (see the module docstring)."""

    def _bg_pending(self) -> bool:
        if self._sv.imms:
            return True
        if self._manual_compaction:
            return False
        return compaction.pick(self._sv.version, self.config, self.versions.compact_pointers) is not None

    def _bg_loop(self) -> None:
        gil.background()            # flushes and compactions step aside for the message loop (gil.py)
        try:
            self._maybe_restore_point()
            while True:
                with self._mutex:
                    while not self._closing and (self._bg_error is not None or not self._bg_pending()):
                        if self._sweep_due():
                            break
                        self._bg_cv.wait(self._sweep_wait())
                    if self._closing:
                        return
                    imm = self._sv.imms[-1] if self._sv.imms else None
                    sweep = imm is None and self._bg_error is None and self._sweep_due()
                try:
                    if sweep:
                        self.sweep_expired()
                    elif imm is not None:
                        self._flush_one(imm)
                        self._maybe_restore_point()
                    else:
                        with self._compaction_lock:
                            self._compact_once(None)
                except Exception as exc:
                    with self._mutex:
                        manifest = self.versions.manifest
                        if isinstance(exc, DiskFull) and not (manifest is not None and manifest.torn):
                            # A full disk: nothing was installed and the
                            # partial outputs are gone; try again shortly
                            # (writes stall meanwhile once memtables pile up).
                            self._counters["background_disk_full"] += 1
                            self._bg_cv.notify_all()
                            until = time.monotonic() + BG_DISK_FULL_RETRY_S
                            while not self._closing and (left := until - time.monotonic()) > 0:
                                self._bg_cv.wait(left)
                            continue
                        self._bg_error = exc
                        self._bg_cv.notify_all()
        except BaseException:
            # A simulated crash (fault-injection tests) or interpreter exit:
            # the thread ends; the engine is abandoned by whoever crashed it.
            return

    # --- the expiry sweep (ttl.py) ---------------------------------------------------------------
    def _sweep_due(self) -> bool:
        return self._ttl_seen and time.monotonic() >= self._next_sweep

    def _sweep_wait(self) -> float:
        """How long the background thread may sleep (it wakes to look at
        least every interval: an expiring value may have been written)."""
        return max(0.0, self._next_sweep - time.monotonic()) if self._ttl_seen else self.config.ttl_sweep_interval

    def sweep_expired(self) -> int:
        """Write a tombstone for every key whose newest version is an expired
        value (the background thread does it every ``ttl_sweep_interval``
        seconds once expiring values exist); the number written. Flushes and
        compactions then reclaim the space as for any tombstone."""
        self._next_sweep = time.monotonic() + self.config.ttl_sweep_interval
        sv, seq, now = self._sv, self._last_seq, now_ms()
        found = [k for k, kind, v in newest_entries([sv.mem, *sv.imm_mems], sv.version, seq)
                 if kind == VALUE_TTL and expired(v, now)]
        swept = 0

        def still_expired(ops: list[Op]) -> list[Op]:   # under the write lock: nothing newer landed
            sv, seq = self._sv, self._last_seq
            return [op for op in ops if _newest_expired(sv, op[1], seq, now)]
        for i in range(0, len(found), 1024):
            if self._closed:
                break
            swept += self._write([(_DELETE, k, b"") for k in found[i:i + 1024]], False, None, False, None,
                                 still_expired)
        self._counters["records_swept"] += swept
        return swept

    def _flush_one(self, imm: tuple[Memtable, Wal]) -> None:
        """Background thread: write the oldest immutable memtable to L0."""
        mem, wal = imm
        smallest = self._smallest_snapshot()
        outputs, counts = compaction.write_flush(self.fs, self.path, self.config, mem, smallest,
                                                 self._new_number)
        with self._mutex:
            sv = self._sv
            assert sv.imms and sv.imms[-1] is imm
            rest = sv.imms[:-1]
            next_log = rest[-1][1].number if rest else sv.wal.number
            edit = VersionEdit(added=[(0, f) for f in outputs], log_number=next_log,
                               last_seq=self._last_seq)
            old_manifest = self._install(edit, outputs)
            self._sv = SuperVersion(sv.mem, sv.wal, rest, self.versions.current)
            self._publish()         # before the segment and the WAL go
            self._counters["flushes"] += 1
            self._counters["flush_bytes_written"] += counts["bytes_written"]
            self._counters["records_dropped"] += counts["dropped"]
            self._counters["records_expired"] += counts["expired"]
            self._ttl_seen = self._ttl_seen or counts["expiring"] > 0
            # The manifest no longer needs this WAL: its contents are durable
            # in a table. Unlink before waking waiters, so flush() returns
            # with the directory in its final state.
            wal.close(sync=False)
            self._counters["wal_syncs_closed"] += wal.syncs
            restore.archive_wal(self, wal.number)
            self._remove(segment_name(mem.number))
            if old_manifest:
                self._remove_manifest(old_manifest)
            self._bg_cv.notify_all()

    def _maybe_restore_point(self) -> None:
        """Background thread: take a restore point when none exists or the
        last is config.restore_interval old. A failure is counted and the
        next flush tries again; writes go on, unless the failure is a live
        table found damaged while copying it: that is this engine's
        background error (writes refused with it, so a shard restores)."""
        if not self.restore_points:
            return
        now = time.monotonic()
        if self._last_point is not None and now - self._last_point < self.config.restore_interval:
            return
        try:
            if restore.make(self) is None:
                return
        except (LightningError, OSError) as exc:
            self._counters["restore_point_errors"] += 1
            if isinstance(exc, CorruptionError):
                with self._mutex:
                    self._bg_error = exc
                    self._bg_cv.notify_all()
            return
        self._last_point = now
        self._counters["restore_points"] += 1

    def _compact_once(self, c: compaction.Compaction | None) -> bool:
        """REQUIRES: compaction lock. Run *c* (or the most urgent one)."""
        if c is None:
            with self._mutex:
                c = compaction.pick(self._sv.version, self.config, self.versions.compact_pointers)
        if c is None:
            return False
        smallest = self._smallest_snapshot()
        edit, outputs, counts = compaction.run(self.fs, self.path, self.config, c, smallest, self._new_number)
        with self._mutex:
            old_manifest = self._install(edit, [] if c.is_trivial_move() else outputs, outputs)
            sv = self._sv
            self._sv = SuperVersion(sv.mem, sv.wal, sv.imms, self.versions.current)
            self._publish()         # before the inputs are unlinked
            cnt = self._counters
            if c.is_trivial_move():
                cnt["trivial_moves"] += 1
            else:
                cnt["compactions"] += 1
                cnt["compaction_bytes_read"] += c.input_bytes()
                cnt["compaction_bytes_written"] += counts["bytes_written"]
                cnt["records_dropped"] += counts["dropped"]
                cnt["records_expired"] += counts["expired"]
                self._ttl_seen = self._ttl_seen or counts["expiring"] > 0
            self._bg_cv.notify_all()
        if not c.is_trivial_move():
            for _, number in edit.deleted:
                self.cache.erase_file(number)
                self._remove(table_name(number))
        if old_manifest:
            self._remove_manifest(old_manifest)
        return True

    def _install(self, edit: VersionEdit, written: list[FileMeta], outputs: list[FileMeta] | None = None) -> int:
        """REQUIRES: mutex. Name the *outputs* of a flush or compaction in the
        manifest (their directory entries durable first, their readers open);
        the tables *written* for it are removed when that fails (a full disk),
        so a failed attempt holds no space. Returns log_and_apply's result."""
        outputs = written if outputs is None else outputs
        try:
            if written:
                self.fs.sync_dir(self.path)    # the new tables' names are durable before the manifest names them
            for f in outputs:
                self._open_reader(f)
            return self.versions.log_and_apply(edit, self.config.max_manifest_size)
        except LightningError:
            manifest = self.versions.manifest
            if manifest is not None and not manifest.torn:   # the manifest does not name them
                discard(self.fs, self.path, written)
            raise

    def _sync_loop(self) -> None:
        interval = self.config.sync_interval_ms / 1000.0
        try:
            while not self._stop_syncer.wait(interval):
                wal = self._sv.wal
                size = wal.size
                if wal.synced_size < size and self._write_error is None:
                    try:
                        wal.sync_to(size)
                    except LightningError as exc:
                        self._write_error = exc
        except BaseException:
            return


def _newest_expired(sv: SuperVersion, key: bytes, seq: int, now: int) -> bool:
    """Whether the newest version of *key* in *sv* is an expired value."""
    r = sv.mem.get(key, seq)
    if r is None:
        r = lookup(sv.imm_mems, sv.version, key, seq)
    return r is not None and r[0] == VALUE_TTL and expired(r[1], now)
