"""Leveled compaction: choosing the work and merging tables.

Runs in the shard process on the engine's background thread. Picking reads
the current Version under the state mutex; merging runs without it (the
inputs are immutable files) and produces a VersionEdit that the engine logs.

Rules (LevelDB's, see doc/impl.md):
- L0 files overlap; when there are ``l0_compaction_trigger`` of them, all of
  them and the overlapping L1 files are merged into L1.
- Level n >= 1 is compacted when its size exceeds its budget
  (``max_bytes_for_level_base * multiplier**(n-1)``): the next file after the
  level's compact pointer plus the overlapping files of level n+1.
- A single input file with nothing overlapping below is moved, not rewritten.
- Of the versions of one key, those hidden from every live snapshot are
  dropped; a tombstone is dropped only when it is hidden from every snapshot
  and no deeper level can hold the key (the bottom level for that key).
- Output files are cut at ``target_file_size``, never between two versions
  of one key, so levels >= 1 stay disjoint.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from itertools import repeat
from operator import and_
from typing import Any, Callable, Iterable, Iterator

from ..config import Config
from .format import Kind
from .merge_bulk import bulk_merge, plain_inputs
from .outputs import TableOutputs
from .ttl import expired, now_ms
from .version import FileMeta, Version, VersionEdit

_DELETE = int(Kind.DELETE)
VALUE_TTL = int(Kind.VALUE_TTL)


@dataclass
class Compaction:
    level: int                                  # inputs come from level and level+1
    inputs: list[FileMeta]
    lower: list[FileMeta]
    reason: str
    grandparent_levels: list[list[FileMeta]] = field(default_factory=list)
    allow_move: bool = True

    @property
    def output_level(self) -> int:
        return self.level + 1

    def is_trivial_move(self) -> bool:
        return self.allow_move and len(self.inputs) == 1 and not self.lower

    def input_bytes(self) -> int:
        return sum(f.file_size for f in self.inputs) + sum(f.file_size for f in self.lower)


def level_budget(config: Config, level: int) -> int:
    return config.max_bytes_for_level_base * config.level_size_multiplier ** (level - 1)


def compaction_scores(version: Version, config: Config) -> list[float]:
    scores = [len(version.levels[0]) / config.l0_compaction_trigger]
    for lvl in range(1, config.num_levels - 1):
        scores.append(version.level_bytes(lvl) / level_budget(config, lvl))
    return scores


def _key_range(files: Iterable[FileMeta]) -> tuple[bytes, bytes]:
    files = list(files)
    return min(f.smallest for f in files), max(f.largest for f in files)


def plan(version: Version, config: Config, level: int, inputs: list[FileMeta], reason: str) -> Compaction:
    lo, hi = _key_range(inputs)
    lower = version.overlapping(level + 1, lo, hi) if level + 1 < config.num_levels else []
    return Compaction(level, inputs, lower, reason,
                      [list(version.levels[n]) for n in range(level + 2, config.num_levels)])


def l0_inputs(l0: tuple[FileMeta, ...]) -> list[FileMeta]:
    """The oldest L0 file and every L0 file overlapping it, transitively.
    What stays in L0 overlaps none of them, so moving them below all newer
    L0 files keeps newer-wins; non-overlapping files (sequential loads) go
    down one at a time and can be moved instead of rewritten."""
    chosen = [l0[-1]]                      # newest first: the last is the oldest
    lo, hi = chosen[0].smallest, chosen[0].largest
    rest = list(l0[:-1])
    grew = True
    while grew:
        grew = False
        for f in list(rest):
            if f.smallest <= hi and f.largest >= lo:
                chosen.append(f)
                rest.remove(f)
                lo, hi = min(lo, f.smallest), max(hi, f.largest)
                grew = True
    return chosen


def pick(version: Version, config: Config, pointers: dict[int, bytes]) -> Compaction | None:
    """The most urgent compaction, or None when every score is below 1."""
    scores = compaction_scores(version, config)
    best = max(range(len(scores)), key=scores.__getitem__)
    if scores[best] < 1.0:
        return None
    if best == 0:
        return plan(version, config, 0, l0_inputs(version.levels[0]), "l0-files")
    files = version.levels[best]
    ptr = pointers.get(best)
    chosen = files[0]
    if ptr is not None:
        for f in files:
            if f.largest > ptr:
                chosen = f
                break
    return plan(version, config, best, [chosen], "level-size")


def pick_manual(version: Version, config: Config, level: int) -> Compaction | None:
    """All files of *level* into level+1 (used by a full ``compact()``)."""
    files = list(version.levels[level])
    if not files or level + 1 >= config.num_levels:
        return None
    c = plan(version, config, level, files, "manual")
    # A full compaction must leave one version per key and no tombstone, so a
    # file holding either is rewritten rather than moved.
    c.allow_move = all(f.tombstones == 0 and f.reader is not None
                       and f.reader.props.get("distinct_keys") == f.entries for f in files)
    return c


def _negated(it: Iterator[tuple[bytes, int, bytes]]) -> Iterator[tuple[bytes, int, bytes]]:
    # Internal order is (key asc, seq desc); negating seqkind makes plain tuple
    # order match it, so heapq.merge compares in C without a key function.
    for k, sk, v in it:
        yield k, -sk, v


def merge_internal(sources: list[Iterator[tuple[bytes, int, bytes]]]) -> Iterator[tuple[bytes, int, bytes]]:
    """Merge internal-order record streams; yields (key, -seqkind, value)."""
    if len(sources) == 1:
        return _negated(sources[0])
    return heapq.merge(*[_negated(s) for s in sources])


class _BaseLevelCheck:
    """Is no deeper level able to hold this key? Keys arrive ascending, so each
    level keeps a pointer that only moves forward (LevelDB's level_ptrs)."""

    def __init__(self, levels: list[list[FileMeta]]) -> None:
        self.levels = [lvl for lvl in levels if lvl]
        self.ptrs = [0] * len(self.levels)

    def __call__(self, key: bytes) -> bool:
        for i, files in enumerate(self.levels):
            p = self.ptrs[i]
            while p < len(files) and files[p].largest < key:
                p += 1
            self.ptrs[i] = p
            if p < len(files) and files[p].smallest <= key:
                return False
        return True


def write_tables(fs, dirname: str, config: Config, records: Iterator[tuple[bytes, int, bytes]],
                 smallest_snapshot: int, is_base: Callable[[bytes], bool] | None,
                 new_number: Callable[[], int], cut: bool) -> tuple[list[FileMeta], dict[str, int]]:
    """Drop what no snapshot can see, write the rest into tables.

    *records* yields (key, -seqkind, value) in internal order. *is_base* None
    means tombstones must be kept (flush to L0). With *cut* the output is
    split at target_file_size between user keys.
    """
    now = now_ms()
    current: bytes | None = None
    last_seq_for_key = 0
    target = config.target_file_size
    MAXSEQ = 1 << 62
    with TableOutputs(fs, dirname, config, new_number) as out:   # a failure: no table stays
        counts = out.counts
        for key, nsk, value in records:
            counts["read"] += 1
            sk = -nsk
            seq = sk >> 8
            if key != current:
                if cut and out.open is not None and out.open.estimated_size >= target:
                    out.cut()
                current = key
                last_seq_for_key = MAXSEQ
            if last_seq_for_key <= smallest_snapshot:
                counts["dropped"] += 1            # shadowed by a newer version every snapshot sees
                last_seq_for_key = seq
                continue
            last_seq_for_key = seq
            if (sk & 0xFF) == VALUE_TTL:
                if expired(value, now):
                    sk, value = (sk & ~0xFF) | _DELETE, b""   # expired: a tombstone from now on (ttl.py)
                    counts["expired"] += 1
                else:
                    counts["expiring"] += 1
            if (sk & 0xFF) == _DELETE and seq <= smallest_snapshot and is_base is not None and is_base(key):
                counts["dropped"] += 1            # tombstone at the bottom for this key
                continue
            out.writer().add(key, sk, value)
            counts["written"] += 1
        return out.close()


def write_flush(fs, dirname: str, config: Config, mem: Any, smallest_snapshot: int,
                new_number: Callable[[], int]) -> tuple[list[FileMeta], dict[str, int]]:
    """``write_tables`` for a flush of memtable *mem* to L0. A memtable with
    one version per key and no expiring value (the common case) has nothing
    to drop or expire: its records go into one table in bulk
    (``TableWriter.add_many``); so does one whose every record is at or
    below *smallest_snapshot*, as its keys' newest versions (every older one
    is shadowed for every snapshot: ``write_tables`` would drop it). Any
    other goes record by record."""
    lists = mem.newest_lists(newest_only=mem.last_seq <= smallest_snapshot)
    if lists is None or VALUE_TTL in set(map(and_, lists[1], repeat(0xFF))):
        return write_tables(fs, dirname, config, merge_internal([mem.iter_internal()]), smallest_snapshot,
                            None, new_number, cut=False)
    keys, sks, vals, klen, vlen = lists
    with TableOutputs(fs, dirname, config, new_number) as out:
        out.counts.update(read=mem.entries, dropped=mem.entries - len(keys), written=len(keys))
        if keys:
            out.writer().add_many(keys, sks, vals, klen, vlen)
        return out.close()


def run(fs, dirname: str, config: Config, c: Compaction, smallest_snapshot: int,
        new_number: Callable[[], int]) -> tuple[VersionEdit, list[FileMeta], dict[str, int]]:
    """Execute compaction *c*; return the edit (not yet logged), the new files
    (readers not yet opened) and counters. Outputs already written are
    abandoned by the caller's cleanup of orphans if the edit is never logged."""
    edit = VersionEdit()
    out = c.output_level
    for f in c.inputs:
        edit.deleted.append((c.level, f.number))
    if c.is_trivial_move():
        f = c.inputs[0]
        moved = FileMeta(f.number, f.file_size, f.smallest, f.largest, f.min_seq, f.max_seq,
                         f.entries, f.tombstones, f.reader)
        edit.added.append((out, moved))
        return edit, [], {"read": 0, "dropped": 0, "written": 0, "bytes_written": 0, "moved": 1}
    for f in c.lower:
        edit.deleted.append((out, f.number))
    readers = plain_inputs([f.reader for f in c.inputs] + [f.reader for f in c.lower], smallest_snapshot)
    if readers is not None:             # each key's newest record only: merged a chunk at a time
        outputs, counts = bulk_merge(readers, _BaseLevelCheck(c.grandparent_levels),
                                     TableOutputs(fs, dirname, config, new_number))
    else:
        sources = [f.reader.iter_internal() for f in c.inputs] + [f.reader.iter_internal() for f in c.lower]
        outputs, counts = write_tables(fs, dirname, config, merge_internal(sources), smallest_snapshot,
                                       _BaseLevelCheck(c.grandparent_levels), new_number, cut=True)
    for f in outputs:
        edit.added.append((out, f))
    if c.level > 0 and c.inputs:
        edit.compact_pointers.append((c.level, max(f.largest for f in c.inputs)))
    return edit, outputs, counts
