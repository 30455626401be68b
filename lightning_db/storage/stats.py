"""``Engine.stats()``: plain data about one shard, no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Engine


def engine_stats(engine: "Engine") -> dict[str, Any]:
    sv = engine._sv
    version = sv.version
    levels = []
    table_bytes = 0
    entries = 0
    tombstones = 0
    for n, files in enumerate(version.levels):
        size = sum(f.file_size for f in files)
        table_bytes += size
        entries += sum(f.entries for f in files)
        tombstones += sum(f.tombstones for f in files)
        levels.append({"level": n, "files": len(files), "bytes": size})
    mems = [sv.mem] + [m for m, _ in sv.imms]
    c = dict(engine._counters)
    user = c["user_bytes_written"]
    written = c["wal_bytes_written"] + c["flush_bytes_written"] + c["compaction_bytes_written"]
    mem_entries = sum(m.entries for m in mems)
    sources = len(mems) + len(version.levels[0]) + sum(1 for lvl in version.levels[1:] if lvl)
    return {
        "path": engine.path,
        "sequence": engine._last_seq,
        "keys_estimate": max(0, entries + mem_entries - 2 * tombstones),
        "table_bytes": table_bytes,
        "table_entries": entries,
        "tombstones": tombstones,
        "levels": levels,
        "memtable_bytes": sv.mem.arena_used,
        "memtable_entries": sv.mem.entries,
        "immutable_memtables": len(sv.imms),
        "wal_number": sv.wal.number,
        "wal_bytes": sv.wal.size,
        "wal_syncs": sv.wal.syncs + sum(w.syncs for _, w in sv.imms) + c["wal_syncs_closed"],
        "sync_policy": engine.config.sync,
        "snapshots": sum(engine._snapshots.values()),
        "prepared_transactions": len(engine._prepared),
        "write_token_writers": len(engine.tokens),           # writers whose retries are recognised (dedupe.py)
        "duplicate_writes": engine.tokens.duplicates,       # retried writes answered without applying them again
        **engine.txn.stats(),
        "flushes": c["flushes"],
        "compactions": c["compactions"],
        "records_expired": c["records_expired"],          # expiring values turned into tombstones (ttl.py)
        "records_swept": c["records_swept"],              # expired values deleted by the sweep
        "trivial_moves": c["trivial_moves"],
        "write_stalls": c["write_stalls"],
        "background_disk_full": c["background_disk_full"],   # flushes/compactions that met a full disk (retried)
        "restore_points": c["restore_points"],            # taken since open (storage/restore.py)
        "restore_point_errors": c["restore_point_errors"],
        "bytes_written_user": user,
        "bytes_written_wal": c["wal_bytes_written"],
        "bytes_written_flush": c["flush_bytes_written"],
        "bytes_written_compaction": c["compaction_bytes_written"],
        "bytes_read_compaction": c["compaction_bytes_read"],
        "write_amplification": round(written / user, 3) if user else 0.0,
        "space_amplification": round(table_bytes / max(1, table_bytes - _dead_bytes(version)), 3),
        "read_amplification": sources,
        "block_cache": engine.cache.stats(),
        "write_error": repr(engine._write_error) if engine._write_error else None,
        "background_error": repr(engine._bg_error) if engine._bg_error else None,
    }


def _dead_bytes(version: Any) -> int:
    """Rough bytes held by tombstones and shadowed versions: the share of
    entries that are tombstones, applied to each file's size."""
    dead = 0.0
    for f in version.files():
        if f.entries:
            dead += f.file_size * min(1.0, 2 * f.tombstones / f.entries)
    return int(dead)
