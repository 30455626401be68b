"""The participant side of commits across shards, and transactions' registrations.

Mixed into ``Engine`` (engine.py), whose write lock, WAL, prepared and
decided sets and conflict tracker (txn.py) these methods use: the same
thread-safety rules apply. Two-phase commit: ``prepare`` writes a durable
PREPARE record that nothing reads and takes the keys as intents,
``decide`` (on the transaction's primary) makes the decision to commit
durable without applying anything (a DECISION record, fsynced),
``commit_prepared`` writes a commit record naming the transaction (its ops
are its PREPARE's, earlier in the same WAL: a transaction still prepared
is logged again into every new WAL; with ``remember``, the same record is
the primary's durable decision, kept until ``forget``), ``abort_prepared``
drops it (never a decided one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgument, LightningError
from .txn import TxCheck
from .format import WalOp
from .wal import Op, encode_abort, encode_marker, encode_prepare

__all__ = ["Participant"]


class Participant:
    """Methods of ``Engine``; see the module docstring."""

    if TYPE_CHECKING:
        _write_lock: Any
        _mutex: Any
        _snapshots: dict[int, int]
        _prepared: dict[bytes, list[Op]]
        _decided: set[bytes]
        _sv: Any
        _last_seq: int
        _write_error: Exception | None
        _bg_error: Exception | None
        _closed: bool
        txn: Any

        def _raise_write_error(self) -> None: ...
        def _sync_through(self, wal: Any, target: int) -> None: ...
        def _write(self, ops: list[Op] | None, sync: bool, commit: bytes | None, remember: bool = False,
                   check: TxCheck | None = None) -> int: ...

    # --- transactions (storage/txn.py) ----------------------------------------------------
    def begin_tx(self, seq: int | None = None, token: int | None = None) -> int:
        """Register a transaction's snapshot: *seq* (one taken from shared
        memory, at most SNAPSHOT_LAG_S ago) or the latest. Every write after
        it is tracked for its commit's checks (and compaction keeps what it
        sees) until ``end_tx`` or expiry. *token*: the caller's name for
        this registration (``ConflictTracker.begin``)."""
        with self._write_lock:
            at = self._last_seq if seq is None else min(seq, self._last_seq)
            self.txn.begin(at, self._last_seq, token)
            return at

    def acquire_snapshot_at(self, seq: int) -> None:
        """Register a snapshot taken from shared memory at *seq* (at most
        SNAPSHOT_LAG_S ago; until then the lag floor keeps what it sees)."""
        with self._mutex:
            seq = min(seq, self._last_seq)
            self._snapshots[seq] = self._snapshots.get(seq, 0) + 1

    def end_tx(self, seq: int, token: int | None = None) -> bool:
        """Drop a registration (*token*'s, where given); False when it had
        expired meanwhile."""
        with self._write_lock:
            return self.txn.end(seq, token)

    # --- two-phase commit (a participant's side) --------------------------------------------
    def prepare(self, txid: bytes, ops: list[Op], check: TxCheck | None = None, sync: bool = True,
                decide: bool = False) -> None:
        """Make *ops* durable under *txid* without applying them: after this
        returns, the transaction survives any crash until ``commit_prepared``
        or ``abort_prepared`` decides it. Fsynced, except with ``sync=False``:
        on the transaction's primary, whose decision (its commit record,
        always fsynced, later in the same WAL) makes the prepare durable
        with it, and whose prepare lost to a power loss before any decision
        means an abort, as an undecided one does. The keys become intents;
        *check* (a transaction's) is validated first, and without one the
        ops still may not meet another transaction's intents. What it read
        and scanned here (a serializable transaction's check) become read
        intents, logged with the PREPARE: a shard restarted before the
        commit holds them again, so that no write of a key the transaction
        read slips in between its validation and its commit. A participant
        that only validates reads prepares with no ops. With *decide* (the
        primary, once every other participant prepared): the decision too,
        in the same WAL write, fsynced (``decide`` in one step)."""
        with self._write_lock:
            if self._write_error is not None or self._bg_error is not None or self._closed:
                self._raise_write_error()
            if txid in self._prepared:
                raise InvalidArgument(f"transaction {txid!r} is already prepared on this shard")
            keys = [op[1] for op in ops]
            check = check or TxCheck(None)
            check.writes = keys
            self.txn.check(check, txid)
            intents = (list(check.reads), list(check.ranges) if check.serializable else [])
            wal = self._sv.wal
            records = [encode_prepare(txid, ops, intents)]
            if decide:
                records.append(encode_marker(WalOp.DECISION, txid))
            try:
                target = wal.append(*records)
            except LightningError as exc:
                if wal.torn:
                    self._write_error = exc
                raise
            self._prepared[txid] = list(ops)
            self.txn.hold(txid, keys, *intents)
            if decide:
                self._decided.add(txid)
        if sync or decide:
            self._sync_through(wal, target)

    def commit_prepared(self, txid: bytes, sync: bool = True, remember: bool = False) -> int:
        """Apply the prepared transaction *txid*; the commit record names
        it (replay takes the ops from its PREPARE, earlier in the same WAL).
        With *remember* this shard is the transaction's primary: the same
        record is the durable decision, kept (``decided``) until
        ``forget``. Returns the last sequence number. A transaction that
        only read here (no ops) has its read intents released."""
        return self._write(None, sync, txid, remember)

    def decide(self, txid: bytes) -> None:
        """As *txid*'s primary, make the decision to commit it durable
        without applying it: a DECISION record, fsynced (which makes the
        PREPARE before it durable too). From here the transaction commits
        whatever dies: ``commit_prepared`` applies it (here and on every
        other participant), ``abort_prepared`` refuses it, and the decision
        is kept until ``forget``, across restarts (recovery replays PREPARE
        and DECISION as prepared and decided)."""
        with self._write_lock:
            if self._write_error is not None or self._bg_error is not None or self._closed:
                self._raise_write_error()
            if txid not in self._prepared:
                raise InvalidArgument(f"no prepared transaction {txid!r} on this shard")
            wal = self._sv.wal
            if txid in self._decided:
                target = wal.size              # decided before (a retry): durable once synced
            else:
                try:
                    target = wal.append(encode_marker(WalOp.DECISION, txid))
                except LightningError as exc:
                    if wal.torn:
                        self._write_error = exc
                    raise
                self._decided.add(txid)
        self._sync_through(wal, target)

    def decided(self, txid: bytes) -> bool:
        """Whether this shard, as primary, decided to commit *txid* (applied
        here or not yet) and still keeps the decision."""
        return txid in self._decided

    def decisions(self) -> list[bytes]:
        """The txids whose decision this shard, as primary, still keeps."""
        with self._write_lock:
            return list(self._decided)

    def forget(self, *txids: bytes) -> None:
        """Every participant has the decision of each of *txids*: stop
        keeping them (one FORGET record each, in one WAL write)."""
        with self._write_lock:
            if self._write_error is not None or self._closed:
                return
            kept = [t for t in dict.fromkeys(txids) if t in self._decided]
            if not kept:
                return
            self._sv.wal.append(*[encode_marker(WalOp.FORGET, t) for t in kept])
            self._decided.difference_update(kept)

    def abort_prepared(self, txid: bytes) -> bool:
        """Drop the prepared transaction *txid* (False if it is unknown, or
        decided here: a decided transaction only commits). The abort record
        need not be synced: a prepare found without a decision after a
        crash is simply asked about again."""
        with self._write_lock:
            if self._write_error is not None or self._closed:
                self._raise_write_error()
            if txid in self._decided:
                return False
            if txid not in self._prepared:
                return False
            try:
                self._sv.wal.append(encode_abort(txid))
            except LightningError as exc:
                if self._sv.wal.torn:
                    self._write_error = exc
                raise
            del self._prepared[txid]
            self.txn.release(txid)
            return True

    def in_doubt(self) -> dict[bytes, list[Op]]:
        """Prepared transactions with no decision yet (after recovery too),
        including those that only read here (no ops)."""
        with self._write_lock:
            return {t: [tuple(op) for op in ops] for t, ops in self._prepared.items()}

