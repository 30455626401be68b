"""Memtable (writer side, shard process) and SegmentReader (any process)."""

from __future__ import annotations

import multiprocessing
import os
import random
import struct
import tempfile
import threading
import time

from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_db.config import Config
from lightning_db.errors import CorruptionError
from lightning_db.storage import gil, keyruns
from lightning_db.storage.format import (FORMAT_VERSION, SEGMENT_FLAG_IMMUTABLE, SEGMENT_HEADER,
                                         SEGMENT_HEADER_SIZE, SEGMENT_MAGIC, SEGMENT_RECORD, Kind,
                                         pack_seqkind)
from lightning_db.storage.fs import OSFileSystem
from lightning_db.storage.memtable import Memtable, segment_size
from lightning_db.storage.segment_reader import SegmentReader
from lightning_db.storage.memtable_bulk import BULK_MIN, add_bulk

V, D = int(Kind.VALUE), int(Kind.DELETE)
CAP = 64 * 1024


@pytest.fixture
def mt(tmp_path):
    m = Memtable(OSFileSystem(), str(tmp_path / "000001.seg"), 1, CAP)
    yield m
    m.close()


# --- model ------------------------------------------------------------------------


class Model:
    """dict key -> [(seq, kind, value), ...] in seq order."""

    def __init__(self) -> None:
        self.versions: dict[bytes, list[tuple[int, int, bytes]]] = {}

    def add(self, seq: int, kind: int, key: bytes, value: bytes) -> None:
        self.versions.setdefault(key, []).append((seq, kind, value))

    def get(self, key: bytes, snap: int) -> tuple[int, bytes] | None:
        for seq, kind, value in reversed(self.versions.get(key, [])):
            if seq <= snap:
                return kind, value
        return None

    def visible(self, start, end, reverse, snap):
        out = []
        for key in sorted(self.versions, reverse=reverse):
            if (start is None or key >= start) and (end is None or key < end):
                got = self.get(key, snap)
                if got is not None:
                    out.append((key, got[0], got[1]))
        return out


# --- basics -----------------------------------------------------------------------


def test_versions_tombstones_snapshots(mt):
    assert mt.get(b"a", 100) is None and mt.first_seq == 0 and mt.last_seq == 0
    mt.add(1, V, b"a", b"v1")
    mt.add(2, V, b"b", b"b1")
    mt.add_batch(3, [(V, b"a", b"v3"), (D, b"b", b""), (V, b"c", b"")])
    mt.add(6, D, b"a", b"")
    assert mt.get(b"a", 0) is None
    assert mt.get(b"a", 1) == (V, b"v1")
    assert mt.get(b"a", 2) == (V, b"v1")
    assert mt.get(b"a", 3) == (V, b"v3")
    assert mt.get(b"a", 5) == (V, b"v3")
    assert mt.get(b"a", 6) == (D, b"")
    assert mt.get(b"b", 3) == (V, b"b1") and mt.get(b"b", 4) == (D, b"")
    assert mt.get(b"c", 5) == (V, b"")            # empty value is not a tombstone
    assert mt.get(b"zz", 10) is None
    assert list(mt.iter_visible(None, None, False, 10)) == [
        (b"a", D, b""), (b"b", D, b""), (b"c", V, b"")]
    assert list(mt.iter_visible(None, None, True, 2)) == [(b"b", V, b"b1"), (b"a", V, b"v1")]
    assert list(mt.iter_visible(b"b", b"c", False, 3)) == [(b"b", V, b"b1")]
    assert mt.entries == 6 and mt.distinct_keys == 3
    assert mt.first_seq == 1 and mt.last_seq == 6
    assert mt.arena_used == mt.approximate_memory == (
        Memtable.record_size(1, 2) * 2 + Memtable.record_size(1, 0) * 3 + Memtable.record_size(1, 2))
    st_ = mt.stats()
    assert st_["entries"] == 6 and st_["distinct_keys"] == 3 and st_["slots"] == 1024


