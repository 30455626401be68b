"""Published versions (storage/published.py): the engine publishes, a reader
answers point reads from the mapped files without the engine's help."""

from __future__ import annotations

import os
import struct

from lightning_db.config import Config
from lightning_db.storage.engine import Engine
from lightning_db.storage.published import UNAVAILABLE, PublishedReader, Publisher

CFG = Config(memtable_size=64 * 1024, l0_compaction_trigger=2)


def test_reader_follows_writes_flushes_and_compactions(tmp_path):
    pub = str(tmp_path / "shard.pub")
    e = Engine(str(tmp_path / "s"), CFG, publish=pub)
    r = PublishedReader(pub)
    try:
        expect = {}
        for rnd in range(6):
            for i in range(0, 1500, 7):
                k, v = b"k%05d" % i, b"v%d-%d" % (i, rnd) + b"." * 50
                e.write([(1, k, v)])
                expect[k] = v
                assert r.get(k) == v                     # visible as soon as the write returned
            e.write([(0, b"k%05d" % 7, b"")])
            expect.pop(b"k%05d" % 7)
            if rnd % 2:
                e.flush()
        e.compact()
        assert e.stats()["compactions"] + e.stats()["trivial_moves"] >= 1
        assert [k for k in expect if r.get(k) != expect[k]] == []
        assert r.get(b"k%05d" % 7) is None and r.get(b"absent") is None
        keys = sorted(expect) + [b"absent"]
        assert r.get_many(keys) == [expect.get(k) for k in keys]
        assert r.loads >= 4                              # it followed new versions
        seq = e.last_sequence
        e.write([(1, b"k00000", b"newer")])
        assert r.get(b"k00000", seq) == expect[b"k00000"]  # as of an older sequence number
    finally:
        r.close()
        e.close()


def test_not_serving_while_closed_and_a_new_incarnation_after_reopen(tmp_path):
    pub, path = str(tmp_path / "shard.pub"), str(tmp_path / "s")
    e = Engine(path, CFG, publish=pub)
    e.write([(1, b"a", b"1")])
    r = PublishedReader(pub)
    inc1 = r.state()[0]
    assert inc1 and r.get(b"a") == b"1"
    e.close()
    assert r.state()[0] == 0 and r.get(b"a") is UNAVAILABLE
    e = Engine(path, CFG, publish=pub)
    try:
        inc2 = r.state()[0]
        assert inc2 and inc2 != inc1
        assert r.get(b"a") == b"1"
        e.write([(1, b"a", b"2")])
        assert r.get(b"a") == b"2"
    finally:
        e.close()
        r.close()


def test_a_partial_batch_is_never_visible(tmp_path):
    """Records of a batch are in the segment before the visible sequence
    number covers them: the reader filters them out until then."""
    pub = str(tmp_path / "shard.pub")
    e = Engine(str(tmp_path / "s"), CFG, publish=pub)
    r = PublishedReader(pub)
    try:
        e.write([(1, b"x", b"old")])
        mem = e._sv.mem
        mem.add_batch(e.last_sequence + 1, [(1, b"x", b"half")])   # in the segment, not yet visible
        assert r.get(b"x") == b"old"
    finally:
        r.close()
        e.close()


def test_seqlock_retries_while_odd(tmp_path):
    pub = str(tmp_path / "p")
    p = Publisher(pub)
    r = PublishedReader(pub)
    seq = struct.unpack_from("<Q", p._mm, 16)[0]
    assert seq % 2 == 0 and r.state() == (0, 0, 0)
    p.close()
    r.close()
    assert os.path.exists(pub)


def test_a_vanished_version_file_makes_the_reader_read_again(tmp_path):
    pub = str(tmp_path / "shard.pub")
    e = Engine(str(tmp_path / "s"), CFG, publish=pub)
    r = PublishedReader(pub)
    try:
        e.write([(1, b"a", b"1")])
        gen = r.state()[1]
        os.remove(f"{pub}.{gen}")                # as if superseded between the two reads
        assert r.get(b"a") is UNAVAILABLE        # asks the shard instead of guessing
        e.flush()                                 # a new version file
        assert r.get(b"a") == b"1"
    finally:
        r.close()
        e.close()


def test_reader_scans_match_the_engine_while_it_writes(tmp_path):
    """Ordered reads from the published version: the same pairs as the
    engine's own scan at the same moment, forward and reverse, with bounds,
    while writes, flushes and compactions go on between the scans."""
    import random

    pub = str(tmp_path / "shard.pub")
    e = Engine(str(tmp_path / "s"), CFG, publish=pub)
    r = PublishedReader(pub)
    rng = random.Random(5)
    try:
        for rnd in range(40):
            for _ in range(150):
                k = b"k%04d" % rng.randrange(800)
                if rng.random() < 0.2:
                    e.write([(0, k, b"")])
                else:
                    e.write([(1, k, b"r%d" % rnd + b"." * rng.randrange(60))])
            if rnd % 7 == 3:
                e.flush()
            lo = None if rnd % 3 == 0 else b"k%04d" % rng.randrange(800)
            hi = None if rnd % 4 == 0 else b"k%04d" % rng.randrange(800)
            for reverse in (False, True):
                assert list(r.scan(lo, hi, reverse)) == list(e.scan(lo, hi, reverse)), (rnd, lo, hi, reverse)
        it = r.scan(None, None)                 # a scan holds its version
        first = next(it)
        e.write([(1, b"k0000", b"later")])
        e.flush()
        e.compact()
        rest = list(it)
        assert (b"k0000", b"later") not in [first, *rest]
    finally:
        r.close()
        e.close()


def _versions(e: Engine) -> int:
    return sum(f.reader.entries for f in e._sv.version.files())


def test_overwritten_versions_go_at_once_unless_a_snapshot_was_cut_lately(tmp_path):
    """A shard keeps the last SNAPSHOT_LAG_S seconds of versions for
    snapshots cut from shared memory and registered later, only while cuts
    are being noted: without one, a compaction drops what was overwritten."""
    for cut, expect in ((False, 100), (True, 200)):
        pub = str(tmp_path / f"shard-{cut}.pub")
        e = Engine(str(tmp_path / f"s-{cut}"), CFG, publish=pub)
        r = PublishedReader(pub)
        try:
            for gen in (1, 2):
                e.write([(1, b"k%03d" % i, b"v%d" % gen) for i in range(100)])
            if cut:
                r.note_cut()                # as shards/snapshot.py does before reading the seqs
            e.flush()
            e.compact()
            assert _versions(e) == expect, cut
            assert [r.get(b"k%03d" % i) for i in range(100)] == [b"v2"] * 100
        finally:
            r.close()
            e.close()
