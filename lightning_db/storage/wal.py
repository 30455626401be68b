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

The file is allocated ahead of its records (``WAL_RESERVE``) and cut back to
them when closed; one a crash left longer ends in zeros, which ``read_log``
takes for the end of the records (recovery then cuts them off).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import msgpack

from ..errors import CorruptionError, IOFault
from .format import WAL_MAGIC, WalOp
from .fs import OSFileSystem
from .log import LogWriter, read_log

Op = tuple[int, bytes, bytes]   # (kind, key, value)

# A WAL's blocks are allocated this far ahead of its writes (fs.WritableFile):
# its syncs then write data, not the file's size and block map.
WAL_RESERVE = 4 << 20


_local = threading.local()


def _pack(rec: tuple) -> bytes:
    """*rec* in msgpack, the bytes ``packb`` gives, by this thread's own
    packer: building a packer costs more than packing a small record (a
    put's: 1.3 against 0.6 µs). A pack that fails leaves it empty."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(rec)


def encode_batch(first_seq: int, ops: list[Op]) -> bytes:
    return _pack((WalOp.BATCH, first_seq, ops))


def encode_commit(first_seq: int, txid: bytes, remember: bool = False) -> bytes:
    """The commit of prepared transaction *txid*: its ops are its PREPARE's."""
    rec: tuple = (WalOp.COMMIT, first_seq, [], txid, 1) if remember else (WalOp.COMMIT, first_seq, [], txid)
    return _pack(rec)


def encode_tokened(first_seq: int, ops: list[Op], token: tuple[bytes, int, int]) -> bytes:
    """A plain batch tagged with its write token (storage/dedupe.py)."""
    return _pack((WalOp.TOKENED, first_seq, ops, *token))


def encode_tokens(state: bytes) -> bytes:
    return _pack((WalOp.TOKENS, 0, [], state))


def encode_marker(op: WalOp, txid: bytes) -> bytes:
    """DECISION or FORGET of *txid*."""
    return _pack((op, 0, [], txid))


Intents = tuple[list[bytes], list[tuple[bytes | None, bytes | None]]]   # (keys read, ranges scanned)


def encode_prepare(txid: bytes, ops: list[Op], intents: Intents | None = None) -> bytes:
    """A transaction's PREPARE: its ops, and its read *intents* here where
    it has any (a serializable transaction's reads and scanned ranges)."""
    if intents and (intents[0] or intents[1]):
        return _pack((WalOp.PREPARE, 0, ops, txid, [list(intents[0]), [list(r) for r in intents[1]]]))
    return _pack((WalOp.PREPARE, 0, ops, txid))


def encode_abort(txid: bytes) -> bytes:
    return _pack((WalOp.ABORT, 0, [], txid))


class WalRecord(NamedTuple):
    op: int
    first_seq: int
    ops: list[Op]
    txid: bytes | None             # a TOKENS record: the state
    remember: bool = False
    token: tuple[bytes, int, int] | None = None    # a TOKENED batch's (writer, n, lo)
    intents: Intents | None = None                 # a PREPARE's read intents


def decode_record(payload: bytes, path: str) -> WalRecord:
    try:
        rec = msgpack.unpackb(payload, use_list=True, raw=False)
    except Exception as exc:   # a record that passed its crc but does not decode
        raise CorruptionError(f"undecodable WAL record ({exc})", path) from exc
    if (isinstance(rec, list) and len(rec) == 6 and rec[0] == WalOp.TOKENED and isinstance(rec[1], int)
            and isinstance(rec[2], list) and isinstance(rec[3], bytes)
            and type(rec[4]) is int and type(rec[5]) is int):
        return WalRecord(WalOp.BATCH, rec[1], rec[2], None, False, (rec[3], rec[4], rec[5]))
    if isinstance(rec, list) and len(rec) == 5 and rec[0] == WalOp.PREPARE:
        intents = _intents(rec[4])
        if intents is None or not isinstance(rec[2], list) or not isinstance(rec[3], bytes):
            raise CorruptionError(f"malformed WAL prepare record {str(rec)[:60]!r}", path)
        return WalRecord(rec[0], rec[1], rec[2], rec[3], intents=intents)
    if (not isinstance(rec, list) or len(rec) not in (3, 4, 5) or rec[0] not in _OPS
            or not isinstance(rec[1], int) or not isinstance(rec[2], list)
            or (len(rec) >= 4 and not isinstance(rec[3], bytes))
            or (rec[0] not in (WalOp.BATCH, WalOp.COMMIT) and len(rec) != 4)
            or (rec[0] == WalOp.COMMIT and (len(rec) < 4 or rec[2]))):
        raise CorruptionError(f"malformed or unknown WAL record {str(rec)[:60]!r}", path)
    return WalRecord(rec[0], rec[1], rec[2], rec[3] if len(rec) >= 4 else None, len(rec) == 5 and rec[4] == 1)


_OPS = frozenset(int(o) for o in WalOp if o != WalOp.TOKENED)   # TOKENED: its own shape above


def _intents(x: object) -> Intents | None:
    """A PREPARE's [reads, ranges], checked; None when malformed."""
    if not (isinstance(x, list) and len(x) == 2 and isinstance(x[0], list) and isinstance(x[1], list)):
        return None
    reads, ranges = x
    if not all(isinstance(k, bytes) for k in reads):
        return None
    out = []
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2 and all(b is None or isinstance(b, bytes) for b in r)):
            return None
        out.append((r[0], r[1]))
    return reads, out


class WalReplay:
    __slots__ = ("records", "good_size", "file_size")

    def __init__(self, records: list[WalRecord], good_size: int, file_size: int) -> None:
        self.records = records
        self.good_size = good_size
        self.file_size = file_size


def read_wal(fs: OSFileSystem, path: str) -> WalReplay:
    """Every intact record of a WAL file (recovery only). A torn tail is left
    out and reported through good_size < file_size."""
    contents = read_log(fs, path, WAL_MAGIC)
    return WalReplay([decode_record(p, path) for p in contents.records],
                     contents.good_size, contents.file_size)


class Wal:
    """One open WAL file. ``number`` matches the memtable segment it feeds."""

    def __init__(self, fs: OSFileSystem, path: str, number: int) -> None:
        self.number = number
        self.log = LogWriter(fs, path, WAL_MAGIC, WAL_RESERVE)
        self._sync_lock = threading.Lock()
        self.failed: Exception | None = None
        self.syncs = 0

    @property
    def size(self) -> int:
        return self.log.size

    @property
    def synced_size(self) -> int:
        return self.log.synced_size

    @property
    def torn(self) -> bool:
        """A failed append left part of a frame behind: no more appends."""
        return self.log.torn

    def append(self, payload: bytes, *more: bytes) -> int:
        """Write one record (or several, in one write call); return the file
        size after it (the sync target). A failed append (a full disk)
        leaves the WAL as it was unless ``torn``. REQUIRES: the engine's
        write lock."""
        self.log.add(payload, *more)
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
