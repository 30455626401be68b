"""Versions, version edits and the MANIFEST (LevelDB's version_set).

A *Version* is the immutable set of table files of a shard, per level, at one
moment. Every flush and compaction produces a *VersionEdit* (files added and
deleted, log number, sequence and file counters); the edit is appended to the
MANIFEST and fsynced before the new Version is installed, and only then may
the files or WALs it obsoletes be unlinked. ``CURRENT`` names the live
manifest and is switched by write-temp + fsync + rename + fsync(dir); the old
manifest is unlinked only after the new one is durable (LevelDB #189, #193,
#195, #196 were each a violation of one of these orderings).

Runs in the shard process, under the engine's state mutex.
"""

from __future__ import annotations

import contextlib
import os
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..config import MAX_LEVELS
from ..errors import CorruptionError, DiskFull, InvalidArgument, LightningError
from .format import CURRENT, MANIFEST_MAGIC, manifest_name
from .fs import OSFileSystem
from .log import LogWriter, read_log


@dataclass(eq=False)
class FileMeta:
    """One table file of a version. ``reader`` is opened before the version
    that contains the file is published, so no reader ever opens a file that
    could already be deleted."""

    number: int
    file_size: int
    smallest: bytes
    largest: bytes
    min_seq: int
    max_seq: int
    entries: int
    tombstones: int
    reader: Any = field(default=None, repr=False)

    def encode(self) -> list[Any]:
        return [self.number, self.file_size, self.smallest, self.largest, self.min_seq,
                self.max_seq, self.entries, self.tombstones]

    @classmethod
    def decode(cls, row: list[Any]) -> "FileMeta":
        return cls(*row[:8])


class Version:
    """Immutable: levels[0] newest first (files may overlap); levels[1:]
    sorted by smallest key and disjoint. ``largest_keys[n]`` serves bisect."""

    __slots__ = ("levels", "largest_keys", "deep", "upper", "last")

    def __init__(self, levels: list[list[FileMeta]]) -> None:
        self.levels = tuple(tuple(lvl) for lvl in levels)
        self.largest_keys = tuple([f.largest for f in lvl] for lvl in self.levels)
        # The non-empty levels >= 1 as (files, largest keys): the point-read path.
        self.deep = tuple((self.levels[n], self.largest_keys[n])
                          for n in range(1, len(self.levels)) if self.levels[n])
        # ... split as a point read walks them: all but the last, and the last (None: none).
        self.upper = self.deep[:-1]
        self.last = self.deep[-1] if self.deep else None

    def files(self) -> list[FileMeta]:
        return [f for lvl in self.levels for f in lvl]

    def level_bytes(self, level: int) -> int:
        return sum(f.file_size for f in self.levels[level])

    def overlapping(self, level: int, smallest: bytes | None, largest: bytes | None) -> list[FileMeta]:
        """Files of *level* whose key range meets [smallest, largest] (None = unbounded)."""
        files = self.levels[level]
        if level == 0:
            return [f for f in files
                    if (largest is None or f.smallest <= largest) and (smallest is None or f.largest >= smallest)]
        lo = 0 if smallest is None else bisect_left(self.largest_keys[level], smallest)
        out = []
        for f in files[lo:]:
            if largest is not None and f.smallest > largest:
                break
            out.append(f)
        return out


