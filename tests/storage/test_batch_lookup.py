"""Batch point lookups (storage/batch.py): ``lookup_many`` answers exactly
what ``lookup`` answers key by key, over memtable segments, L0 and deeper
levels, tombstones, overwrites and snapshots; ``PublishedReader.get_many``
uses it."""

from __future__ import annotations

import itertools
import os
import random
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_db.config import Config
from lightning_db.errors import CorruptionError
from lightning_db.storage import batch
from lightning_db.storage.batch import lookup_many, values_many
from lightning_db.storage.engine import Engine
from lightning_db.storage.format import Kind, pack_seqkind
from lightning_db.storage.fs import OSFileSystem
from lightning_db.storage.lookup import lookup
from lightning_db.storage.memtable import Memtable
from lightning_db.storage.segment_reader import SegmentReader
from lightning_db.storage.published import PublishedReader
from lightning_db.storage.table import TableReader, TableWriter
from lightning_db.storage.version import FileMeta, Version

FS = OSFileSystem()
V, D = int(Kind.VALUE), int(Kind.DELETE)

# Keys that differ only by trailing NUL bytes or are prefixes of each other
# (numpy's fixed-width strings pad with NULs), and ordinary ones.
TRICKY = sorted({bytes(t) for n in range(1, 4) for t in itertools.product(b"\x00ab", repeat=n)})
PLAIN = [b"k%05d" % i for i in range(0, 3000, 3)]
UNIVERSE = sorted(set(TRICKY + PLAIN))
MISSING = [b"k%05d" % i for i in range(1, 3000, 97)] + [b"", b"\x00" * 5, b"zzz", b"k", b"a\x00\x00\x00"]


