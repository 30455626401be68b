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
        "write_amplification": _ratio(written, user),
        "space_amplification": round(table_bytes / max(1, table_bytes - _dead_bytes(version)), 3),
        "read_amplification": sources,
        "block_cache": engine.cache.stats(),
        "write_error": repr(engine._write_error) if engine._write_error else None,
        "background_error": repr(engine._bg_error) if engine._bg_error else None,
    }


_NOT_SUMMED = {"shard_id", "sequence", "wal_number", "read_amplification"}


def shard_totals(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The totals of several shards' ``engine_stats`` (each answered one):
    integer fields summed, levels and the block cache's counters summed
    level by level and field by field, amplifications worked out again
    from the sums (read amplification: the largest, as a point read
    searches one shard), the sync policy and cache policy as they are."""
    if not shards:
        return {}
    first = shards[0]
    out: dict[str, Any] = {}
    for name in first:
        vals = [s.get(name) for s in shards]
        if name not in _NOT_SUMMED and all(type(v) is int for v in vals):
            out[name] = sum(vals)
    if all("levels" in s for s in shards):
        depth = max(len(s["levels"]) for s in shards)
        out["levels"] = [{"level": n,
                          "files": sum(s["levels"][n]["files"] for s in shards if n < len(s["levels"])),
                          "bytes": sum(s["levels"][n]["bytes"] for s in shards if n < len(s["levels"]))}
                         for n in range(depth)]
    caches = [s.get("block_cache") for s in shards]
    if all(isinstance(c, dict) for c in caches):
        cache: dict[str, Any] = {k: v for k, v in caches[0].items() if type(v) is not int}
        for k, v in caches[0].items():
            if type(v) is int:
                cache[k] = sum(int(c.get(k, 0)) for c in caches)
        out["block_cache"] = cache
    if "bytes_written_user" in out:
        written = sum(out.get(k, 0) for k in ("bytes_written_wal", "bytes_written_flush", "bytes_written_compaction"))
        out["write_amplification"] = _ratio(written, out["bytes_written_user"])
    if all("space_amplification" in s and "table_bytes" in s for s in shards):
        live = sum(s["table_bytes"] / s["space_amplification"] for s in shards if s["space_amplification"])
        out["space_amplification"] = round(out.get("table_bytes", 0) / max(1.0, live), 3)
    if all("read_amplification" in s for s in shards):
        out["read_amplification"] = max(s["read_amplification"] for s in shards)
    if "sync_policy" in first:
        out["sync_policy"] = first["sync_policy"]
    return out


def _ratio(written: int, user: int) -> float:
    return round(written / user, 3) if user else 0.0


def _dead_bytes(version: Any) -> int:
    """Rough bytes held by tombstones and shadowed versions: the share of
    entries that are tombstones, applied to each file's size."""
    dead = 0.0
    for f in version.files():
        if f.entries:
            dead += f.file_size * min(1.0, 2 * f.tombstones / f.entries)
    return int(dead)
