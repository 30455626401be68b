"""The storage engine of one shard: an LSM tree (LevelDB's shape).

Threads (all in the shard process; with ``shards=0`` that is the caller's):
- callers: ``write`` serialises on the write lock (WAL append + memtable
  insert), then waits for its fsync outside the lock (group commit); reads
  take no lock at all.
- one background thread: flushes immutable memtables to L0 and runs
  compactions (background.py).
- with ``sync="interval"``, a syncer thread fsyncs the WAL every interval
  (background.py).

Readers see a *super version* ``(mem, imms, version)`` swapped atomically
under the state mutex. They read the sequence number first and the super
version second, so everything at or below that sequence is in what they see.
Table readers are opened before a version that names them is published, and
files are unlinked only once the current version no longer names them; an
mmap keeps the bytes of an unlinked file readable for a reader that still
holds an older super version.

Failure model: an I/O error while writing the WAL or syncing it poisons
writes (never retried, see wal.py); a background error (flush, compaction)
does too. Reads keep working from what is in memory and on disk.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Callable, Iterator

from ..config import Config
from ..errors import BackgroundError, DatabaseClosed, InvalidArgument, LightningError, OutOfOrder, WriteStalled
from . import compaction
from .background import Background, SuperVersion
from .cache import make_cache
from .format import LOCK, Kind, WalOp, manifest_name, segment_name, table_name, wal_name
from .fs import OSFileSystem
from .lookup import lookup
from .memtable import Memtable
from .published import Publisher
from .recovery import recover
from .table import TableReader
from .participant import Participant
from .scan import first_chunk, version_scan
from .ttl import VALUE_TTL, entry, visible
from .txn import ConflictTracker, TxCheck
from .version import FileMeta, VersionSet
from .wal import Op, Wal, encode_batch, encode_commit, encode_marker, encode_prepare, encode_tokened

_VALUE = int(Kind.VALUE)
SNAPSHOT_LAG_S = 10.0        # how late a snapshot taken from shared memory may be registered


class Engine(Background, Participant):
    """One shard's LSM tree. Thread-safe. Keys and values must already be
    validated (the Database facade does it); ops are (kind, key, value)."""

    def __init__(self, path: str, config: Config | None = None, fs: OSFileSystem | None = None,
                 restore_points: bool = False, publish: str | None = None,
                 on_segment: Callable[[Any], Any] | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.config = config or Config()
        self.fs = fs or OSFileSystem()
        # Restore points (storage/restore.py): kept when the shard's owner
        # can rebuild from them (the shard actor), every config.restore_interval s.
        self.restore_points = restore_points and self.config.restore_interval > 0
        self._on_segment = on_segment      # placement of each new memtable mapping (huge pages, NUMA)
        self._last_point: float | None = None
        self.cache = make_cache(self.config.block_cache_policy, self.config.block_cache_size)
        self._write_lock = threading.Lock()
        self._mutex = threading.Lock()
        self._bg_cv = threading.Condition(self._mutex)
        self._compaction_lock = threading.Lock()
        self._closed = False
        self._closing = False
        self._write_error: Exception | None = None
        # Syncs left for later by one thread (``defer_syncs``): (wal, target).
        self._deferred: list[tuple[Wal, int]] | None = None
        self._defer_thread = 0
        self._bg_error: Exception | None = None
        self._snapshots: dict[int, int] = {}
        self._ttl_seen = False             # expiring values written (or met by compaction): sweep them
        self._next_sweep = time.monotonic() + self.config.ttl_sweep_interval
        self._manual_compaction = False
        self._counters = dict(flushes=0, compactions=0, trivial_moves=0, compaction_bytes_read=0,
                              compaction_bytes_written=0, flush_bytes_written=0, user_bytes_written=0,
                              wal_bytes_written=0, write_stalls=0, background_disk_full=0, records_dropped=0, records_expired=0, records_swept=0, wal_syncs_closed=0,
                              restore_points=0, restore_point_errors=0)
        self.fs.makedirs(self.path)
        self._lock = self.fs.lock(os.path.join(self.path, LOCK))
        # Published versions (storage/published.py): other processes read
        # this shard from shared memory; "not serving" until recovery is done.
        self._pub: Publisher | None = None
        try:
            if publish is not None:
                self._pub = Publisher(publish)
            self.versions = VersionSet(self.fs, self.path, self.config.num_levels)
            mem, wal, last_seq, self._prepared, intents, self._decided, self.tokens = recover(self)
            # Optimistic transactions (storage/txn.py): prepared transactions hold their
            # intents again: their ops' keys as write intents, and what a serializable
            # one read and scanned here as read intents (until its commit or abort).
            # Published (shard) engines: snapshots are taken from shared memory
            # and registered up to SNAPSHOT_LAG_S later (shards/snapshot.py).
            self._lag = publish is not None
            self.txn = ConflictTracker(self.config.transaction_max_age, self.config.transaction_max_keys,
                                       SNAPSHOT_LAG_S if self._lag else 0.0)
            if self._lag:
                self.txn.sample(last_seq)
            for txid, ops in self._prepared.items():
                reads, ranges = intents.get(txid, ((), ()))
                self.txn.hold(txid, [op[1] for op in ops], reads, ranges)
            self._last_seq = last_seq
            self._sv = SuperVersion(mem, wal, (), self.versions.current)
            self._publish()
        except BaseException:
            if self._pub is not None:
                self._pub.close()
            self._lock.release()
            raise
        self._sync_always = self.config.sync == "always"
        self._bg = threading.Thread(target=self._bg_loop, name=f"ldb-bg:{self.path}", daemon=True)
        self._bg.start()
        self._syncer: threading.Thread | None = None
        self._stop_syncer = threading.Event()
        if self.config.sync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name=f"ldb-sync:{self.path}", daemon=True)
            self._syncer.start()

    # --- helpers used by recovery ---------------------------------------------------
    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _open_reader(self, meta: FileMeta) -> FileMeta:
        if meta.reader is None:
            meta.reader = TableReader.open(self.fs, self._file(table_name(meta.number)), meta.number, self.cache)
        return meta

    def _new_memtable(self, number: int, needed: int = 0, keys: int = 0) -> Memtable:
        """A memtable of ``memtable_size``, or larger where one write of
        *needed* arena bytes and *keys* keys would not fit in it (a batch
        is never split across memtables)."""
        cap = max(self.config.memtable_size, needed + (needed >> 3) + 4096, Memtable.capacity_for_keys(keys))
        mem = Memtable(self.fs, self._file(segment_name(number)), number, cap)
        if self._on_segment is not None:
            self._on_segment(mem.mapping)
        return mem

    # --- reads (no lock) -------------------------------------------------------------------
    @property
    def last_sequence(self) -> int:
        return self._last_seq

    def get(self, key: bytes, seq: int | None = None, copy: bool = True) -> Any:
        """The value of *key* as of *seq* (default: the latest), or None.
        The hot read path: one function, no locks, no allocation on a miss.
        ``copy=False``: a memoryview into the mapped data instead of bytes."""
        if seq is None:
            seq = self._last_seq             # the sequence first, then the super version
        sv = self._sv
        r = sv.mem.get(key, seq, copy)
        if r is None:
            r = lookup(sv.imm_mems, sv.version, key, seq, copy)
            if r is None:
                return None
        return r[1] if r[0] == _VALUE else visible(*r)

    def get_entry(self, key: bytes, seq: int | None = None) -> tuple[bytes, float | None] | None:
        """(value, expiry in Unix seconds or None) of *key* as of *seq*, or None."""
        if seq is None:
            seq = self._last_seq
        sv = self._sv
        r = sv.mem.get(key, seq)
        return entry(r if r is not None else lookup(sv.imm_mems, sv.version, key, seq))

    def get_many(self, keys: list[bytes], seq: int | None = None) -> list[bytes | None]:
        if seq is None:
            seq = self._last_seq
        get = self.get
        return [get(k, seq) for k in keys]

    def scan(self, start: bytes | None, end: bytes | None, reverse: bool = False,
             seq: int | None = None, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Live (key, value) pairs with start <= key < end, ascending (or
        descending with *reverse*), as of *seq*; *limit*: how many the
        caller will take at most (a hint: the iterator reads ahead about
        that many first)."""
        if seq is None:
            seq = self._last_seq
        sv = self._sv
        return version_scan([sv.mem, *sv.imm_mems], sv.version, start, end, reverse, seq, first_chunk(limit))

    # --- snapshots --------------------------------------------------------------------------
    def acquire_snapshot(self) -> int:
        with self._mutex:
            seq = self._last_seq
            self._snapshots[seq] = self._snapshots.get(seq, 0) + 1
            return seq

    def release_snapshot(self, seq: int) -> None:
        with self._mutex:
            n = self._snapshots.get(seq, 0)
            if n <= 1:
                self._snapshots.pop(seq, None)
            else:
                self._snapshots[seq] = n - 1

    def _smallest_snapshot(self) -> int:
        if self._write_lock.acquire(blocking=False):     # never wait: a writer may be waiting for us
            try:
                self.txn.expire()               # registrations of transactions left open too long
            finally:
                self._write_lock.release()
        tx, lag = self.txn.floor, self.txn.lag_floor     # read without a lock
        if lag is not None and self._pub is not None and not self._pub.cut_within(SNAPSHOT_LAG_S + 1.0):
            lag = None       # no snapshot was cut from shared memory lately: none is unregistered
        with self._mutex:
            seq = min(self._snapshots, default=self._last_seq)
        # Transactions' snapshots count too, and so does every seq of the
        # last SNAPSHOT_LAG_S seconds while snapshots are being cut from
        # shared memory (registered late; published.py).
        return min(x for x in (seq, tx, lag) if x is not None)

    # --- writes -------------------------------------------------------------------------------
    def write(self, ops: list[Op], sync: bool = False, check: TxCheck | None = None,
              token: tuple[bytes, int, int] | None = None, after: int | None = None) -> int:
        """Apply *ops* atomically; return the sequence number of the last one.
        Returns once the WAL holds them (and has fsynced them when *sync* or
        the policy is ``always``). With *check* (a transaction's commit) the
        check passes first, under the same lock, or nothing is written. With
        *token* (writer, n, lo) a write already applied under the same token
        is not applied again (dedupe.py): the current sequence is returned.
        *after* (with a token): the same writer's write number *after* must
        be settled here first (dedupe.py ``settled``), else ``OutOfOrder``
        and nothing is written (pipelined writes, shards/pipeline.py)."""
        if not ops:
            if check is not None:
                with self._write_lock:
                    self.txn.check(check)
            return self._last_seq
        return self._write(ops, sync, None, False, check, token=token, after=after)

    def _write(self, ops: list[Op] | None, sync: bool, commit: bytes | None, remember: bool = False,
               check: TxCheck | None = None, keep: Callable[[list[Op]], list[Op]] | None = None,
               token: tuple[bytes, int, int] | None = None, after: int | None = None) -> int:
        """The write path. *keep* (the expiry sweep) filters *ops* under the
        lock and makes this return how many were written."""
        with self._write_lock:
            if self._write_error is not None or self._bg_error is not None or self._closed:
                self._raise_write_error()
            dup: int | None = None
            if token is not None and self.tokens.seen(*token):
                # Applied before (a retry whose first answer was lost): write
                # nothing; a sync covers what the WAL already holds.
                wal, target, dup = self._sv.wal, self._sv.wal.size, self._last_seq
            else:
                if after is not None and token is not None and not self.tokens.settled(token[0], after):
                    raise OutOfOrder(f"write {token[1]} of this writer came before its write {after}")
                if keep is not None:
                    ops = keep(ops)
                    if not ops:
                        return 0
                txn = self.txn
                if commit is not None:
                    ops = self._prepared.get(commit)
                    if ops is None:
                        raise InvalidArgument(f"no prepared transaction {commit!r} on this shard")
                elif check is not None:
                    check.writes = [op[1] for op in ops]
                    txn.check(check)
                elif txn._write_intents:
                    txn.check_plain([op[1] for op in ops])
                n = len(ops)
                nbytes = 32 * n
                for op in ops:
                    nbytes += len(op[1]) + len(op[2])
                mem = self._sv.mem
                if not mem.fits(nbytes, n):
                    mem = self._make_room(nbytes, n)
                wal = self._sv.wal
                seq = self._last_seq + 1
                # A commit names its prepared transaction: the ops are in its
                # PREPARE, earlier in this WAL (rotation logs it again).
                payload = (encode_commit(seq, commit, remember) if commit is not None
                           else encode_batch(seq, ops) if token is None else encode_tokened(seq, ops, token))
                try:
                    target = wal.append(payload)
                except LightningError as exc:
                    if wal.torn:                  # a partial frame is on disk: no more appends
                        self._write_error = exc
                    raise                         # else nothing was written (a full disk): writes go on
                try:
                    if n:
                        if not self._ttl_seen:
                            for op in ops:
                                if op[0] == VALUE_TTL:
                                    self._ttl_seen = True
                                    break
                        mem.add_batch(seq, ops)
                        self._last_seq = seq + n - 1
                        if self._pub is not None:
                            self._pub.visible(self._last_seq)
                        if txn.tracked_from is not None:
                            txn.record(seq, [op[1] for op in ops])
                        if self._lag:
                            txn.sample(self._last_seq)
                    if commit is not None:
                        del self._prepared[commit]
                        txn.release(commit)
                        if remember:
                            self._decided.add(commit)
                    if token is not None:
                        self.tokens.add(*token)
                except BaseException as exc:
                    # Stopped between its WAL record and its memtable records
                    # (a KeyboardInterrupt): the next write would reuse these
                    # seqs, so none may follow before a reopen applies the record.
                    self._write_error = BackgroundError(
                        f"a write was interrupted ({type(exc).__name__}) after its WAL record was written and "
                        "before it was applied: reopen the database (which applies it) to write again")
                    raise
                c = self._counters
                c["user_bytes_written"] += nbytes - 32 * n
                c["wal_bytes_written"] += len(payload)
        if sync or self._sync_always:
            self._sync_through(wal, target)
        if dup is not None:
            return dup
        if keep is not None:
            return n
        return self._last_seq if not n else seq + n - 1

    def defer_syncs(self) -> None:
        """From now on this thread's syncs wait for ``finish_syncs`` (group
        commit: a shard worker handles every message one receive brought,
        then makes them durable with one fsync before it answers any that
        waits for it). Other threads sync as before."""
        self._deferred = []
        self._defer_thread = threading.get_ident()

    def deferred_syncs(self) -> int:
        """Syncs this thread left for ``finish_syncs`` so far."""
        return len(self._deferred) if self._deferred is not None else 0

    def finish_syncs(self) -> LightningError | None:
        """Do the syncs left since ``defer_syncs`` (each WAL once, to the
        furthest target) and stop deferring; the error one met, if any (the
        engine then refuses writes, as after any failed sync)."""
        deferred, self._deferred = self._deferred, None
        targets: dict[Wal, int] = {}
        for wal, target in deferred or ():
            targets[wal] = max(target, targets.get(wal, 0))
        try:
            for wal, target in targets.items():
                self._sync_through(wal, target)
                if wal.log.synced_size < target:   # closed meanwhile, without its last sync
                    err = self._write_error
                    return err if isinstance(err, LightningError) else DatabaseClosed(
                        f"database {self.path} closed before its writes were made durable")
        except LightningError as exc:
            return exc
        return None

    def _sync_through(self, wal: Wal, target: int) -> None:
        """Make *wal* durable up to *target*, and every older WAL whose
        memtable still awaits flush with it: a synced write makes every
        earlier write durable too. Deferred (``defer_syncs``): noted only."""
        deferred = self._deferred
        if deferred is not None and threading.get_ident() == self._defer_thread:
            deferred.append((wal, target))
            return
        try:
            for _, old in reversed(self._sv.imms):
                if old.synced_size < old.size:
                    old.sync_to(old.size)
            wal.sync_to(target)
        except LightningError as exc:
            self._write_error = exc
            raise

    def _raise_write_error(self) -> None:
        if self._closed:
            raise DatabaseClosed(f"database {self.path} is closed")
        err = self._write_error or self._bg_error
        cls = type(err) if isinstance(err, LightningError) else BackgroundError
        raise cls(f"writes are refused after an earlier failure: {err!r}") from err

    def _make_room(self, nbytes: int, n: int) -> Memtable:
        """REQUIRES: write lock. Rotate the memtable, stalling while the
        background thread is too far behind."""
        deadline = time.monotonic() + self.config.write_stall_timeout_s
        with self._mutex:
            stalled = False
            while (len(self._sv.imms) >= self.config.max_immutable_memtables
                   or len(self._sv.version.levels[0]) >= self.config.l0_stop_writes_trigger):
                if self._bg_error is not None:
                    self._raise_write_error()
                stalled = True
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WriteStalled(
                        f"writes waited {self.config.write_stall_timeout_s}s (write_stall_timeout_s) for "
                        f"background flush/compaction: {len(self._sv.imms)} immutable memtables, "
                        f"{len(self._sv.version.levels[0])} L0 files")
                self._bg_cv.wait(min(left, 1.0))
            if stalled:
                self._counters["write_stalls"] += 1
            self._rotate(nbytes, n)
            return self._sv.mem

    def _rotate(self, needed: int = 0, keys: int = 0) -> None:
        """REQUIRES: write lock and mutex. The live memtable becomes immutable;
        a new WAL (its directory entry durable) and memtable take over."""
        sv = self._sv
        number = self.versions.new_file_number()
        wal = Wal(self.fs, self._file(wal_name(number)), number)
        mem: Memtable | None = None
        try:
            self.fs.sync_dir(self.path)
            mem = self._new_memtable(number, needed, keys)
            # Prepared transactions and kept decisions follow into the new WAL:
            # the old one is unlinked once its memtable is flushed; they must not be.
            if self._prepared or self._decided:
                for txid, ops in self._prepared.items():
                    wal.append(encode_prepare(txid, ops, self.txn.read_intents(txid)))
                for txid in self._decided:
                    wal.append(encode_marker(WalOp.DECISION, txid))
                wal.sync_to(wal.size)
            # So do the write tokens of writes that may still be retried (dedupe.py).
            self.tokens.carry_into(wal)
        except BaseException as exc:
            wal.close(sync=False)
            if mem is not None:
                mem.close()
            if isinstance(exc, LightningError):
                # A full disk: the write that needed room fails, the live
                # memtable and WAL stay, and the new files go (they hold space).
                for name in (wal_name(number), segment_name(number)):
                    with contextlib.suppress(LightningError):
                        self._remove(name)
            raise
        sv.mem.freeze()
        self._sv = SuperVersion(mem, wal, ((sv.mem, sv.wal),) + sv.imms, sv.version)
        self._publish()             # before any write goes into the new memtable
        self._bg_cv.notify_all()

    def _publish(self) -> None:
        """REQUIRES: mutex (or the engine not yet running). Share the super
        version with readers in other processes."""
        if self._pub is not None:
            sv = self._sv
            self._pub.publish(self.path, [sv.mem.number] + [m.number for m in sv.imm_mems], sv.version,
                              self._last_seq)

    def _new_number(self) -> int:
        with self._mutex:
            return self.versions.new_file_number()

    def _remove(self, name: str) -> None:
        try:
            self.fs.remove(self._file(name))
        except FileNotFoundError:
            pass

    def _remove_manifest(self, number: int) -> None:
        self._remove(manifest_name(number))

    # --- maintenance (caller threads) ---------------------------------------------------
    def sync_wal(self) -> None:
        """Make every write so far durable (its WAL records), without a flush."""
        with self._write_lock:
            if self._write_error is not None or self._closed:
                self._raise_write_error()
            wal = self._sv.wal
            target = wal.size
        self._sync_through(wal, target)

    def flush(self) -> None:
        """Write the memtable (and any immutable ones) to L0 and wait."""
        with self._write_lock:
            if self._write_error is not None or self._bg_error is not None or self._closed:
                self._raise_write_error()
            if self._sv.mem.entries:
                with self._mutex:
                    self._rotate()
        self._wait_for(lambda: not self._sv.imms)

    def _wait_for(self, done) -> None:
        with self._mutex:
            while not done():
                if self._bg_error is not None:
                    self._raise_write_error()
                if self._closed or self._closing:
                    raise DatabaseClosed(f"database {self.path} is closed")
                self._bg_cv.wait(1.0)

    def compact(self) -> None:
        """Flush, then push everything down into the last non-empty level so
        that each key has one version and no tombstone is left."""
        self.flush()
        with self._compaction_lock:
            with self._mutex:
                self._manual_compaction = True
            try:
                for level in range(self.config.num_levels - 1):
                    with self._mutex:
                        version = self._sv.version
                        deeper = any(version.levels[n] for n in range(level + 1, self.config.num_levels))
                        c = compaction.pick_manual(version, self.config, level) if deeper or level == 0 else None
                    if c is not None:
                        self._compact_once(c)
            finally:
                with self._mutex:
                    self._manual_compaction = False
                    self._bg_cv.notify_all()
        if self._bg_error is not None:
            self._raise_write_error()

    def checkpoint(self, target: str) -> dict[str, Any]:
        from .checkpoint import make_checkpoint
        return make_checkpoint(self, os.path.abspath(os.fspath(target)))

    def verify(self) -> dict[str, int]:
        """Read every block of every table, checking checksums."""
        blocks = files = 0
        for f in self._sv.version.files():
            blocks += f.reader.verify()
            files += 1
        return {"tables": files, "blocks": blocks}

    # --- introspection -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        from .stats import engine_stats
        return engine_stats(self)

    # --- shutdown --------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        with self._write_lock:
            self._closed = True
        if self._pub is not None:
            self._pub.close()       # readers ask the shard from now on
        with self._mutex:
            self._closing = True
            self._bg_cv.notify_all()
        self._bg.join()
        if self._syncer is not None:
            self._stop_syncer.set()
            self._syncer.join()
        sv = self._sv
        ok = self._write_error is None
        error: BaseException | None = None
        for wal in [w for _, w in reversed(sv.imms)] + [sv.wal]:
            try:
                wal.close(sync=ok)
            except LightningError as exc:      # every handle is closed all the same
                error = error or exc
                ok = False
        try:
            self.versions.close()
        finally:
            self._lock.release()
        if error is not None:
            raise error
