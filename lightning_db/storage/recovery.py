"""Opening a shard's directory: from what is on disk to a running engine.

Runs in the shard process, once, before any other thread of the engine.

Steps (each durable before the next may depend on it):
1. CURRENT -> manifest -> the last version. No CURRENT means a new database,
   unless tables or non-empty WALs are present (then CURRENT was lost).
2. Every table the version names must exist; its footer and index are checked.
3. WALs numbered >= the version's log number are replayed in order; a torn
   tail is cut off (never replayed); damage before the tail is corruption.
   Prepared transactions without a commit or abort record are in doubt, and
   decisions this shard keeps as a primary are not yet forgotten: both are
   written again into the new WAL and handed to the engine, and so are the
   write tokens of retried writes (dedupe.py).
4. The replayed records are written to L0 tables, a new WAL is created, and a
   new manifest holding the whole state is made durable and named by CURRENT.
5. Only then are the old manifest, the replayed WALs (archived instead while
   the shard keeps a restore point: storage/restore.py), stale memtable segments
   and orphan tables (outputs of an interrupted compaction) unlinked.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import CorruptionError
from . import compaction
from .format import CURRENT, parse_name, table_name, wal_name
from .dedupe import WriteTokens
from .memtable import Memtable
from .restore import archive_wal
from .version import FileMeta, VersionEdit
from .format import WalOp
from .wal import Intents, Wal, encode_marker, encode_prepare, read_wal

if TYPE_CHECKING:
    from .engine import Engine


def _flush_recovered(engine: "Engine", mem: Memtable, last_seq: int) -> list[FileMeta]:
    outputs, _ = compaction.write_tables(
        engine.fs, engine.path, engine.config, compaction.merge_internal([mem.iter_internal()]),
        last_seq, None, engine.versions.new_file_number, cut=False)
    mem.close()
    return outputs


def recover(engine: "Engine") -> tuple[Memtable, Wal, int, dict[bytes, list], dict[bytes, Intents], set[bytes],
                                       WriteTokens]:
    fs, path, vs = engine.fs, engine.path, engine.versions
    names = fs.listdir(path)
    parsed = {n: parse_name(n) for n in names}
    wals = sorted(p[1] for p in parsed.values() if p and p[0] == "wal")

    if CURRENT in names:
        vs.recover()
    else:
        if any(p and p[0] == "table" for p in parsed.values()):
            raise CorruptionError("CURRENT is missing but the directory holds table files", path)
        for num in wals:
            if read_wal(fs, os.path.join(path, wal_name(num))).records:
                raise CorruptionError("CURRENT is missing but a WAL holds records", path)
        wals = []     # a new database whose first open was interrupted: start over

    for f in vs.current.files():
        tpath = os.path.join(path, table_name(f.number))
        if not fs.exists(tpath):
            raise CorruptionError(f"table {table_name(f.number)} named by the manifest is missing", tpath)
        engine._open_reader(f)

    replay = [n for n in wals if n >= vs.log_number]
    if vs.log_number and vs.log_number not in replay:
        raise CorruptionError(f"WAL {wal_name(vs.log_number)} named by the manifest is missing", path)
    numbers = [p[1] for p in parsed.values() if p]
    vs.next_file = max([vs.next_file] + [n + 1 for n in numbers])

    last_seq = vs.last_seq
    prepared: dict[bytes, list] = {}       # txid -> ops: prepared, no decision seen
    intents: dict[bytes, Intents] = {}     # txid -> read intents of a prepared one that has them
    decided: set[bytes] = set()            # commits this shard keeps as the primary
    tokens = WriteTokens()                 # writes that may be sent again (dedupe.py)
    added: list[FileMeta] = []
    mem: Memtable | None = None
    for num in replay:
        wpath = os.path.join(path, wal_name(num))
        contents = read_wal(fs, wpath)
        if contents.good_size < contents.file_size:
            fs.truncate(wpath, contents.good_size)     # the torn tail is never replayed
        for rec in contents.records:
            if rec.op == WalOp.PREPARE:
                prepared[rec.txid] = rec.ops
                if rec.intents is not None:
                    intents[rec.txid] = rec.intents
                continue
            if rec.op == WalOp.ABORT:
                prepared.pop(rec.txid, None)
                intents.pop(rec.txid, None)
                continue
            if rec.op == WalOp.DECISION:
                decided.add(rec.txid)
                continue
            if rec.op == WalOp.FORGET:
                decided.discard(rec.txid)
                continue
            if rec.op == WalOp.TOKENS:
                try:
                    tokens.load(rec.txid)
                except (ValueError, TypeError) as exc:
                    raise CorruptionError(f"malformed write tokens record ({exc})", wpath) from exc
                continue
            if rec.token is not None:
                tokens.add(*rec.token)
            ops = rec.ops
            if rec.txid is not None:                   # the commit of a prepared transaction
                held = prepared.pop(rec.txid, None)
                intents.pop(rec.txid, None)
                if rec.op == WalOp.COMMIT:             # it names its PREPARE, earlier in this WAL
                    if held is None:
                        raise CorruptionError(f"commit of transaction {rec.txid!r} without its PREPARE", wpath)
                    ops = held                         # (else a self-contained commit: older WALs)
                if rec.remember:
                    decided.add(rec.txid)
            first_seq = rec.first_seq
            if not ops:
                continue
            nbytes = sum(len(op[1]) + len(op[2]) + 32 for op in ops)
            if mem is not None and not mem.fits(nbytes, len(ops)):
                added += _flush_recovered(engine, mem, max(last_seq, mem.last_seq))
                fs.remove(mem.path)
                mem = None
            if mem is None:
                mem = engine._new_memtable(vs.new_file_number(), nbytes, len(ops))
            mem.add_batch(first_seq, ops)
            last_seq = max(last_seq, first_seq + len(ops) - 1)
    if mem is not None:
        if mem.entries:
            added += _flush_recovered(engine, mem, last_seq)
        else:
            mem.close()
        fs.remove(mem.path)
    for f in added:
        engine._open_reader(f)

    number = vs.new_file_number()
    wal = Wal(fs, os.path.join(path, wal_name(number)), number)
    live = engine._new_memtable(number)
    try:
        # In-doubt transactions move into the new WAL before the manifest
        # switch lets the WALs that held their PREPARE records go.
        for txid, ops in prepared.items():
            wal.append(encode_prepare(txid, ops, intents.get(txid)))
        for txid in decided:
            wal.append(encode_marker(WalOp.DECISION, txid))
        if prepared or decided:
            wal.sync_to(wal.size)
        tokens.carry_into(wal)
        vs.current = vs._apply(VersionEdit(added=[(0, f) for f in added], log_number=number,
                                           last_seq=last_seq), vs.current, path)
        vs.write_new_manifest()     # syncs the directory: the new WAL's entry too
    except BaseException:
        wal.close(sync=False)
        live.close()
        raise

    keep_tables = {f.number for f in vs.current.files()}
    for name in fs.listdir(path):
        p = parse_name(name)
        if p is not None and p[0] == "wal" and p[1] < number:
            archive_wal(engine, p[1])      # kept when a restore point needs it, else unlinked
            continue
        stale = (
            (p is not None and p[0] == "segment" and p[1] != number)
            or (p is not None and p[0] == "table" and p[1] not in keep_tables)
            or (p is not None and p[0] == "manifest" and p[1] != vs.manifest_number)
            or (name.startswith("CURRENT.") and name.endswith(".tmp"))
        )
        if stale:
            try:
                fs.remove(os.path.join(path, name))
            except FileNotFoundError:
                pass
    return live, wal, last_seq, prepared, intents, decided, tokens