def test_segment_layout_is_the_frozen_format(mt):
    mt.add_batch(7, [(V, b"key", b"value"), (V, b"key", b"v2")])
    with open(mt.path, "rb") as f:
        raw = f.read()
    assert len(raw) == segment_size(CAP) == 64 + 8 * 1024 + CAP
    magic, version, flags, cap, slots, used, count, gen = SEGMENT_HEADER.unpack_from(raw, 0)
    assert (magic, version, flags, cap, slots, count, gen) == (
        SEGMENT_MAGIC, FORMAT_VERSION, 0, CAP, 1024, 2, 1)
    assert used == 2 * Memtable.record_size(3, 5) == 64
    base = SEGMENT_HEADER_SIZE + 8 * slots
    h = xxhash.xxh3_64_intdigest(b"key") & (slots - 1)
    ref = struct.unpack_from("<Q", raw, SEGMENT_HEADER_SIZE + 8 * h)[0]
    assert ref == 1 + 32                                         # newest version
    assert SEGMENT_RECORD.unpack_from(raw, base + 32) == (3, 2, pack_seqkind(8, V), 1)
    assert raw[base + 32 + 24:base + 32 + 29] == b"keyv2"
    assert SEGMENT_RECORD.unpack_from(raw, base) == (3, 5, pack_seqkind(7, V), 0)
    mt.freeze()
    assert mt.is_immutable
    with open(mt.path, "rb") as f:
        assert SEGMENT_HEADER.unpack_from(f.read(64))[2] == SEGMENT_FLAG_IMMUTABLE
    with pytest.raises(AssertionError):
        mt.add(9, V, b"x", b"y")


def test_iter_internal_order(mt):
    mt.add_batch(1, [(V, b"b", b"1"), (V, b"a", b"2"), (D, b"b", b""), (V, b"c", b"4"),
                     (V, b"a", b"5"), (V, b"b", b"6")])
    assert list(mt.iter_internal()) == [
        (b"a", pack_seqkind(5, V), b"5"), (b"a", pack_seqkind(2, V), b"2"),
        (b"b", pack_seqkind(6, V), b"6"), (b"b", pack_seqkind(3, D), b""),
        (b"b", pack_seqkind(1, V), b"1"), (b"c", pack_seqkind(4, V), b"4")]


# --- capacity -----------------------------------------------------------------------


def test_record_size_and_fits(mt):
    assert Memtable.record_size(0, 0) == 24
    assert Memtable.record_size(1, 0) == 32
    assert Memtable.record_size(16, 100) == 144
    assert Memtable.record_size(8, 0) == 32
    rs = Memtable.record_size(8, 1000)                    # 1032
    n = CAP // rs
    seq = 1
    for i in range(n):
        assert mt.fits(rs)
        mt.add(seq, V, b"%08d" % i, b"x" * 1000)
        seq += 1
    assert mt.arena_used == n * rs
    assert not mt.fits(rs)
    room = CAP - n * rs
    assert mt.fits(room) and not mt.fits(room + 8)
    with pytest.raises(AssertionError):
        mt.add(seq, V, b"k", b"x" * room)               # room - 24 - 1 + 24 + 1 > room
    mt.add(seq, V, b"k", b"x" * (room - 25))            # exactly fills the arena
    assert mt.arena_used == CAP and mt.fits(0) and not mt.fits(8)
    assert mt.get(b"k", seq) == (V, b"x" * (room - 25))


def test_fits_limits_index_load(tmp_path):
    m = Memtable(OSFileSystem(), str(tmp_path / "s.seg"), 2, CAP)   # 1024 slots -> 768 keys
    try:
        assert m.fits(0, 768) and not m.fits(0, 769)
        m.add_batch(1, [(V, b"%05d" % i, b"") for i in range(700)])
        assert m.fits(0, 68) and not m.fits(0, 69)
        m.add_batch(701, [(V, b"%05d" % i, b"") for i in range(700, 768)])
        assert not m.fits(32, 1)
        m.add(769, V, b"00001", b"update")              # updates need no new slot
        with pytest.raises(AssertionError):
            m.add(770, V, b"new-key", b"")
        assert m.get(b"new-key", 10**6) is None and m.entries == 769
        assert m.get(b"00001", 769) == (V, b"update")
        assert len(list(m.iter_visible(None, None, False, 10**6))) == 768
    finally:
        m.close()


def test_record_larger_than_default_capacity(tmp_path):
    default = Config().memtable_size
    value = b"\xab" * (default + 12345)
    cap = Memtable.record_size(3, len(value)) + 4096
    m = Memtable(OSFileSystem(), str(tmp_path / "big.seg"), 3, cap)
    try:
        assert m.fits(Memtable.record_size(3, len(value)))
        m.add(1, V, b"big", value)
        assert m.get(b"big", 1) == (V, value)
        r = SegmentReader(m.path)
        assert r.get(b"big", 1) == (V, value)
        r.close()
    finally:
        m.close()