class World:
    """A hand-built read state: memtable segments (newest first), L0 files
    (newest first, overlapping) and two deeper levels (disjoint files),
    with a model of every record. Older sources hold lower seqs."""

    def __init__(self, root: str, seed: int, keys: list[bytes] = UNIVERSE, versions: int = 3) -> None:
        rng = random.Random(seed)
        self.root, self.seq, self.n = root, 0, 0
        self.closers: list = []
        # Oldest first: L2, L1, L0 (3 files), then 3 memtables.
        l2 = self._level(rng, rng.sample(keys, len(keys) * 2 // 3), 4, versions, point=True)
        l1 = self._level(rng, rng.sample(keys, len(keys) // 3), 3, versions, point=False)
        l0 = [self._table(rng, rng.sample(keys, len(keys) // 6), versions, point=bool(i % 2))
              for i in range(3)][::-1]
        self.version = Version([l0, l1, l2, []])
        self.mems, self.writers = [], []
        for i in range(3):
            m = Memtable(FS, os.path.join(root, "%06d.seg" % (100 + i)), 100 + i, 256 * 1024)
            recs = self._records(rng, rng.sample(keys, len(keys) // 8), versions)
            for k, sk, v in sorted(recs, key=lambda r: r[1]):
                m.add(sk >> 8, sk & 0xFF, k, v)
            if i < 2:
                m.freeze()
            self.writers.insert(0, m)
            self.mems.insert(0, SegmentReader(m.path))
        self.closers += self.mems + self.writers

    def _records(self, rng: random.Random, keys: list[bytes], versions: int) -> list:
        out = []
        for k in sorted(keys):
            for _ in range(rng.randint(1, versions)):
                self.seq += 1
                kind = D if rng.random() < 0.15 else V
                out.append((k, pack_seqkind(self.seq, kind),
                            b"" if kind == D else b"v%d-" % self.seq + bytes(rng.randrange(256) for _ in range(rng.randrange(300)))))
        out.sort(key=lambda r: (r[0], -r[1]))
        return out

    def _table(self, rng: random.Random, keys: list[bytes], versions: int, point: bool,
               recs: list | None = None) -> FileMeta:
        recs = self._records(rng, keys, versions) if recs is None else recs
        self.n += 1
        path = os.path.join(self.root, "%06d.ldb" % self.n)
        cfg = Config(block_size=512, point_index=point, bloom_bits_per_key=rng.choice([0, 10]))
        w = TableWriter(FS, path, cfg)
        for r in recs:
            w.add(*r)
        meta = w.finish()
        reader = TableReader.open(FS, path, self.n, None)
        self.closers.append(reader)
        return FileMeta(self.n, meta.file_size, meta.smallest, meta.largest, meta.min_seq, meta.max_seq,
                        meta.entries, meta.tombstones, reader)

    def _level(self, rng: random.Random, keys: list[bytes], nfiles: int, versions: int, point: bool) -> list:
        keys = sorted(keys)
        cuts = sorted(rng.sample(range(1, len(keys)), nfiles - 1))
        return [self._table(rng, keys[a:b], versions, point) for a, b in zip([0, *cuts], [*cuts, len(keys)])]

    def close(self) -> None:
        for c in self.closers:
            c.close()


@pytest.fixture(autouse=True)
def batch_path_for_small_batches(monkeypatch):
    """Batches below MIN_BATCH take the per-key path; here they take the
    batch path too, so that small batches test it."""
    monkeypatch.setattr(batch, "MIN_BATCH", 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(str(tmp_path_factory.mktemp("world")), 7)
    yield w
    w.close()


def _check(mems, version, keys, seq) -> None:
    want = [lookup(mems, version, k, seq) for k in keys]
    assert lookup_many(mems, version, keys, seq) == want
    assert values_many(mems, version, keys, seq) == [None if r is None or r[0] == D else r[1] for r in want]


def test_world_has_every_source(world):
    v = world.version
    assert len(v.levels[0]) == 3 and [len(f) for f, _ in v.deep] == [3, 4]
    assert any(m.is_immutable for m in world.mems) and not all(m.is_immutable for m in world.mems)
    assert any(f.reader._pa is not None for f in v.files()) and any(f.reader._pa is None for f in v.files())
    # Answers come from every kind of source at the latest sequence number.
    hits = lookup_many(world.mems, v, UNIVERSE, world.seq)
    assert sum(r is not None and r[0] == D for r in hits) > 10
    found = {id(r) for r in hits if r is not None}
    assert len(found) > len(UNIVERSE) // 2


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_match_per_key_lookup(world, seed):
    rng = random.Random(seed)
    pool = UNIVERSE + MISSING
    for size in (8, 9, 40, 300, len(pool)):
        keys = [rng.choice(pool) for _ in range(size)]           # duplicates too
        for seq in (world.seq, rng.randrange(world.seq + 1), 0, rng.randrange(world.seq // 2)):
            _check(world.mems, world.version, keys, seq)


def test_every_key_at_every_tenth_sequence_number(world):
    keys = UNIVERSE + MISSING
    for seq in range(0, world.seq + 1, max(1, world.seq // 10)):
        _check(world.mems, world.version, keys, seq)


def test_engine_memtables_without_get_many(world):
    """The engine's own memtables (dict index, no batch method) are asked key by key."""
    rng = random.Random(3)
    keys = [rng.choice(UNIVERSE + MISSING) for _ in range(200)]
    for seq in (world.seq, world.seq // 2):
        _check(world.writers, world.version, keys, seq)


def test_small_batches_and_the_batch_path_agree(world, monkeypatch):
    keys = [b"a", b"a\x00", b"zzz", PLAIN[5], PLAIN[5]]
    for n in range(6):
        _check(world.mems, world.version, keys[:n], world.seq)
    monkeypatch.setattr(batch, "MIN_BATCH", 128)                # the per-key path below it
    _check(world.mems, world.version, keys, world.seq)
    _check(world.mems, world.version, [], world.seq)


@pytest.mark.parametrize("width", [1, 2, 3, 6])
def test_batches_of_one_key_length(world, width):
    """Keys all of one length take the joined-bytes array: NUL-ended and
    all-NUL keys included, with and without the lengths passed in."""
    rng = random.Random(width)
    pool = [k for k in UNIVERSE + MISSING if len(k) == width] + [b"\x00" * width, b"\xff" * width]
    for size in (130, 400):
        keys = [rng.choice(pool) for _ in range(size)]
        for seq in (world.seq, world.seq // 2):
            _check(world.mems, world.version, keys, seq)
            want = values_many(world.mems, world.version, keys, seq)
            lens = np.full(len(keys), width, dtype=np.int64)
            assert values_many(world.mems, world.version, keys, seq, None, lens) == want


def test_wide_keys_are_routed_with_bisect(world, monkeypatch):
    monkeypatch.setattr(batch, "MAX_WIDTH", 2)                   # most batches count as wide now
    rng = random.Random(11)
    for _ in range(5):
        keys = [rng.choice(UNIVERSE + MISSING) for _ in range(120)]
        _check(world.mems, world.version, keys, rng.choice([world.seq, world.seq // 3]))


def test_level_boundaries_that_differ_by_trailing_nuls(tmp_path):
    """A deeper level whose files end at b"a" and b"a\\0": the key b"a\\0"
    lives in the second file though numpy strings call it equal to b"a"."""
    w = World(str(tmp_path), 1, keys=PLAIN[:40], versions=1)
    try:
        seq = w.seq
        recs = [[(b"a", pack_seqkind(seq + 1, V), b"one")], [(b"a\x00", pack_seqkind(seq + 2, V), b"two"),
                                                           (b"a\x00\x00", pack_seqkind(seq + 3, V), b"three")],
                [(b"b", pack_seqkind(seq + 4, V), b"four")]]
        files = [w._table(random.Random(0), [], 1, point, r) for r, point in zip(recs, (True, False, True))]
        version = Version([[], files])
        keys = [b"a", b"a\x00", b"a\x00\x00", b"a\x00\x00\x00", b"\x00", b"b", b"b\x00", b"a"] * 2
        got = lookup_many([], version, keys, seq + 10)
        assert [r and r[1] for r in got] == [b"one", b"two", b"three", None, None, b"four", None, b"one"] * 2
        _check([], version, keys, seq + 10)
        _check([], Version([files[::-1], []]), keys, seq + 10)   # as overlapping L0 files
    finally:
        w.close()


def test_a_damaged_record_raises_like_get(tmp_path):
    w = World(str(tmp_path), 2, keys=PLAIN, versions=1)
    try:
        f = next(f for f, _ in [(f, 0) for f in w.version.levels[2]] if f.reader._pa is not None)
        key = next(k for k in PLAIN if f.smallest <= k <= f.largest
                   and lookup([], Version([[], [f]]), k, w.seq) is not None)
        r = lookup([], Version([[], [f]]), key, w.seq)
        path = os.path.join(str(tmp_path), "copy.ldb")
        shutil.copyfile(f.reader.path, path)
        with open(path, "r+b") as fh:
            data = fh.read()
            at = data.index(r[1])                        # the value's bytes in the data block
            fh.seek(at)
            fh.write(bytes([data[at] ^ 0xFF]))
        bad = TableReader.open(FS, path, 999, None)
        try:
            meta = FileMeta(999, f.file_size, f.smallest, f.largest, f.min_seq, f.max_seq, f.entries,
                            f.tombstones, bad)
            version = Version([[], [meta]])
            with pytest.raises(CorruptionError):
                lookup([], version, key, w.seq)
            for n in (10, 40):                          # probed in Python, in numpy
                with pytest.raises(CorruptionError):
                    lookup_many([], version, [key] * n, w.seq)
        finally:
            bad.close()
    finally:
        w.close()


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_property_random_worlds(tmp_path_factory, seed, data):
    keys = data.draw(st.lists(st.binary(min_size=1, max_size=6), min_size=12, max_size=80, unique=True))
    w = World(str(tmp_path_factory.mktemp("w")), seed, keys=keys, versions=3)
    try:
        pool = keys + data.draw(st.lists(st.binary(max_size=7), max_size=10))
        batch_keys = data.draw(st.lists(st.sampled_from(pool), min_size=8, max_size=60))
        seq = data.draw(st.integers(0, w.seq + 1))
        _check(w.mems, w.version, batch_keys, seq)
    finally:
        w.close()


# --- through the engine and its published version ---------------------------------------

def test_published_get_many_matches_get(tmp_path):
    # L0 is never compacted on its own here (the last two rounds flush about
    # six files): the explicit compaction makes the deeper levels, and L0
    # still holds files when the reads start, however the background runs.
    cfg = Config(memtable_size=64 * 1024, block_size=1024, target_file_size=16 * 1024,
                 l0_compaction_trigger=16, l0_stop_writes_trigger=32, max_bytes_for_level_base=64 * 1024)
    pub = str(tmp_path / "shard.pub")
    e = Engine(str(tmp_path / "s"), cfg, publish=pub)
    r = PublishedReader(pub)
    rng = random.Random(5)
    try:
        keys = [b"key%05d" % i for i in range(4000)]
        snaps = []
        for rnd in range(5):
            for i in rng.sample(range(4000), 1500):
                if rng.random() < 0.1:
                    e.write([(D, keys[i], b"")])
                else:
                    e.write([(V, keys[i], b"r%d-%d" % (rnd, i) + b"." * rng.randrange(80))])
            snaps.append(e.acquire_snapshot())
            if rnd == 2:
                e.flush()
                e.compact()
            elif rnd != 4:
                e.flush()
        assert len(e._sv.version.levels[0]) > 0 and e._sv.version.deep
        pool = keys + [b"key%05d." % i for i in range(0, 4000, 50)] + [b"a", b"zz"]
        for seq in [None, *snaps]:
            for size in (3, 50, 1000):
                batch_keys = [rng.choice(pool) for _ in range(size)]
                assert r.get_many(batch_keys, seq) == [r.get(k, seq) for k in batch_keys]
        cur, _ = r._view(None)
        assert any(m.entries for m in cur.mems)                   # the live memtable takes part
        sv = e._sv
        mems = [sv.mem, *sv.imm_mems]
        for seq in snaps:
            _check(mems, sv.version, [rng.choice(pool) for _ in range(300)], seq)
        for s in snaps:
            e.release_snapshot(s)
    finally:
        r.close()
        e.close()


def test_fingerprint_twins_in_the_point_index(tmp_path):
    """Two keys with the same point-index fingerprint and home slot: the
    batch probe stops at the other key's record, sees the key differ and
    asks the table key by key."""
    from lightning_db.storage.bloom import key_hash
    seen: dict[tuple[int, int], bytes] = {}
    for i in itertools.count():
        k = b"t%07d" % i
        h = key_hash(k)
        twin = seen.setdefault((h >> 41, h & 7), k)
        if twin != k:
            break
    a, b = sorted((twin, k))
    for present in ([a], [b], [a, b]):
        recs = [(x, pack_seqkind(n + 1, V), b"val-" + x) for n, x in enumerate(present)]
        w = TableWriter(FS, str(tmp_path / "t.ldb"), Config(bloom_bits_per_key=0))
        for rec in recs:
            w.add(*rec)
        meta = w.finish()
        reader = TableReader.open(FS, str(tmp_path / "t.ldb"), 1, None)
        try:
            assert reader._pmask == 7
            f = FileMeta(1, meta.file_size, meta.smallest, meta.largest, meta.min_seq, meta.max_seq,
                         meta.entries, meta.tombstones, reader)
            version = Version([[], [f]])
            for n in (5, 30):                           # probed in Python, in numpy
                keys = [a, b] * n
                got = lookup_many([], version, keys, 10)
                assert got == [lookup([], version, x, 10) for x in keys]
                assert [r is not None for r in got[:2]] == [a in present, b in present]
        finally:
            reader.close()


def test_long_keys(tmp_path):
    """Keys of 250 to 300 bytes: two-byte msgpack headers in the records,
    and batches too wide for numpy strings."""
    rng = random.Random(4)
    keys = sorted({bytes(rng.randrange(256) for _ in range(rng.randrange(250, 300))) for _ in range(150)})
    w = World(str(tmp_path), 3, keys=keys, versions=2)
    try:
        assert max(map(len, keys)) > batch.MAX_WIDTH
        for size in (8, 12, 100, 400):
            picks = [rng.choice(keys + [b"x" * 260]) for _ in range(size)]
            _check(w.mems, w.version, picks, w.seq)
            _check(w.mems, w.version, picks, rng.randrange(w.seq))
    finally:
        w.close()


def test_a_damaged_segment_reference_raises_like_get(tmp_path):
    m = Memtable(FS, str(tmp_path / "000001.seg"), 1, 64 * 1024)
    keys = [b"s%04d" % i for i in range(40)]
    m.add_batch(1, [(V, k, b"v") for k in keys])
    r = SegmentReader(m.path)
    try:
        si = m._index[keys[7]]
        for bad in (m._slots[si] + 3, m.capacity * 4 + 1):         # misaligned; beyond the arena
            m._slots[si] = bad
            with pytest.raises(CorruptionError):
                lookup([r], Version([[]]), keys[7], 100)
            with pytest.raises(CorruptionError):
                lookup_many([r], Version([[]]), keys, 100)
    finally:
        r.close()
        m.close()


def test_the_ring_hashes_keys_as_the_storage_does() -> None:
    # get_many hands the ring's hashes to the shards' batch lookups.
    from lightning_db.shards import ring
    from lightning_db.storage.bloom import key_hash
    keys = [b"a", b"key-1", bytes(range(40))]
    assert [ring._hash(k) for k in keys] == [key_hash(k) for k in keys]
    r = ring.HashRing(3)
    hashes, groups = r.split_hashed(keys + keys)
    assert hashes.tolist() == [key_hash(k) for k in keys + keys]
    assert sorted(i for pos in groups.values() for i in pos.tolist()) == list(range(6))
    assert {s: pos.tolist() for s, pos in groups.items()} == r.split(keys + keys)
    for s, pos in groups.items():
        assert all(r.shard_of((keys + keys)[i]) == s for i in pos.tolist())
