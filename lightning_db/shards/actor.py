"""``ShardActor``: one shard's storage engine behind a mailbox.

Runs in the shard worker process (spawned by ``lightning_db.actors.spawn``,
one per shard): ``on_start`` opens the shard's ``Engine``, every message is
turned into one engine call on the actor loop's thread, ``on_stop`` closes
the engine. The client side (routing, paging, merging, two-phase commit) is
``lightning_db.shards.router`` in the caller's process.

Messages (op, payload) -> reply; payloads are msgpack lists, bytes stay bytes:

    "write"    [ops, sync(, token(, after))]        -> last seq (a token seen before: nothing
               written again, storage/dedupe.py; after: the writer's write number that must be
               settled here first, else OutOfOrder and nothing written)
    "get"      [key, seq|None]                      -> bytes | None
    "get_many" [keys, seq|None]                     -> [bytes | None, ...]
    "get_entry" [key, seq|None]                     -> [value, expiry (Unix s) | None] | None
    "scan"     [start, end, reverse, seq, page, after] -> [[key, value], ...]
               at most ``page`` pairs in scan order, strictly after ``after``
               (None: from the bound); a short page means the end
    "snapshot" -> seq            "release" [seq]
    "snapshot" [tx(, token)] -> [seq, prepared txids, decided txids]   (tx: a transaction's, tracked)
    "release"  [seq, tx(, token)] -> bool (False: the transaction's registration had expired)
    "register" [seq, tx(, token)]  a snapshot taken from the published version at seq
               (told; asked again by a thread whose checks must find it there)
    a transaction's token (an int the caller draws) names its registration on
    the shard: registered twice it is one, released before it arrives it
    never holds anything (registration and release may travel on different
    connections); a check [snapshot, reads, ranges, serializable, token]
    releases it once checked, passed or not
    "txwrite"  [ops, sync, check]                   -> last seq (check passes first, or nothing is written)
    "prepare"  [txid, ops(, check)]  "commit" [txid, sync, remember] -> seq
    "decide"   [txid]  the primary's decision to commit, durable, nothing applied
    "decide"   [txid, ops(, check)]  the primary's prepare and decision in one step (one WAL write)
    "abort"    [txid] -> bool (never a decided txid)    "in_doubt" -> [[txid, ops], ...]
    "decided"  [txid] -> bool    "forget" [txid, ...]    "decisions" -> [txid, ...] (decisions kept)
    "sync"     every write so far made durable (its WAL records fsynced)
    "flush", "compact", "verify" -> dict | None
    "checkpoint" [dir] -> dict   "stats" -> engine stats + shard_id

ops are [kind, key, value] with kind 1 (VALUE), 2 (VALUE_TTL: the value
starts with its expiry, storage/ttl.py) or 0 (DELETE); a check is
[snapshot seq | None, read keys, ranges [[lo|None, hi|None], ...], serializable(, token)]
(storage/txn.py); a prepare with no ops and a check holds read intents only.
A payload of
the wrong shape raises ``InvalidArgument``; engine errors keep their
taxonomy class across the mailbox.

A ``CorruptionError`` met by any op is the critical path: the engine is
closed, the damaged file it names quarantined (``supervisor.quarantine``),
the shard rebuilt from its restore point plus every WAL since
(``storage.restore``), the engine reopened and the op run again on it (an op
that met corruption changed nothing). The same happens when the engine
cannot open at start. A restore stopped part way by another error (a full
disk, an I/O error) is answered with that error and tried again by the next
message, until the rebuilt shard is open. ``stats`` reports restores and
quarantined files.

An ``abort`` of a transaction this shard has not prepared is remembered (in
memory, bounded): a ``prepare`` of it arriving later is refused with
``TransactionConflict``, so in-doubt resolution racing a live coordinator
can never leave a transaction half committed.
"""

from __future__ import annotations