# --- model-based ------------------------------------------------------------------

keys_st = st.binary(min_size=0, max_size=4).map(lambda b: b"k" + b) | st.sampled_from(
    [b"", b"a", b"ab", b"b", b"\x00", b"\xff\xff"])
op_st = st.tuples(st.sampled_from([V, V, D]), keys_st, st.binary(max_size=20))
bound_st = st.none() | keys_st


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(op_st, min_size=1, max_size=8), max_size=12),
       queries=st.lists(st.tuples(st.integers(0, 110), bound_st, bound_st, st.booleans()),
                        min_size=1, max_size=6))
def test_matches_model(batches, queries):
    with tempfile.TemporaryDirectory() as d:
        m = Memtable(OSFileSystem(), os.path.join(d, "m.seg"), 1, CAP)
        model = Model()
        seq = 1
        try:
            for batch in batches:
                ops = [(k, key, (b"" if k == D else v)) for k, key, v in batch]
                assert m.fits(sum(Memtable.record_size(len(key), len(v)) for _, key, v in ops),
                              len(ops))
                m.add_batch(seq, ops)
                for kind, key, value in ops:
                    model.add(seq, kind, key, value)
                    seq += 1
            reader = SegmentReader(m.path)
            for snap, start, end, reverse in queries:
                for key in list(model.versions) + [b"missing", b"k"]:
                    assert m.get(key, snap) == model.get(key, snap)
                    assert reader.get(key, snap) == model.get(key, snap)
                assert list(m.iter_visible(start, end, reverse, snap)) == \
                    model.visible(start, end, reverse, snap)
            internal = list(m.iter_internal())
            assert internal == sorted(internal, key=lambda r: (r[0], -r[1]))
            assert len(internal) == m.entries == seq - 1
            assert m.distinct_keys == len(model.versions)
            reader.close()
        finally:
            m.close()


bulk_key_st = st.binary(min_size=1, max_size=6)
bulk_op_st = st.tuples(st.sampled_from([V, V, V, D]), bulk_key_st, st.binary(max_size=300))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.one_of(st.lists(bulk_op_st, min_size=BULK_MIN, max_size=BULK_MIN + 30,
                                           unique_by=lambda o: o[1]),
                                  st.lists(bulk_op_st, min_size=1, max_size=BULK_MIN + 30)), max_size=6),
       snaps=st.lists(st.integers(0, 600), min_size=1, max_size=4))
def test_bulk_add_matches_model(batches, snaps):
    """add_bulk takes every batch of BULK_MIN or more distinct keys, refuses
    the rest having written nothing, and leaves what the loop would."""
    with tempfile.TemporaryDirectory() as d:
        m = Memtable(OSFileSystem(), os.path.join(d, "m.seg"), 1, 4 * CAP)
        model = Model()
        seq = 1
        try:
            for batch in batches:
                ops = [(k, key, (b"" if k == D else v)) for k, key, v in batch]
                if not m.fits(sum(Memtable.record_size(len(key), len(v)) for _, key, v in ops), len(ops)):
                    break
                before = (m.arena_used, m.entries, m.distinct_keys)
                took = add_bulk(m, seq, ops)
                assert took == (len(ops) >= BULK_MIN and len({key for _, key, _ in ops}) == len(ops))
                if not took:
                    assert (m.arena_used, m.entries, m.distinct_keys) == before
                    m.add_batch(seq, ops)
                for kind, key, value in ops:
                    model.add(seq, kind, key, value)
                    seq += 1
            reader = SegmentReader(m.path)
            for snap in snaps + [seq]:
                for key in list(model.versions) + [b"missing"]:
                    assert m.get(key, snap) == model.get(key, snap)
                    assert reader.get(key, snap) == model.get(key, snap)
                assert list(m.iter_visible(None, None, False, snap)) == model.visible(None, None, False, snap)
            internal = list(m.iter_internal())
            assert internal == sorted(internal, key=lambda r: (r[0], -r[1]))
            assert len(internal) == m.entries == seq - 1 == m.last_seq
            assert m.distinct_keys == len(model.versions)
            assert m.arena_used == sum(Memtable.record_size(len(k), len(v))
                                       for k, vs in model.versions.items() for _, _, v in vs)
            reader.close()
        finally:
            m.close()