@dataclass
class VersionEdit:
    added: list[tuple[int, FileMeta]] = field(default_factory=list)
    deleted: list[tuple[int, int]] = field(default_factory=list)    # (level, number)
    log_number: int | None = None
    next_file: int | None = None
    last_seq: int | None = None
    compact_pointers: list[tuple[int, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        rec: dict[str, Any] = {}
        if self.added:
            rec["add"] = [[lvl, *f.encode()] for lvl, f in self.added]
        if self.deleted:
            rec["del"] = [list(d) for d in self.deleted]
        for name in ("log_number", "next_file", "last_seq"):
            v = getattr(self, name)
            if v is not None:
                rec[name] = v
        if self.compact_pointers:
            rec["cptr"] = [list(p) for p in self.compact_pointers]
        return msgpack.packb(rec, use_bin_type=True)

    @classmethod
    def decode(cls, payload: bytes, path: str) -> "VersionEdit":
        try:
            rec = msgpack.unpackb(payload, raw=False)
            return cls(
                added=[(row[0], FileMeta.decode(row[1:])) for row in rec.get("add", ())],
                deleted=[(lvl, num) for lvl, num in rec.get("del", ())],
                log_number=rec.get("log_number"),
                next_file=rec.get("next_file"),
                last_seq=rec.get("last_seq"),
                compact_pointers=[(lvl, key) for lvl, key in rec.get("cptr", ())],
            )
        except Exception as exc:
            raise CorruptionError(f"undecodable manifest record ({exc})", path) from exc


class VersionSet:
    """The current version plus the counters that the manifest persists."""

    def __init__(self, fs: OSFileSystem, dirname: str, num_levels: int) -> None:
        self.fs = fs
        self.dirname = dirname
        self.num_levels = num_levels
        self.current = Version([[] for _ in range(num_levels)])
        self.log_number = 0
        self.next_file = 2             # 1 is the first manifest
        self.last_seq = 0
        self.compact_pointers: dict[int, bytes] = {}
        self.manifest: LogWriter | None = None
        self.manifest_number = 0

    def new_file_number(self) -> int:
        n = self.next_file
        self.next_file += 1
        return n

    # --- applying edits --------------------------------------------------------
    def _check_level(self, lvl: int, what: str, path: str) -> None:
        if 0 <= lvl < self.num_levels:
            return
        if self.num_levels <= lvl < MAX_LEVELS:     # a deeper tree than this open's setting: the caller's mistake
            raise InvalidArgument(f"the database holds files at level {lvl}: open it with num_levels > {lvl} "
                                  f"(got num_levels={self.num_levels}; it cannot shrink)")
        raise CorruptionError(f"manifest {what} a file at level {lvl}", path)

    def _apply(self, edit: VersionEdit, base: Version, path: str) -> Version:
        levels = [list(lvl) for lvl in base.levels]
        for lvl, number in edit.deleted:
            self._check_level(lvl, "deletes", path)
            levels[lvl] = [f for f in levels[lvl] if f.number != number]
        for lvl, meta in edit.added:
            self._check_level(lvl, "adds", path)
            levels[lvl].append(meta)
        levels[0].sort(key=lambda f: f.max_seq, reverse=True)     # newest first
        for lvl in range(1, self.num_levels):
            levels[lvl].sort(key=lambda f: f.smallest)
        if edit.log_number is not None:
            self.log_number = edit.log_number
        if edit.next_file is not None:
            self.next_file = max(self.next_file, edit.next_file)
        if edit.last_seq is not None:
            self.last_seq = max(self.last_seq, edit.last_seq)
        for lvl, key in edit.compact_pointers:
            self.compact_pointers[lvl] = key
        return Version(levels)

    # --- recovery ----------------------------------------------------------------
    def recover(self) -> None:
        """Load CURRENT and its manifest. A torn manifest tail is ignored (a
        new manifest is written at every open); damage is a CorruptionError."""
        cur_path = os.path.join(self.dirname, CURRENT)
        raw = self.fs.read_file(cur_path)
        name = raw.decode("ascii", "replace").strip()
        if not raw.endswith(b"\n") or not name.startswith("MANIFEST-") or not name[9:].isdigit():
            raise CorruptionError(f"CURRENT does not name a manifest ({raw[:40]!r})", cur_path)
        path = os.path.join(self.dirname, name)
        if not self.fs.exists(path):
            raise CorruptionError(f"CURRENT names {name}, which is missing", cur_path)
        contents = read_log(self.fs, path, MANIFEST_MAGIC)
        if not contents.records:
            raise CorruptionError("manifest holds no version", path)
        version = self.current
        for payload in contents.records:
            version = self._apply(VersionEdit.decode(payload, path), version, path)
        self.current = version
        self.manifest_number = int(name[9:])
        self.next_file = max(self.next_file, self.manifest_number + 1)

    # --- writing -----------------------------------------------------------------------
    def snapshot_edit(self) -> VersionEdit:
        return VersionEdit(
            added=[(lvl, f) for lvl, files in enumerate(self.current.levels) for f in files],
            log_number=self.log_number, next_file=self.next_file, last_seq=self.last_seq,
            compact_pointers=sorted(self.compact_pointers.items()))

    def write_new_manifest(self) -> int:
        """Write a manifest holding the whole current state, make it durable,
        switch CURRENT to it, and return the number of the manifest it
        replaces (0 if none) for the caller to unlink afterwards."""
        number = self.new_file_number()
        path = os.path.join(self.dirname, manifest_name(number))
        writer = LogWriter(self.fs, path, MANIFEST_MAGIC)
        try:
            writer.add(self.snapshot_edit().encode())
            writer.sync()
            set_current(self.fs, self.dirname, manifest_name(number))
        except BaseException as exc:
            if isinstance(exc, LightningError) and self._names(manifest_name(number)):
                # Renamed, but the directory sync failed: CURRENT names the new
                # manifest, so it takes the edits from now on (the old one is
                # kept: the rename may not be durable yet).
                if self.manifest is not None:
                    self.manifest.close()
                self.manifest, self.manifest_number = writer, number
                raise
            writer.close()
            if isinstance(exc, LightningError):
                # CURRENT still names the old manifest (a full disk): the new
                # one goes, and the old one goes on taking edits.
                for name in (path, os.path.join(self.dirname, f"CURRENT.{manifest_name(number)[9:]}.tmp")):
                    with contextlib.suppress(OSError, LightningError):
                        self.fs.remove(name)
            raise
        old = self.manifest_number
        if self.manifest is not None:
            self.manifest.close()
        self.manifest = writer
        self.manifest_number = number
        return old

    def log_and_apply(self, edit: VersionEdit, max_manifest_size: int) -> int:
        """Make *edit* durable in the manifest, then install the new version.
        Returns the number of a manifest that became obsolete (0 if none)."""
        assert self.manifest is not None
        if edit.next_file is None:
            edit.next_file = self.next_file
        if edit.last_seq is None:
            edit.last_seq = self.last_seq
        new = self._apply(edit, self.current, self.manifest.path)
        self.manifest.add(edit.encode())       # a failed add leaves the manifest whole (log.py)
        try:
            self.manifest.sync()
        except BaseException:
            self.manifest.torn = True          # it holds an edit this version set never applied
            raise
        self.current = new
        if self.manifest.size > max_manifest_size:
            try:
                return self.write_new_manifest()
            except DiskFull:
                return 0                       # the edit is durable; a later edit tries again
        return 0

    def _names(self, manifest: str) -> bool:
        """Whether CURRENT names *manifest*."""
        try:
            return self.fs.read_file(os.path.join(self.dirname, CURRENT)).decode("ascii").strip() == manifest
        except (OSError, LightningError, UnicodeDecodeError):
            return False

    def close(self) -> None:
        if self.manifest is not None:
            self.manifest.close()
            self.manifest = None


def set_current(fs: OSFileSystem, dirname: str, manifest: str) -> None:
    """Point CURRENT at *manifest*: write a temp file, fsync it, rename it over
    CURRENT, fsync the directory. The manifest itself is already durable."""
    tmp = os.path.join(dirname, f"CURRENT.{manifest[9:]}.tmp")
    fs.write_file(tmp, (manifest + "\n").encode("ascii"), sync=True)
    fs.rename(tmp, os.path.join(dirname, CURRENT))
    fs.sync_dir(dirname)