import logging
import os
from itertools import chain
from collections import OrderedDict
from typing import Any

from ..actors import Actor
from ..actors.placement import advise_huge_pages, bind_to_node, node_of, numa_nodes, usable_cpus
from ..config import Config
from ..errors import CorruptionError, InvalidArgument, LightningError, TransactionConflict
from ..storage import restore
from ..storage.engine import Engine
from ..storage.dedupe import WRITER_ID_BYTES
from ..storage.format import Kind, parse_name
from ..storage.ttl import EXPIRY_BYTES
from ..storage.txn import TxCheck
from ..storage.fs import OSFileSystem
from ..supervisor.quarantine import QUARANTINE_DIR, quarantine

__all__ = ["MAX_PAGE", "ShardActor"]

MAX_PAGE = 1 << 16           # pairs per scan page, at most
_ABORTED_MEMORY = 4096       # unknown txids whose abort is remembered
_KINDS = (int(Kind.VALUE), int(Kind.DELETE), int(Kind.VALUE_TTL))
_JUST_VALUES, _JUST_INT, _JUST_BYTES, _JUST_THREE = {int(Kind.VALUE)}, {int}, {bytes}, {3}
_SEQUENCES = {list, tuple}
_VALUE = int(Kind.VALUE)
_VALUE_TTL = int(Kind.VALUE_TTL)
_DELETE = int(Kind.DELETE)


log = logging.getLogger(__name__)


def _damaged_file(exc: BaseException, shard_dir: str) -> str | None:
    """The shard file a CorruptionError (or the error it was raised from)
    names, when it is one of this shard's own files and still there."""
    while exc is not None:
        path = getattr(exc, "path", None)
        if path and os.path.dirname(os.path.abspath(path)) == os.path.abspath(shard_dir) \
                and parse_name(os.path.basename(path)) is not None and os.path.isfile(path):
            return os.path.abspath(path)
        exc = exc.__cause__
    return None


def _shape(payload: Any, n: int, op: str) -> list[Any]:
    if not isinstance(payload, (list, tuple)) or len(payload) != n:
        raise InvalidArgument(f"{op!r} takes a list of {n} items, got {payload!r:.80}")
    return list(payload)


def _token(t: Any) -> tuple[bytes, int, int]:
    """A write token [writer (12 bytes), n >= 1, lo (1..n)] (storage/dedupe.py)."""
    if (isinstance(t, (list, tuple)) and len(t) == 3 and isinstance(t[0], bytes) and len(t[0]) == WRITER_ID_BYTES
            and type(t[1]) is int and type(t[2]) is int and 1 <= t[2] <= t[1] < 1 << 63):
        return (t[0], t[1], t[2])
    raise InvalidArgument(f"a write token is [writer id of {WRITER_ID_BYTES} bytes, n >= 1, lo in 1..n], "
                          f"got {t!r:.80}")


def _bytes(x: Any, what: str, optional: bool = False) -> bytes | None:
    if x is None and optional:
        return None
    if not isinstance(x, bytes):
        raise InvalidArgument(f"{what} must be bytes, got {type(x).__name__}")
    return x


def _seq(x: Any) -> int | None:
    if x is None:
        return None
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise InvalidArgument(f"seq must be None or an integer >= 0, got {x!r:.40}")
    return x


def _reg_token(x: Any) -> int:
    """A caller's name for one registration of a transaction's snapshot (storage/txn.py)."""
    if type(x) is not int or not 0 < x < 1 << 63:
        raise InvalidArgument(f"a registration token must be an integer in 1 .. 2**63-1, got {x!r:.40}")
    return x


def _flag(x: Any, what: str) -> bool:
    if not isinstance(x, bool):
        raise InvalidArgument(f"{what} must be a bool, got {x!r:.40}")
    return x


def _txid(x: Any) -> bytes:
    if not isinstance(x, bytes) or not 2 < len(x) <= 64:
        raise InvalidArgument(f"txid must be 3 to 64 bytes, got {x!r:.40}")
    return x