def test_bulk_add_near_full_index_and_rewritten_keys(mt):
    """Batches that fill the index to its load limit (long probes, keys of a
    batch sharing a home slot) and rewrite keys of earlier batches."""
    keys = [b"%04d" % i for i in range(mt._max_keys)]
    seq = 1
    bounds = [i * BULK_MIN for i in range(len(keys) // BULK_MIN)] + [len(keys)]    # parts of >= BULK_MIN
    for lo, hi in zip(bounds, bounds[1:]):
        assert add_bulk(mt, seq, [(V, k, k * 2) for k in keys[lo:hi]])
        seq += hi - lo
    rewrite = keys[::3][:BULK_MIN * 2]
    assert add_bulk(mt, seq, [(D, k, b"") for k in rewrite])
    assert not mt.fits(1, 1)                    # the index is at its limit
    reader = SegmentReader(mt.path)
    try:
        for i, k in enumerate(keys):
            want = (D, b"") if k in rewrite else (V, k * 2)
            assert mt.get(k, seq + len(rewrite)) == want == reader.get(k, seq + len(rewrite))
            assert mt.get(k, seq - 1) == (V, k * 2) == reader.get(k, seq - 1)
            assert mt.get(k, i) is None
    finally:
        reader.close()
    assert mt.distinct_keys == len(keys) and mt.entries == len(keys) + len(rewrite)


# --- concurrency within the shard process ---------------------------------------------


def test_iterators_survive_concurrent_writer(tmp_path):
    mt = Memtable(OSFileSystem(), str(tmp_path / "c.seg"), 1, 4 << 20)
    model = Model()
    mt.add_batch(1, [(V, b"%04d" % i, b"v0") for i in range(0, 200, 2)])
    for i in range(0, 200, 2):
        model.add(1 + i // 2, V, b"%04d" % i, b"v0")
    snap = mt.last_seq
    expect = model.visible(None, None, False, snap)
    it = mt.iter_visible(None, None, False, snap)
    first = next(it)
    stop = threading.Event()

    def writer() -> None:
        seq = snap + 1
        i = 0
        while not stop.is_set() and mt.fits(2000, 20):
            mt.add_batch(seq, [(V, b"%04d" % ((i + j) % 400), b"new") if j % 3 else
                               (D, b"%04d" % ((i + j) % 400), b"") for j in range(20)])
            seq += 20
            i += 7

    t = threading.Thread(target=writer)
    t.start()
    try:
        got = [first] + list(it)
        for _ in range(20):
            assert list(mt.iter_visible(None, None, True, snap)) == expect[::-1]
            for key, kind, value in expect:
                assert mt.get(key, snap) == (kind, value)
    finally:
        stop.set()
        t.join()
    assert got == expect
    assert list(mt.iter_visible(None, None, False, snap)) == expect
    assert mt.distinct_keys > 100                     # the writer did add new keys
    mt.close()


# --- SegmentReader --------------------------------------------------------------------


def test_segment_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.seg"
    bad.write_bytes(b"NOTASEG!" + bytes(56 + 8 * 1024 + 64))
    with pytest.raises(CorruptionError, match="bad.seg"):
        SegmentReader(str(bad))
    m = Memtable(OSFileSystem(), str(tmp_path / "v.seg"), 1, CAP)
    m.close()
    raw = bytearray((tmp_path / "v.seg").read_bytes())
    struct.pack_into("<I", raw, 8, FORMAT_VERSION + 1)
    (tmp_path / "v2.seg").write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="version"):
        SegmentReader(str(tmp_path / "v2.seg"))
    (tmp_path / "short.seg").write_bytes(b"LDB")
    with pytest.raises(CorruptionError, match="short.seg"):
        SegmentReader(str(tmp_path / "short.seg"))


def test_segment_reader_in_process(mt):
    model = Model()
    seq = 1
    for r in range(5):
        ops = [((D if (i + r) % 5 == 0 else V), b"key%03d" % (i * 7 % 60), b"r%d-%d" % (r, i))
               for i in range(40)]
        ops = [(k, key, b"" if k == D else v) for k, key, v in ops]
        mt.add_batch(seq, ops)
        for op in ops:
            model.add(seq, *op)
            seq += 1
    r = SegmentReader(mt.path)
    assert not r.is_immutable and r.entries == mt.entries and r.arena_used == mt.arena_used
    for snap in (0, 1, 37, 100, 150, seq):
        for key in list(model.versions) + [b"nope", b"key"]:
            assert r.get(key, snap) == mt.get(key, snap) == model.get(key, snap)
    mt.add(seq, V, b"late", b"seen")                  # the reader sees later writes
    assert r.get(b"late", seq) == (V, b"seen")
    mt.freeze()
    assert r.is_immutable and r.get(b"late", seq) == (V, b"seen")
    r.close()


def _child_read(path: str, keys: list[bytes], snaps: list[int]) -> list:
    r = SegmentReader(path)
    try:
        return [r.get(key, snap) for snap in snaps for key in keys]
    finally:
        r.close()


def test_segment_reader_from_spawned_process(tmp_path):
    mt = Memtable(OSFileSystem(), str(tmp_path / "000009.seg"), 9, 4 << 20)
    keys = [b"user:%05d" % i for i in range(300)]
    seq = 1
    for rnd in range(3):
        ops = [(D if (i % 11 == rnd) else V, k, b"" if i % 11 == rnd else b"%d:%s" % (rnd, k))
               for i, k in enumerate(keys)]
        mt.add_batch(seq, ops)
        seq += len(ops)
    snaps = [0, 150, 300, 450, 900, seq - 1]
    probe = keys + [b"absent", b"user:"]
    expect = [mt.get(k, s) for s in snaps for k in probe]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        pending = pool.apply_async(_child_read, (mt.path, probe, snaps))
        # The writer keeps going while the child reads: newer versions and new
        # keys must not change what the child sees at the old snapshots.
        while not pending.ready() and mt.fits(8192, 100):
            n = 100 if seq % 40 else 20         # bulk batches (memtable_bulk.py) and the loop
            mt.add_batch(seq, [(V, keys[(seq + j) % 300] if j % 2 else b"new%06d" % (seq + j),
                                b"later") for j in range(n)])
            seq += n
            time.sleep(0.001)
        got = pending.get(timeout=60)
    assert got == expect
    assert mt.get(keys[1], seq) is not None             # the writer's mmap stayed open
    mt.close()


def _child_check_whole(path: str, keys: list[bytes], ready: Any, done: Any) -> tuple[int, list]:
    """Read *keys* at the newest seq until *done*: every value found must be
    whole (``key/seq/`` and its padding), never part of a record."""
    r = SegmentReader(path)
    seen, bad = 0, []
    try:
        ready.set()
        while not done.is_set():
            for key in keys:
                got = r.get(key, 1 << 60)
                if got is None:
                    continue
                seen += 1
                kind, v = got
                head, _, pad = bytes(v).partition(b"|")
                if kind != V or not head.startswith(key + b"/") or pad != b"x" * (len(v) - len(head) - 1) \
                        or len(pad) != int(head.rsplit(b"/", 1)[1]) % 97:
                    bad.append((key, bytes(v)))
        return seen, bad[:5]
    finally:
        r.close()


def test_reader_in_another_process_never_sees_part_of_a_bulk_batch(tmp_path):
    """A spawned reader polls keys while the writer appends batches in bulk
    (new keys and rewrites): the record bytes are stored before any slot
    names them, so a value it finds is always whole."""
    mt = Memtable(OSFileSystem(), str(tmp_path / "000010.seg"), 10, 8 << 20)
    keys = [b"k%04d" % i for i in range(600)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as m:
        ready, done = m.Event(), m.Event()
        with ctx.Pool(1) as pool:
            pending = pool.apply_async(_child_check_whole, (mt.path, keys, ready, done))
            assert ready.wait(60)
            seq, rnd = 1, 0
            while mt.fits(64 * 1024, 200) and rnd < 400:
                batch = random.Random(rnd).sample(keys, 200)
                mt.add_batch(seq, [(V, k, k + b"/%d|" % (seq + j) + b"x" * ((seq + j) % 97))
                                   for j, k in enumerate(batch)])
                seq += len(batch)
                rnd += 1
            done.set()
            seen, bad = pending.get(timeout=60)
    assert bad == [] and seen > 0
    mt.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=300), st.sampled_from([V, D])),
                max_size=120), st.sampled_from([None, 1, 7]), st.sampled_from([0, 32, 64]))
