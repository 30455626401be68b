"""SSTables: round trips, snapshots, scans, format layout, cache use, and
corruption (every byte of a small table flipped, one at a time)."""

from __future__ import annotations

import contextlib
import os
import random

import msgpack
import numpy as np
import pytest
import zstandard
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings, strategies as st

from lightning_db.config import Config
from lightning_db.errors import CorruptionError
from lightning_db.storage import batch, gil
from lightning_db.storage.batch import lookup_many
from lightning_db.storage.lookup import lookup
from lightning_db.storage.cache import LRUCache
from lightning_db.storage.format import (BLOCK_TRAILER, FORMAT_VERSION, TABLE_FOOTER, TABLE_MAGIC,
                                         Kind, mask_crc, pack_seqkind)
from lightning_db.storage.fs import OSFileSystem
from lightning_db.storage.table import PROPS_FIELDS, SCAN_FILL_BLOCKS, TableReader, TableWriter
from lightning_db.storage.version import FileMeta, Version

FS = OSFileSystem()
V, D = int(Kind.VALUE), int(Kind.DELETE)


def make_records(rng: random.Random, nkeys: int, max_versions: int = 4, vsize: int = 20):
    """Records in internal order: (key, seqkind, value)."""
    seqs = rng.sample(range(1, nkeys * max_versions * 4), nkeys * max_versions)
    out, si = [], 0
    for i in sorted(rng.sample(range(nkeys * 10), nkeys)):
        key = b"k%06d" % i
        n = rng.randint(1, max_versions)
        for seq in sorted(seqs[si:si + n], reverse=True):
            kind = D if rng.random() < 0.2 else V
            val = b"" if kind == D else bytes(rng.getrandbits(8) for _ in range(rng.randint(0, vsize)))
            out.append((key, pack_seqkind(seq, kind), val))
        si += n
    return out


def write_table(path, records, **cfg):
    w = TableWriter(FS, str(path), Config(**cfg))
    for r in records:
        w.add(*r)
    return w.finish()


def visible(records, snap, start=None, end=None):
    """Reference: newest version with seq <= snap of each key in [start, end)."""
    out, done = [], None
    for k, sk, v in records:
        if k == done or (start is not None and k < start) or (end is not None and k >= end):
            continue
        if sk >> 8 <= snap:
            out.append((k, sk & 0xFF, v))
            done = k
    return out


def check_all(reader, records, snaps):
    assert list(reader.iter_internal()) == records
    keys = sorted({r[0] for r in records})
    for snap in snaps:
        want = visible(records, snap)
        assert list(reader.iter_visible(None, None, False, snap)) == want
        assert list(reader.iter_visible(None, None, True, snap)) == want[::-1]
        got = {k: (kind, v) for k, kind, v in want}
        for k in keys:
            assert reader.get(k, snap) == got.get(k)


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("block_size", [64, 1024, 16384])
def test_round_trip(tmp_path, compression, block_size):
    rng = random.Random(block_size)
    records = make_records(rng, 300)
    path = tmp_path / "000001.ldb"
    meta = write_table(path, records, block_size=block_size, compression=compression)
    assert meta.path == str(path) and meta.file_size == os.path.getsize(path)
    assert meta.entries == len(records)
    assert meta.tombstones == sum(1 for r in records if r[1] & 0xFF == D)
    assert meta.smallest == records[0][0] and meta.largest == records[-1][0]
    seqs = [r[1] >> 8 for r in records]
    assert (meta.min_seq, meta.max_seq) == (min(seqs), max(seqs))
    r = TableReader.open(FS, str(path), 1, LRUCache(1 << 20))
    try:
        assert (r.entries, r.tombstones, r.smallest, r.largest, r.min_seq, r.max_seq) == (
            meta.entries, meta.tombstones, meta.smallest, meta.largest, meta.min_seq, meta.max_seq)
        assert r.props["compression"] == compression and r.props["format_version"] == FORMAT_VERSION
        assert r.props["distinct_keys"] == len({x[0] for x in records})
        snaps = sorted(rng.sample(seqs, 5)) + [0, max(seqs), 1 << 50]
        check_all(r, records, snaps)
        for k in (b"", b"a", b"k", b"k0000000", b"zzz"):
            assert r.get(k, 1 << 50) is None
        assert r.verify() == r.props["block_count"] + 3
    finally:
        r.close()