class ShardActor(Actor):
    """One shard: ``ShardActor(shard_dir, config_dict, shard_id, publish_path)``."""

    # The engine's flush and compaction thread hands the GIL back to the
    # message loop every millisecond (its long steps go in chunks: keyruns.py).
    switch_interval = 0.001

    def __init__(self, shard_dir: str, config: dict[str, Any], shard_id: int,
                 publish_path: str | None = None) -> None:
        self.shard_dir = shard_dir
        self.publish_path = publish_path          # the published-version superblock (None: none)
        self.config = Config.from_dict(config)
        self.shard_id = shard_id
        self.engine: Engine | None = None
        self._deferring: Engine | None = None      # the engine whose syncs wait for before_replies
        self.engine_fs = OSFileSystem()
        self.restores = 0
        self.quarantined: list[str] = []
        # The damage a restore is for, until the rebuilt shard is open: a
        # restore that met a full disk or an I/O error is tried again by the
        # next message (which gets that error meanwhile), never left undone.
        self._unrestored: CorruptionError | None = None
        self.placement = {"huge_page_advice": 0, "numa_bound": 0}   # segments the kernel accepted
        self._aborted: OrderedDict[bytes, None] = OrderedDict()

    # --- hooks ---------------------------------------------------------------------------
    def on_start(self) -> None:
        restore.settle(self.engine_fs, self.shard_dir)      # an interrupted restore is finished first
        try:
            self.engine = self._open()
        except CorruptionError as exc:
            self._restore(exc)

    def on_stop(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.close()

    def on_receive(self, op: str, payload: Any) -> Any:
        handler = _HANDLERS.get(op)
        if handler is None:
            raise InvalidArgument(f"shard {self.shard_id} has no op {op!r}")
        try:
            return handler(self, payload)
        except CorruptionError as exc:
            # Critical: rebuild the shard, then answer the message from the
            # rebuilt one. An op that met corruption changed nothing (reads;
            # writes are refused before the WAL), so running it again is safe.
            self._restore(exc)
            return handler(self, payload)

    def stats(self) -> dict[str, Any]:
        return {"shard_id": self.shard_id, "restores": self.restores}

    # --- group commit: one fsync for a receive's writes ---------------------------------------
    def on_batch(self) -> None:
        self._deferring = self.engine
        if self.engine is not None:
            self.engine.defer_syncs()

    def pending(self) -> int:
        engine = self._deferring
        return engine.deferred_syncs() if engine is not None else 0

    def before_replies(self) -> BaseException | None:
        engine, self._deferring = self._deferring, None
        return engine.finish_syncs() if engine is not None else None

    # --- the critical path: quarantine + restore -------------------------------------------
    def _open(self) -> Engine:
        return Engine(self.shard_dir, self.config, restore_points=True, publish=self.publish_path,
                      on_segment=self._place_segment)

    # --- placement of memtable segments --------------------------------------------------------
    def _place_segment(self, mm: Any) -> None:
        """Transparent huge pages for the segment, and its pages bound to the
        NUMA node of this worker's CPU where there are several nodes. What the
        kernel granted shows in the actor's placement stats (``segments``)."""
        if advise_huge_pages(mm):
            self.placement["huge_page_advice"] += 1
        cpus = usable_cpus()
        if len(cpus) == 1 and len(numa_nodes()) > 1 and bind_to_node(mm, node_of(cpus[0])):
            self.placement["numa_bound"] += 1

    def segments(self) -> list[Any]:
        engine = self.engine
        if engine is None:
            return []
        sv = engine._sv
        return [m.mapping for m in (sv.mem, *sv.imm_mems)]

    def _restore(self, exc: CorruptionError) -> None:
        """Close the engine, quarantine the damaged file, rebuild the shard
        from its restore point plus every WAL since (storage/restore.py) and
        reopen it. Without a restore point the error stands."""
        log.critical("shard %d: %s; restoring from its restore point", self.shard_id, exc)
        self._unrestored = exc
        if self.engine is not None:
            engine, self.engine = self.engine, None
            try:
                engine.close()
            except LightningError:
                pass                     # its files are about to be replaced
        damaged = _damaged_file(exc, self.shard_dir)
        if damaged is not None and parse_name(os.path.basename(damaged))[0] == "wal":   # type: ignore[index]
            # The WAL is the only copy of the writes it holds past the
            # damage: a rebuild without them would lose acknowledged writes
            # silently. The shard stays down, the file where it is.
            raise CorruptionError(f"{exc}; a WAL is the only copy of the writes after the damage, so the "
                                  "shard is not rebuilt without them (the file is left in place)", damaged) from exc
        if damaged is not None:
            moved = quarantine(damaged, os.path.join(os.path.dirname(self.shard_dir), QUARANTINE_DIR), exc)
            self.quarantined.append(str(moved))
        try:
            restore.restore(self.engine_fs, self.shard_dir, self.config.num_levels)
        except CorruptionError as again:
            raise again from exc
        self.engine = self._open()
        self._unrestored = None
        self.restores += 1
        log.warning("shard %d restored (restore %d)", self.shard_id, self.restores)

    # --- validation ------------------------------------------------------------------------
    def _key(self, k: Any) -> bytes:
        if not isinstance(k, bytes) or not 0 < len(k) <= self.config.max_key_size:
            n = len(k) if isinstance(k, bytes) else type(k).__name__
            raise InvalidArgument(f"key must be 1 to {self.config.max_key_size} bytes (max_key_size), got {n}")
        return k

    def _ops(self, ops: Any) -> list[tuple[int, bytes, bytes]]:
        """The checked (kind, key, value) ops of a message, which carries
        them as a list of [kind, key, value] or as three columns [kinds
        (bytes, one per op), keys, values] (pipelined writes: no container per
        op on either side)."""
        if not isinstance(ops, (list, tuple)):
            raise InvalidArgument(f"ops must be a list, got {type(ops).__name__}")
        maxk, maxv = self.config.max_key_size, self.config.max_value_size
        if len(ops) == 3 and type(ops[0]) is bytes:
            kinds, keys, vals = ops
            n = len(kinds)
            if not (type(keys) in _SEQUENCES and type(vals) in _SEQUENCES and len(keys) == len(vals) == n):
                raise InvalidArgument("ops as columns are [kinds bytes, keys list, values list] of one length, "
                                      f"got {len(kinds)} kinds, {type(keys).__name__} keys, "
                                      f"{type(vals).__name__} values")
            if (n and kinds.count(_VALUE) == n and set(map(type, chain(keys, vals))) == _JUST_BYTES
                    and 0 < min(klens := list(map(len, keys))) and max(klens) <= maxk
                    and max(map(len, vals)) <= maxv):
                return list(zip(kinds, keys, vals))
            ops = list(zip(kinds, keys, vals))       # checked op by op below
        elif ops and set(map(type, ops)) <= _SEQUENCES and set(map(len, ops)) == _JUST_THREE:
            # The common case, checked in C: plain values, bytes within the limits.
            kinds, keys, vals = zip(*ops)
            if (set(map(type, kinds)) == _JUST_INT and set(kinds) == _JUST_VALUES
                    and set(map(type, chain(keys, vals))) == _JUST_BYTES
                    and 0 < min(klens := list(map(len, keys))) and max(klens) <= maxk
                    and max(map(len, vals)) <= maxv):
                return list(map(tuple, ops))
        out = []
        for o in ops:
            if not (isinstance(o, (list, tuple)) and len(o) == 3 and o[0] in _KINDS and type(o[0]) is int
                    and isinstance(o[1], bytes) and isinstance(o[2], bytes)):
                raise InvalidArgument(f"an op must be [kind 0|1, key bytes, value bytes], got {o!r:.80}")
            kind, k, v = o
            if not 0 < len(k) <= maxk:
                raise InvalidArgument(f"key must be 1 to {maxk} bytes (max_key_size), got {len(k)} bytes")
            if len(v) > maxv + (EXPIRY_BYTES if kind == _VALUE_TTL else 0):
                raise InvalidArgument(f"value must be at most {maxv} bytes (max_value_size), got {len(v)} bytes")
            if kind == _VALUE_TTL and len(v) < EXPIRY_BYTES:
                raise InvalidArgument(f"an expiring value starts with its {EXPIRY_BYTES}-byte expiry")
            if kind == _DELETE and v:
                raise InvalidArgument("a delete op carries an empty value")
            out.append((kind, k, v))
        return out

    def _engine(self) -> Engine:
        if self.engine is None:
            if self._unrestored is not None:
                self._restore(self._unrestored)      # the last try failed part way: again
                assert self.engine is not None
                return self.engine
            raise InvalidArgument(f"shard {self.shard_id} is not open")
        return self.engine

    # --- ops ----------------------------------------------------------------------------------
    def _write(self, p: Any) -> int:
        if isinstance(p, (list, tuple)) and len(p) in (3, 4):
            ops, sync, token, *after = p
            token = _token(token)
            if after and not (type(after[0]) is int and 1 <= after[0] < token[1]):
                raise InvalidArgument(f"a write's 'after' is an earlier write number of its writer, "
                                      f"got {after[0]!r:.40}")
            return self._engine().write(self._ops(ops), _flag(sync, "sync"), token=token,
                                        after=after[0] if after else None)
        ops, sync = _shape(p, 2, "write")
        return self._engine().write(self._ops(ops), _flag(sync, "sync"))

    def _get(self, p: Any) -> bytes | None:
        key, seq = _shape(p, 2, "get")
        return self._engine().get(self._key(key), _seq(seq))

    def _get_entry(self, p: Any) -> list[Any] | None:
        key, seq = _shape(p, 2, "get_entry")
        e = self._engine().get_entry(self._key(key), _seq(seq))
        return None if e is None else [e[0], e[1]]

    def _get_many(self, p: Any) -> list[bytes | None]:
        keys, seq = _shape(p, 2, "get_many")
        if not isinstance(keys, (list, tuple)):
            raise InvalidArgument(f"keys must be a list, got {type(keys).__name__}")
        return self._engine().get_many([self._key(k) for k in keys], _seq(seq))

    def _scan(self, p: Any) -> list[list[bytes]]:
        start, end, reverse, seq, page, after = _shape(p, 6, "scan")
        start = _bytes(start, "start", True)
        end = _bytes(end, "end", True)
        after = _bytes(after, "after", True)
        reverse = _flag(reverse, "reverse")
        seq = _seq(seq)
        if not isinstance(page, int) or isinstance(page, bool) or not 1 <= page <= MAX_PAGE:
            raise InvalidArgument(f"page must be an integer 1..{MAX_PAGE}, got {page!r:.40}")
        if after is not None:
            if reverse:
                end = after if end is None or after < end else end
            else:
                nxt = after + b"\x00"            # the smallest key greater than after
                start = nxt if start is None or nxt > start else start
        if start is not None and end is not None and start >= end:
            return []
        out = []
        for k, v in self._engine().scan(start, end, reverse, seq):
            out.append([k, v])
            if len(out) >= page:
                break
        return out

    def _snapshot(self, p: Any) -> Any:
        engine = self._engine()
        if p is None:
            return engine.acquire_snapshot()
        if not isinstance(p, (list, tuple)) or len(p) not in (1, 2):
            raise InvalidArgument(f"'snapshot' takes [tx] or [tx, token], got {p!r:.80}")
        tx = _flag(p[0], "tx")
        token = _reg_token(p[1]) if len(p) == 2 else None
        seq = engine.begin_tx(None, token) if tx else engine.acquire_snapshot()
        # What a cut must not straddle: prepared here, decided here as primary.
        return [seq, list(engine._prepared), list(engine._decided)]

    def _register(self, p: Any) -> None:
        if not isinstance(p, (list, tuple)) or len(p) not in (2, 3):
            raise InvalidArgument(f"'register' takes [seq, tx] or [seq, tx, token], got {p!r:.80}")
        seq = _seq(p[0])
        if seq is None:
            raise InvalidArgument("register needs a seq")
        if _flag(p[1], "tx"):
            self._engine().begin_tx(seq, _reg_token(p[2]) if len(p) == 3 else None)
        else:
            self._engine().acquire_snapshot_at(seq)

    def _release(self, p: Any) -> Any:
        if not isinstance(p, (list, tuple)) or len(p) not in (1, 2, 3):
            raise InvalidArgument(f"'release' takes [seq], [seq, tx] or [seq, tx, token], got {p!r:.80}")
        seq = _seq(p[0])
        if seq is None:
            raise InvalidArgument("release needs a seq")
        if len(p) >= 2 and _flag(p[1], "tx"):
            return self._engine().end_tx(seq, _reg_token(p[2]) if len(p) == 3 else None)
        self._engine().release_snapshot(seq)
        return None

    def _check(self, c: Any) -> tuple[TxCheck, int | None]:
        """A check, and the token of the registration it ends (None: none)."""
        if not isinstance(c, (list, tuple)) or len(c) not in (4, 5):
            raise InvalidArgument(f"a check takes [snapshot, reads, ranges, serializable(, token)], got {c!r:.80}")
        snap, reads, ranges, serializable = c[:4]
        if not isinstance(reads, (list, tuple)) or not isinstance(ranges, (list, tuple)):
            raise InvalidArgument(f"a check's reads and ranges must be lists, got {c!r:.80}")
        rs = []
        for r in ranges:
            lo, hi = _shape(r, 2, "range")
            rs.append((_bytes(lo, "range start", True), _bytes(hi, "range end", True)))
        check = TxCheck(_seq(snap), [self._key(k) for k in reads], rs, _flag(serializable, "serializable"))
        token = _reg_token(c[4]) if len(c) == 5 else None
        if token is not None and check.snapshot is None:
            raise InvalidArgument("a check that ends a registration needs its snapshot")
        return check, token

    def _end(self, check: TxCheck | None, token: int | None) -> None:
        """A check that carried its registration's token ends it, passed or
        not: the transaction reads nothing here any more."""
        if token is not None and check is not None and check.snapshot is not None:
            self._engine().end_tx(check.snapshot, token)

    def _txwrite(self, p: Any) -> int:
        ops, sync, c = _shape(p, 3, "txwrite")
        check, token = self._check(c)
        try:
            return self._engine().write(self._ops(ops), _flag(sync, "sync"), check)
        finally:
            self._end(check, token)

    def _prepare(self, p: Any, decide: bool = False) -> None:
        op = "decide" if decide else "prepare"
        if not isinstance(p, (list, tuple)) or len(p) not in (2, 3):
            raise InvalidArgument(f"'{op}' takes [txid, ops] or [txid, ops, check], got {p!r:.80}")
        txid = _txid(p[0])
        check, token = self._check(p[2]) if len(p) == 3 else (None, None)
        try:
            ops = self._ops(p[1])
            if txid in self._aborted:
                raise TransactionConflict(f"transaction {txid.hex()} was already aborted on shard {self.shard_id}")
            primary = int.from_bytes(txid[:2], "big") == self.shard_id
            if decide and (not primary or not ops):
                raise InvalidArgument(f"'decide' with ops goes to the transaction's primary with its part, "
                                      f"got {len(ops)} ops on shard {self.shard_id} for {txid.hex()}")
            # The primary needs no fsync here: its fsynced decision (later,
            # or in this same write) covers its prepare. Nor does a
            # participant that only validates reads: its PREPARE, written to
            # the OS, keeps its read intents through a kill of its worker
            # while the coordinator lives on; after a power loss every
            # coordinator is gone, and each caller's open settles their
            # transactions before it runs any of its own.
            self._engine().prepare(txid, ops, check, sync=bool(ops) and not primary, decide=decide)
        finally:
            self._end(check, token)

    def _commit(self, p: Any) -> int:
        txid, sync, remember = _shape(p, 3, "commit")
        return self._engine().commit_prepared(_txid(txid), _flag(sync, "sync"), _flag(remember, "remember"))

    def _decide(self, p: Any) -> None:
        if isinstance(p, (list, tuple)) and len(p) > 1:     # prepare and decide in one step
            return self._prepare(p, decide=True)
        (txid,) = _shape(p, 1, "decide")
        self._engine().decide(_txid(txid))

    def _abort(self, p: Any) -> bool:
        (txid,) = _shape(p, 1, "abort")
        txid = _txid(txid)
        engine = self._engine()
        done = engine.abort_prepared(txid)
        if not done and not engine.decided(txid):
            self._aborted[txid] = None
            if len(self._aborted) > _ABORTED_MEMORY:
                self._aborted.popitem(last=False)
        return done

    def _in_doubt(self, p: Any) -> list[list[Any]]:
        return [[t, [list(o) for o in ops]] for t, ops in self._engine().in_doubt().items()]

    def _decided(self, p: Any) -> bool:
        (txid,) = _shape(p, 1, "decided")
        return self._engine().decided(_txid(txid))

    def _decisions(self, p: Any) -> list[bytes]:
        return self._engine().decisions()

    def _forget(self, p: Any) -> None:
        if not isinstance(p, (list, tuple)) or not p:
            raise InvalidArgument(f"'forget' takes a list of one or more txids, got {p!r:.80}")
        self._engine().forget(*map(_txid, p))

    def _sync(self, p: Any) -> None:
        self._engine().sync_wal()

    def _flush(self, p: Any) -> None:
        self._engine().flush()

    def _compact(self, p: Any) -> None:
        self._engine().compact()

    def _checkpoint(self, p: Any) -> dict[str, Any]:
        (target,) = _shape(p, 1, "checkpoint")
        if not isinstance(target, str) or not target:
            raise InvalidArgument(f"checkpoint dir must be a non-empty str, got {target!r:.80}")
        return self._engine().checkpoint(target)

    def _stats(self, p: Any) -> dict[str, Any]:
        s = self._engine().stats()
        s.update(shard_id=self.shard_id, restores=self.restores, quarantined=list(self.quarantined),
                 segment_placement=dict(self.placement))
        return s

    def _verify(self, p: Any) -> dict[str, int]:
        return self._engine().verify()


_HANDLERS = {
    "write": ShardActor._write, "get": ShardActor._get, "get_many": ShardActor._get_many,
    "get_entry": ShardActor._get_entry,
    "scan": ShardActor._scan, "snapshot": ShardActor._snapshot, "release": ShardActor._release,
    "register": ShardActor._register,
    "txwrite": ShardActor._txwrite, "prepare": ShardActor._prepare, "commit": ShardActor._commit, "decide": ShardActor._decide,
    "abort": ShardActor._abort,
    "in_doubt": ShardActor._in_doubt, "decided": ShardActor._decided, "forget": ShardActor._forget,
    "decisions": ShardActor._decisions,
    "sync": ShardActor._sync, "flush": ShardActor._flush, "compact": ShardActor._compact, "checkpoint": ShardActor._checkpoint,
    "stats": ShardActor._stats, "verify": ShardActor._verify,
}
