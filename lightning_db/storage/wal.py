"""The write-ahead log of one shard: batch records and group commit.

Runs in the shard process. ``append`` is called by the writer holding the
engine's write lock; ``sync_to`` by any writer thread after it released that
lock, so one fsync covers every record appended before it started (group
commit): the first writer to arrive syncs, the others find their record
already covered and return.

A failed fsync is never retried (PostgreSQL's "fsyncgate": after EIO the
kernel may already have dropped the dirty pages, so a second fsync that
succeeds proves nothing). The WAL remembers the failure and the engine
refuses writes until it is reopened and recovers from what is on disk.
"""

from __future__ import annotations

import threading

import msgpack

from ..errors import CorruptionError, IOFault
from .format import WAL_MAGIC, WalOp
from .fs import OSFileSystem
from .log import LogWriter, read_log

Op = tuple[int, bytes, bytes]   # (kind, key, value)


def encode_batch(first_seq: int, ops: list[Op]) -> bytes:
    return msgpack.packb((WalOp.BATCH, first_seq, ops), use_bin_type=True)


def decode_record(payload: bytes, path: str) -> tuple[int, list[Op]]:
    try:
        op, first_seq, ops = msgpack.unpackb(payload, use_list=True, raw=False)
    except Exception as exc:   # a record that passed its crc but does not decode
        raise CorruptionError(f"undecodable WAL record ({exc})", path) from exc
    if op != WalOp.BATCH or not isinstance(first_seq, int) or not isinstance(ops, list):
        raise CorruptionError(f"unknown WAL record type {op!r}", path)
    return first_seq, ops


class WalReplay:
    __slots__ = ("batches", "good_size", "file_size")

    def __init__(self, batches: list[tuple[int, list[Op]]], good_size: int, file_size: int) -> None:
        self.batches = batches
        self.good_size = good_size
        self.file_size = file_size


def read_wal(fs: OSFileSystem, path: str) -> WalReplay:
    """Every intact batch of a WAL file (recovery only). A torn tail is left
    out and reported through good_size < file_size."""
    contents = read_log(fs, path, WAL_MAGIC)
    return WalReplay([decode_record(p, path) for p in contents.records],
                     contents.good_size, contents.file_size)


class Wal:
    """One open WAL file. ``number`` matches the memtable segment it feeds."""

    def __init__(self, fs: OSFileSystem, path: str, number: int) -> None:
        self.number = number
        self.log = LogWriter(fs, path, WAL_MAGIC)
        self._sync_lock = threading.Lock()
        self.failed: Exception | None = None
        self.syncs = 0

    @property
    def size(self) -> int:
        return self.log.size

    @property
    def synced_size(self) -> int:
        return self.log.synced_size

    def append(self, payload: bytes) -> int:
        """Write one record; return the file size after it (the sync target).
        REQUIRES: the engine's write lock."""
        self.log.add(payload)
        return self.log.size

    def sync_to(self, target: int) -> None:
        """Make every byte up to *target* durable (group commit)."""
        if self.log.synced_size >= target:
            return
        with self._sync_lock:
            if self.failed is not None:
                raise IOFault(f"WAL {self.log.path} failed an earlier fsync; writes are refused "
                              "until the database is reopened") from self.failed
            if self.log.synced_size >= target or self.log.closed:
                return    # another writer's fsync covered us, or close() synced it all
            try:
                self.log.sync()
            except IOFault as exc:
                self.failed = exc
                raise
            self.syncs += 1

    def close(self, sync: bool = True) -> None:
        """Close the file; with *sync* every byte is durable first (a closed
        WAL is always fully synced unless the engine is failing)."""
        with self._sync_lock:
            if self.log.closed:
                return
            try:
                if sync and self.failed is None and self.log.synced_size < self.log.size:
                    self.log.sync()
                    self.syncs += 1
            except IOFault as exc:
                self.failed = exc
                raise
            finally:
                self.log.close()