def test_bounded_iteration(tmp_path):
    rng = random.Random(7)
    records = make_records(rng, 200)
    write_table(tmp_path / "t.ldb", records, block_size=200)
    r = TableReader.open(FS, str(tmp_path / "t.ldb"), 1, None)
    keys = sorted({x[0] for x in records})
    bounds = [None, b"", b"k", b"zz"] + rng.sample(keys, 8) + [k + b"\x00" for k in rng.sample(keys, 4)]
    snap = sorted(x[1] >> 8 for x in records)[len(records) // 2]
    for start in bounds:
        for end in bounds:
            for s in (snap, 1 << 40):
                want = visible(records, s, start, end)
                assert list(r.iter_visible(start, end, False, s)) == want, (start, end)
                assert list(r.iter_visible(start, end, True, s)) == want[::-1], (start, end)
    r.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.binary(max_size=6), st.lists(st.tuples(st.integers(1, 60), st.booleans(),
                                                                    st.binary(max_size=8)),
                                                          min_size=1, max_size=4), max_size=40),
       st.integers(1, 70), st.sampled_from([1, 40, 4096]), st.sampled_from(["none", "zstd"]))
def test_hypothesis_round_trip(tmp_path, data, snap, block_size, compression):
    records = []
    for k in sorted(data):
        seen = set()
        for seq, live, v in sorted(data[k], key=lambda t: -t[0]):
            if seq not in seen:
                seen.add(seq)
                records.append((k, pack_seqkind(seq, V if live else D), v if live else b""))
    path = str(tmp_path / "h.ldb")
    write_table(path, records, block_size=block_size, compression=compression)
    r = TableReader.open(FS, path, 1, LRUCache(4096))
    check_all(r, records, [snap])
    lo, hi = (sorted(data)[len(data) // 3], None) if data else (None, None)
    assert list(r.iter_visible(lo, hi, True, snap)) == visible(records, snap, lo, hi)[::-1]
    r.verify()
    r.close()


def test_versions_never_split(tmp_path):
    records = [(b"a", pack_seqkind(s, V), b"x" * 50) for s in range(100, 0, -1)]
    records += [(b"b", pack_seqkind(5, V), b"y")]
    write_table(tmp_path / "t.ldb", records, block_size=64)
    r = TableReader.open(FS, str(tmp_path / "t.ldb"), 1, None)
    assert r.props["block_count"] == 2
    assert r.get(b"a", 50) == (V, b"x" * 50) and r.get(b"a", 0) is None
    r.close()


def test_order_violations(tmp_path):
    w = TableWriter(FS, str(tmp_path / "t.ldb"), Config())
    w.add(b"b", pack_seqkind(5, V), b"1")
    with pytest.raises(ValueError):
        w.add(b"a", pack_seqkind(9, V), b"1")
    with pytest.raises(ValueError):
        w.add(b"b", pack_seqkind(5, D), b"")
    with pytest.raises(ValueError):
        w.add(b"b", pack_seqkind(6, V), b"1")
    w.add(b"b", pack_seqkind(4, D), b"")
    w.add(b"c", pack_seqkind(100, V), b"1")
    assert w.entries == 3 and w.estimated_size > 0
    w.finish()
    with pytest.raises(ValueError):
        w.add(b"d", pack_seqkind(1, V), b"")


def test_abandon_removes_file(tmp_path):
    path = tmp_path / "t.ldb"
    w = TableWriter(FS, str(path), Config(block_size=64))
    for i in range(100):
        w.add(b"%05d" % i, pack_seqkind(1, V), b"v" * 30)
    assert path.exists() and w.estimated_size >= os.path.getsize(path) > 0
    w.abandon()
    assert not path.exists()


def test_empty_table(tmp_path):
    meta = write_table(tmp_path / "e.ldb", [])
    assert meta.entries == 0
    r = TableReader.open(FS, str(tmp_path / "e.ldb"), 3, None)
    assert r.get(b"a", 10) is None and list(r.iter_visible(None, None, True, 10)) == []
    assert list(r.iter_internal()) == [] and r.verify() == 3
    r.close()


def test_no_bloom_and_bloom_skips(tmp_path):
    records = [(b"%05d" % i, pack_seqkind(i + 1, V), b"v") for i in range(0, 1000, 2)]
    for bits in (0, 10):
        write_table(tmp_path / "t.ldb", records, bloom_bits_per_key=bits, block_size=256)
        cache = LRUCache(1 << 20)
        r = TableReader.open(FS, str(tmp_path / "t.ldb"), 1, cache)
        assert all(r.may_contain(k) for k, _, _ in records)
        assert [r.get(b"%05d" % i, 1 << 20) for i in range(1, 1000, 2)] == [None] * 500
        if bits:   # almost every absent key is answered by the filter alone
            assert cache.stats()["misses"] < 25
        r.close()


def test_block_cache_hits_and_evictions(tmp_path):
    records = [(b"%05d" % i, pack_seqkind(i + 1, V), b"v" * 40) for i in range(2000)]
    write_table(tmp_path / "t.ldb", records, block_size=1024, point_index=False)
    cache = LRUCache(1 << 20)
    r = TableReader.open(FS, str(tmp_path / "t.ldb"), 9, cache)
    nblocks = r.props["block_count"]
    for k, _, v in records:
        assert r.get(k, 1 << 30) == (V, v)
    s = cache.stats()
    assert s["misses"] == nblocks and s["hits"] == len(records) - nblocks
    assert s["entries"] == nblocks and s["size"] > 0
    list(r.iter_internal())                 # scans read cached blocks, add nothing
    assert cache.stats()["entries"] == nblocks
    cache.erase_file(9)
    assert cache.stats()["entries"] == 0
    r.close()
    small = LRUCache(3000)                  # about two decoded blocks
    r = TableReader.open(FS, str(tmp_path / "t.ldb"), 9, small)
    assert list(r.iter_visible(None, None, False, 1 << 30)) == [(k, V, v) for k, _, v in records]
    s = small.stats()
    # A scan caches its first SCAN_FILL_BLOCKS blocks only (evicting as it goes).
    assert s["evictions"] >= SCAN_FILL_BLOCKS - 3 and s["size"] <= 3000
    r.close()


def test_zstd_used_only_when_it_shrinks(tmp_path):
    comp = [(b"%05d" % i, pack_seqkind(1, V), b"abc" * 30) for i in range(500)]
    rand = [(b"%05d" % i, pack_seqkind(1, V), os.urandom(90)) for i in range(500)]
    sizes = {}
    for name, recs in (("comp", comp), ("rand", rand)):
        for c in ("none", "zstd"):
            sizes[name, c] = write_table(tmp_path / f"{name}{c}.ldb", recs, compression=c).file_size
            r = TableReader.open(FS, str(tmp_path / f"{name}{c}.ldb"), 1, None)
            assert list(r.iter_internal()) == recs
            r.close()
    assert sizes["comp", "zstd"] < sizes["comp", "none"] / 3
    assert sizes["rand", "zstd"] <= sizes["rand", "none"] + 64


def test_layout_matches_format(tmp_path):
    """Parse a table independently, straight from format.py's description."""
    records = make_records(random.Random(3), 100)
    raw = open(write_table(tmp_path / "t.ldb", records, block_size=512).path, "rb").read()
    f = TABLE_FOOTER.unpack_from(raw, len(raw) - TABLE_FOOTER.size)
    assert f[8] == TABLE_MAGIC and f[6] == FORMAT_VERSION
    assert f[7] == mask_crc(crc32c(raw[len(raw) - TABLE_FOOTER.size:][:52]))

    def block(off, size):
        payload, (comp, crc) = raw[off:off + size - 5], BLOCK_TRAILER.unpack_from(raw, off + size - 5)
        assert comp == 0 and crc == mask_crc(crc32c(payload + bytes([comp])))
        return payload
    last_keys, offsets, sizes = msgpack.unpackb(block(f[0], f[1]))
    props = msgpack.unpackb(block(f[4], f[5]))
    assert set(PROPS_FIELDS) <= set(props) and props["block_count"] == len(offsets)
    assert f[2] == props["data_size"] == sum(sizes)
    assert f[2] + f[3] + props["pindex_size"] == f[4] and f[4] + f[5] == f[0]
    got = []
    for lk, off, size in zip(last_keys, offsets, sizes):
        kvs, sks = msgpack.unpackb(block(off, size))
        keys, vals = kvs[0::2], kvs[1::2]
        assert keys[-1] == lk
        got += zip(keys, sks, vals)
    assert got == records
    # The point index names the newest version of every key by file offset.
    slots = memoryview(block(f[2] + f[3], props["pindex_size"])).cast("Q")
    found = {}
    for i in range(0, len(slots), 2):
        a, b = slots[i], slots[i + 1]
        if a:
            off, span = a & ((1 << 40) - 1), b & 0xFFFFFFFF
            assert crc32c(raw[off:off + span]) == b >> 32
            up = msgpack.Unpacker()
            up.feed(raw[off:off + span])
            key = up.unpack()
            found[key] = (a >> 40) & 1
    newest = {}
    for k, sk, v in records:
        newest.setdefault(k, sk & 0xFF)
    assert found == newest


def _build_raw(path, data_payloads, last_keys, props_over=None, version=FORMAT_VERSION,
               comp=0):
    """A table assembled by hand (valid checksums, arbitrary content)."""
    out, offsets, sizes = bytearray(), [], []

    def blk(payload, comp=0):
        return payload + BLOCK_TRAILER.pack(comp, mask_crc(crc32c(payload + bytes([comp]))))
    for p in data_payloads:
        b = blk(p, comp)
        offsets.append(len(out))
        sizes.append(len(b))
        out += b
    props = dict.fromkeys(PROPS_FIELDS, 0) | {"smallest": b"", "largest": b"",
                                              "compression": "none",
                                              "block_count": len(data_payloads)}
    props |= props_over or {}
    filt, pr = blk(bytes(9)), blk(msgpack.packb(props))
    ix = blk(msgpack.packb([last_keys, offsets, sizes]))
    fo = len(out)
    out += filt + pr + ix
    head = [fo + len(filt) + len(pr), len(ix), fo, len(filt), fo + len(filt), len(pr), version]
    crc = mask_crc(crc32c(TABLE_FOOTER.pack(*head, 0, TABLE_MAGIC)[:52]))
    out += TABLE_FOOTER.pack(*head, crc, TABLE_MAGIC)
    path.write_bytes(bytes(out))
    return str(path)


def test_hand_built_table_reads(tmp_path):
    p = _build_raw(tmp_path / "ok.ldb", [msgpack.packb([[b"a", b"1"], [pack_seqkind(1, V)]])],
                   [b"a"], {"entries": 1, "smallest": b"a", "largest": b"a"})
    r = TableReader.open(FS, p, 1, None)
    assert r.get(b"a", 5) == (V, b"1") and r.verify() == 4
    r.close()


@pytest.mark.parametrize("payload", [
    msgpack.packb([[b"a"], [pack_seqkind(1, V)]]),            # kvs of odd length
    msgpack.packb([[b"a", b"1", b"b"], [pack_seqkind(1, V)]]),
    msgpack.packb([[b"a", b"1"], [pack_seqkind(1, V)], [b"1"]]),   # three lists
    msgpack.packb([["a", b"1"], [pack_seqkind(1, V)]]),       # str key
    msgpack.packb([[b"a", "1"], [pack_seqkind(1, V)]]),       # str value
    msgpack.packb([[b"a", b"1"], [b"x"]]),                    # seqkind not an int
    msgpack.packb({"a": 1}), msgpack.packb(7), msgpack.packb([[], []]), b"\xc1",
    msgpack.packb([[b"a", b"1"], [1]]) + b"\x00",            # trailing bytes
])
def test_wrong_shape_block(tmp_path, payload):
    p = _build_raw(tmp_path / "bad.ldb", [payload], [b"a"])
    r = TableReader.open(FS, p, 1, LRUCache(1 << 20))
    for op in (lambda: r.get(b"a", 5), lambda: list(r.iter_visible(None, None, False, 5)),
               lambda: list(r.iter_internal()), r.verify):
        with pytest.raises(CorruptionError) as ei:
            op()
        assert ei.value.path == p
    r.close()


@pytest.mark.parametrize("comp,payload", [
    (1, b"not zstd at all"), (7, msgpack.packb([[b"a"], [1], [b"1"]])),
    (1, zstandard.ZstdCompressor().compress(b"\xc1" * 50)),
    (1, zstandard.ZstdCompressor().compress(msgpack.packb([[b"a"], [1], [b"1"]] * 9))[:-3]),
])
def test_bad_compression_with_valid_crc(tmp_path, comp, payload):
    p = _build_raw(tmp_path / "z.ldb", [payload], [b"a"], comp=comp)
    r = TableReader.open(FS, p, 1, None)
    with pytest.raises(CorruptionError):
        r.get(b"a", 5)
    with pytest.raises(CorruptionError):
        r.verify()
    r.close()


def test_unknown_version_and_bad_props(tmp_path):
    p = _build_raw(tmp_path / "v.ldb", [], [], version=FORMAT_VERSION + 1)
    with pytest.raises(CorruptionError, match="version"):
        TableReader.open(FS, p, 1, None)
    p = _build_raw(tmp_path / "i.ldb", [msgpack.packb([[b"a"], [1], [b"1"]])], [b"a"],
                   {"block_count": 2})
    with pytest.raises(CorruptionError, match="index"):
        TableReader.open(FS, p, 1, None)
    (tmp_path / "short.ldb").write_bytes(b"x" * 10)
    with pytest.raises(CorruptionError, match="short"):
        TableReader.open(FS, str(tmp_path / "short.ldb"), 1, None)


def _read_everything(path, records, snaps):
    r = TableReader.open(FS, path, 1, None)
    try:
        check_all(r, records, snaps)
        r.verify()
    finally:
        r.close()


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_every_byte_flipped(tmp_path, compression):
    rng = random.Random(11)
    records = make_records(rng, 25, max_versions=3, vsize=12)
    good = tmp_path / "good.ldb"
    write_table(good, records, block_size=200, compression=compression)
    raw = good.read_bytes()
    assert len(raw) < 4000
    snaps = [records[len(records) // 2][1] >> 8, 1 << 40]
    bad = str(tmp_path / "bad.ldb")
    detected = 0
    for pos in range(len(raw)):
        mutated = bytearray(raw)
        mutated[pos] ^= 1 << rng.randrange(8) if pos % 2 else 0xFF
        with open(bad, "wb") as f:
            f.write(mutated)
        try:
            _read_everything(bad, records, snaps)   # asserts the data is exactly right
        except CorruptionError as exc:
            assert exc.path == bad
            detected += 1
    assert detected == len(raw)     # every byte is covered by a checksum or the magic


def _flip_in_place(path, pos):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_table_damaged_after_open_never_answers_wrong(tmp_path, monkeypatch):
    """The stress harness's corrupt fault: bytes of a table inverted in
    place while readers have it mapped (the mapping shows the damage). Each
    byte in turn: every point read, single and batched, with and without
    the filter, alone and over an older table holding every key, still
    answers right or raises CorruptionError: a damaged point-index slot
    never makes a present key absent, nor lets an older version through."""
    monkeypatch.setattr(batch, "MIN_BATCH", 1)         # small batches take the batch path
    rng = random.Random(12)
    records = [(k, sk + (10_000 << 8), v) for k, sk, v in make_records(rng, 25, max_versions=3, vsize=12)]
    path, old_path = str(tmp_path / "t.ldb"), str(tmp_path / "old.ldb")
    meta = write_table(path, records, block_size=200)
    keys = sorted({k for k, _, _ in records}) + [b"k%06d" % i for i in range(1, 40, 7)]
    old_meta = write_table(old_path, [(k, pack_seqkind(i + 1, V), b"old") for i, k in enumerate(sorted(keys))])
    r = TableReader.open(FS, path, 1, None)
    old = TableReader.open(FS, old_path, 2, None)
    assert r._pslots is not None

    def file(number, m, reader):
        return FileMeta(number, m.file_size, m.smallest, m.largest, m.min_seq, m.max_seq, m.entries, m.tombstones,
                        reader)
    alone = Version([[file(1, meta, r)]])
    over = Version([[file(1, meta, r)], [file(2, old_meta, old)]])     # the older table in the last level
    top = 1 << 40
    want = {k: (kind, v) for k, kind, v in visible(records, top)}
    want_over = {k: want.get(k, (V, b"old")) for k in keys}
    wrong = []
    try:
        for pos in range(meta.file_size):
            _flip_in_place(path, pos)
            for k in keys:
                for check_filter in (True, False):
                    with contextlib.suppress(CorruptionError):
                        if r.get(k, top, None, check_filter) != want.get(k):
                            wrong.append((pos, k, check_filter))
                with contextlib.suppress(CorruptionError):
                    if lookup((), over, k, top) != want_over[k]:
                        wrong.append((pos, k, "lookup"))
            for version, expect in ((alone, want), (over, want_over)):
                for some in (keys, keys[:5], keys[5:10], keys[10:20]):     # numpy probes, and a few in Python
                    with contextlib.suppress(CorruptionError):
                        got = lookup_many((), version, some, top)
                        wrong += [(pos, k, "lookup_many") for k, g in zip(some, got) if g != expect.get(k)]
            _flip_in_place(path, pos)
    finally:
        r.close()
        old.close()
    assert wrong == []


def test_truncated(tmp_path):
    records = make_records(random.Random(5), 30)
    write_table(tmp_path / "t.ldb", records, block_size=256)
    raw = (tmp_path / "t.ldb").read_bytes()
    for n in list(range(0, len(raw), 37)) + [len(raw) - 1]:
        (tmp_path / "c.ldb").write_bytes(raw[:n])
        with pytest.raises(CorruptionError):
            TableReader.open(FS, str(tmp_path / "c.ldb"), 1, None)


def test_closed_reader_refuses(tmp_path):
    records = make_records(random.Random(2), 50)
    write_table(tmp_path / "t.ldb", records, block_size=128)
    r = TableReader.open(FS, str(tmp_path / "t.ldb"), 1, LRUCache(1 << 20))
    assert r.get(records[0][0], 1 << 40) is not None
    r.close()
    r.close()
    for op in (lambda: r.get(records[-1][0], 1 << 40), lambda: list(r.iter_internal()),
               lambda: list(r.iter_visible(None, None, False, 5)), r.verify):
        with pytest.raises(ValueError, match="closed"):
            op()


def test_precomputed_hash_and_deep_history(tmp_path):
    """Many versions per key spanning snapshots: slow (non zip) scan paths."""
    from lightning_db.storage.bloom import key_hash
    records = []
    for i in range(40):
        for seq in range(200, 0, -7 - i % 5):
            kind = D if seq % 3 == 0 else V
            records.append((b"key%03d" % i, pack_seqkind(seq, kind), b"" if kind == D else b"%d" % seq))
    write_table(tmp_path / "t.ldb", records, block_size=300, compression="zstd")
    r = TableReader.open(FS, str(tmp_path / "t.ldb"), 1, LRUCache(1 << 20))
    for snap in (0, 1, 50, 101, 199, 10**9):
        want = visible(records, snap)
        assert list(r.iter_visible(None, None, False, snap)) == want
        assert list(r.iter_visible(b"key010", b"key030", True, snap)) == [
            x for x in want if b"key010" <= x[0] < b"key030"][::-1]
        got = {k: (kind, v) for k, kind, v in want}
        for i in range(40):
            k = b"key%03d" % i
            assert r.get(k, snap, key_hash(k)) == got.get(k)
    r.close()


def test_a_long_scan_caches_only_its_first_blocks(tmp_path):
    records = [(b"%05d" % i, pack_seqkind(i + 1, V), b"v" * 40) for i in range(2000)]
    write_table(tmp_path / "t.ldb", records, block_size=1024, point_index=False)
    cache = LRUCache(1 << 20)
    r = TableReader.open(FS, str(tmp_path / "t.ldb"), 9, cache)
    assert r.props["block_count"] > 3 * SCAN_FILL_BLOCKS
    assert len(list(r.iter_visible(None, None, False, 1 << 30))) == len(records)
    assert cache.stats()["entries"] == SCAN_FILL_BLOCKS
    assert len(list(r.iter_visible(None, None, True, 1 << 30))) == len(records)   # from the other end
    assert cache.stats()["entries"] == 2 * SCAN_FILL_BLOCKS
    r.get(records[1000][0], 1 << 30)          # a point read caches its block
    assert cache.stats()["entries"] == 2 * SCAN_FILL_BLOCKS + 1
    r.close()


def test_plain_tables_say_so_in_their_props(tmp_path):
    plain = [(b"%05d" % i, pack_seqkind(i + 1, V), b"v") for i in range(100)]
    write_table(tmp_path / "p.ldb", plain)
    r = TableReader.open(FS, str(tmp_path / "p.ldb"), 1, None)
    assert r.props["expiring"] == 0 and r._plain_top == (100 << 8) | 0xFF
    assert list(r.iter_visible(None, None, False, 1 << 30)) == [(k, V, v) for k, _, v in plain]
    r.close()
    two = [(b"a", pack_seqkind(5, V), b"new"), (b"a", pack_seqkind(2, V), b"old")]
    write_table(tmp_path / "v.ldb", two)
    r = TableReader.open(FS, str(tmp_path / "v.ldb"), 2, None)
    assert r._plain_top is None            # two versions of one key: blocks are checked
    assert list(r.live_chunks(None, None, False, 3)) == [[(b"a", b"old")]]
    assert list(r.live_chunks(None, None, False, 9)) == [[(b"a", b"new")]]
    r.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=300), st.binary(max_size=2000),
                          st.sampled_from([V, V, D, int(Kind.VALUE_TTL)])),
                max_size=300, unique_by=lambda r: r[0]),
       st.integers(0, 300), st.sampled_from([256, 1024, 4096]), st.booleans(), st.sampled_from([None, 1, 5]))