def test_newest_lists_is_iter_internal_when_each_key_has_one_version(tmp_path, rows, chunk, lex):
    """Also with the per-key steps (and the sort in numpy: on keys read
    from the arena, up to *lex* bytes long) taken in chunks of a few keys,
    as they are for a big memtable."""
    m = Memtable(OSFileSystem(), str(tmp_path / "n.seg"), 9, CAP)
    saved = gil.CHUNK, keyruns.SORT_IN_NUMPY, keyruns.LEX_WIDTH
    keyruns.LEX_WIDTH = lex
    if chunk is not None:
        gil.CHUNK, keyruns.SORT_IN_NUMPY = chunk, 0
    try:
        fit = []
        for k, v, kind in rows:
            if not m.fits(len(k) + len(v)):
                break
            m.add(len(fit) + 1, kind, k, b"" if kind == D else v)
            fit.append(k)
        got = m.newest_lists()
        if len(set(fit)) == len(fit):
            want = list(m.iter_internal())
            assert got is not None
            assert list(zip(*got[:3])) == [(k, sk, bytes(v)) for k, sk, v in want]
            assert got[3].tolist() == [len(k) for k, _, _ in want]
            assert got[4].tolist() == [len(v) for _, _, v in want]
        else:                                   # a key written twice: the record by record path
            assert got is None
        newest = m.newest_lists(newest_only=True)
        assert newest is not None
        first = {}
        for k, sk, v in m.iter_internal():      # seq descending within a key: the first is the newest
            first.setdefault(k, (k, sk, bytes(v)))
        assert list(zip(*newest[:3])) == sorted(first.values())
        assert newest[3].tolist() == list(map(len, newest[0]))
        assert newest[4].tolist() == list(map(len, newest[2]))
    finally:
        gil.CHUNK, keyruns.SORT_IN_NUMPY, keyruns.LEX_WIDTH = saved
        m.close()