def test_add_many_writes_the_table_add_writes(tmp_path_factory, rows, split, block_size, lengths, chunk):
    """Bulk and record by record write the same bytes: blocks written
    straight from the batch, the pending block, tombstones, expiring values
    (no point index), with the lengths given or not, and with the per-key
    steps taken a few keys at a time (as they are for a big batch)."""
    saved = gil.CHUNK
    if chunk is not None:
        gil.CHUNK = chunk
    try:
        _add_many_and_add(tmp_path_factory, rows, split, block_size, lengths)
    finally:
        gil.CHUNK = saved


def _add_many_and_add(tmp_path_factory, rows, split, block_size, lengths):
    rows.sort()
    records = [(k, pack_seqkind(i + 1, kind), b"" if kind == D else v) for i, (k, v, kind) in enumerate(rows)]
    d = tmp_path_factory.mktemp("many")
    one = write_table(d / "one.ldb", records, block_size=block_size)
    w = TableWriter(FS, str(d / "many.ldb"), Config(block_size=block_size))
    head, tail = records[:split], records[split:]
    for r in head[:3]:                              # some one by one, then in bulk (twice)
        w.add(*r)
    for part in (head[3:], tail):
        keys, vals = [r[0] for r in part], [r[2] for r in part]
        lens = (np.array(list(map(len, keys)), dtype=np.int64), np.array(list(map(len, vals)), dtype=np.int64))
        w.add_many(keys, [r[1] for r in part], vals, *(lens if lengths else ()))
    many = w.finish()
    assert (d / "one.ldb").read_bytes() == (d / "many.ldb").read_bytes()
    assert (one.entries, one.tombstones, one.min_seq, one.max_seq) == (
        many.entries, many.tombstones, many.min_seq, many.max_seq)