def test_newest_lists_of_a_full_memtable_written_in_bulk(tmp_path):
    """Keys added in bulk batches and one by one, versions of some written
    again, the arena filled to its last byte by a short key whose padded
    row reaches past the mapping: the keys read from the arena sort as the
    keys do."""
    rng = random.Random(11)
    m = Memtable(OSFileSystem(), str(tmp_path / "b.seg"), 9, CAP)
    saved = keyruns.SORT_IN_NUMPY
    keyruns.SORT_IN_NUMPY = 0
    try:
        seq = 1
        keys: list[bytes] = []
        while True:
            batch = list({rng.randbytes(rng.randint(1, 20)): None for _ in range(BULK_MIN)})
            ops = [(V, k, rng.randbytes(rng.randint(60, 150))) for k in batch]
            if not m.fits(sum(Memtable.record_size(len(k), len(v)) for _, k, v in ops), len(ops)):
                break
            m.add_batch(seq, ops)
            seq += len(ops)
            keys += batch
        assert len(keys) >= 2 * BULK_MIN
        while m.capacity - m.arena_used > 400:                 # then one by one, some keys again
            k = rng.choice(keys) if rng.random() < 0.3 else rng.randbytes(rng.randint(1, 20))
            if not m.fits(Memtable.record_size(len(k), 50)):
                k = rng.choice(keys)
            m.add(seq, V, k, rng.randbytes(50))
            seq += 1
            if k not in keys:
                keys.append(k)
        k = keys[0]                                             # a record that leaves 32 bytes
        m.add(seq, V, k, b"v" * (m.capacity - m.arena_used - 32 - 24 - len(k)))
        seq += 1
        assert m.capacity - m.arena_used == 32
        m.add(seq, V, b"\x00", b"")                          # the arena's last record: 32 bytes
        assert m.arena_used == m.capacity
        newest = m.newest_lists(newest_only=True)
        assert newest is not None
        first = {}
        for k, sk, v in m.iter_internal():
            first.setdefault(k, (k, sk, bytes(v)))
        assert list(zip(*newest[:3])) == sorted(first.values())
        assert newest[3].tolist() == list(map(len, newest[0]))
    finally:
        keyruns.SORT_IN_NUMPY = saved
        m.close()