def test_add_many_refuses_keys_out_of_order(tmp_path):
    w = TableWriter(FS, str(tmp_path / "t.ldb"), Config())
    w.add(b"m", pack_seqkind(1, V), b"")
    with pytest.raises(ValueError, match="out of order"):
        w.add_many([b"a"], [pack_seqkind(2, V)], [b""])
    with pytest.raises(ValueError, match="out of order"):
        w.add_many([b"x", b"w"], [pack_seqkind(3, V), pack_seqkind(4, V)], [b"", b""])
    w.abandon()


def test_the_point_index_finds_every_key_and_no_other(tmp_path):
    records = [(b"%08d" % i, pack_seqkind(i + 1, V), b"v%d" % i) for i in range(0, 60000, 3)]
    write_table(tmp_path / "t.ldb", records)
    r = TableReader.open(FS, str(tmp_path / "t.ldb"), 1, None)
    assert r._pslots is not None
    for k, _, v in records:
        assert r.get(k, 1 << 30) == (V, v)
    assert all(r.get(b"%08d" % i, 1 << 30) is None for i in range(1, 60000, 3))
    r.close()


def _check_probe_slots(hashes, nslots):
    from lightning_db.storage.table_builder import probe_slots

    slot = probe_slots(hashes, nslots)
    assert slot.size == hashes.size and np.unique(slot).size == slot.size
    assert slot.size == 0 or (0 <= slot.min() and slot.max() < nslots)
    taken = np.zeros(nslots, dtype=bool)
    taken[slot] = True
    mask = nslots - 1
    home = (hashes & np.uint64(mask)).astype(np.int64)
    dist = (slot - home) & mask             # slots passed on the way from home (around the end)
    passed = np.concatenate(([0], np.cumsum(np.concatenate((taken, taken)))))
    assert ((passed[home + dist] - passed[home]) == dist).all()     # every one of them taken


@settings(max_examples=200, deadline=None)
@given(homes=st.lists(st.integers(0, 63), max_size=48), high=st.integers(0, (1 << 58) - 1))
def test_probe_slots_leave_every_probe_path_taken(homes, high):
    """Any homes, clusters across the end of the table included."""
    hashes = (np.array(homes, dtype=np.uint64) | (np.uint64(high) << np.uint64(6)))
    _check_probe_slots(hashes, 64)


def test_probe_slots_of_one_home_for_all():
    """Every entry with the same home (a table of colliding keys): placed
    in one run, wrapping past the end."""
    _check_probe_slots(np.full(20000, 32760, dtype=np.uint64), 32768)
