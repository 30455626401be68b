import random
import subprocess
import sys
from bisect import bisect_left

import numpy as np
import pytest

from lightning_db.errors import InvalidArgument
from lightning_db.shards.ring import SLICE_SHIFT, HashRing

KEYS = [b"key-%d" % i for i in range(20000)]


def test_every_key_has_one_owner_and_vectorised_agrees():
    ring = HashRing(4)
    one = [ring.shard_of(k) for k in KEYS]
    assert set(one) == {0, 1, 2, 3}
    assert ring.shards_of(KEYS).tolist() == one
    assert ring.shards_list(KEYS) == one
    for keys in (KEYS, KEYS[:5], KEYS[:1], []):          # numpy for a batch, plain Python for a few
        groups = ring.split(keys)
        assert sorted(p for g in groups.values() for p in g) == list(range(len(keys)))
        assert all(one[p] == s and g == sorted(g) for s, g in groups.items() for p in g)


def _searched(ring: HashRing, h: int) -> int:
    """The owner by definition: the first point at or after *h*, wrapping."""
    points = ring._points
    i = bisect_left(points, h)
    return ring._owners[i if i < len(points) else 0]


@pytest.mark.parametrize("shards, vnodes", [(1, 256), (2, 256), (7, 256), (64, 16), (3, 1), (4096, 1)])
def test_the_slice_table_agrees_with_the_points(shards, vnodes):
    ring = HashRing(shards, vnodes)
    rng = random.Random(shards * 1000 + vnodes)
    edges = [(p + d) % (1 << 64) for p in ring._points[::max(1, len(ring._points) // 300)] for d in (-1, 0, 1)]
    cuts = [(b << SLICE_SHIFT) + d for b in range(0, 1 << (64 - SLICE_SHIFT), 251) for d in (0, -1)]
    cuts = [c % (1 << 64) for c in cuts] + [0, (1 << 64) - 1]
    hashes = edges + cuts + [rng.getrandbits(64) for _ in range(20000)]
    for h in hashes:
        assert ring.owner(h) == _searched(ring, h), hex(h)
    assert ring._owners_of(np.array(hashes, dtype=np.uint64)).tolist() == list(map(ring.owner, hashes))
    ambiguous = sum(s < 0 for s in ring.direct)
    assert ambiguous <= len(ring._points)          # at most one slice per point needs the search


def test_balance_with_virtual_nodes():
    ring = HashRing(8)
    counts = [0] * 8
    for k in KEYS:
        counts[ring.shard_of(k)] += 1
    mean = len(KEYS) / 8
    assert max(counts) < 1.25 * mean and min(counts) > 0.75 * mean


def test_growing_moves_about_one_share():
    a, b = HashRing(4), HashRing(5)
    moved = sum(a.shard_of(k) != b.shard_of(k) for k in KEYS)
    assert moved < len(KEYS) * 0.3                   # ideal 1/5 = 20%
    assert all(b.shard_of(k) == 4 for k in KEYS if a.shard_of(k) != b.shard_of(k))


def test_stable_across_processes():
    ring = HashRing(3)
    code = ("from lightning_db.shards.ring import SLICE_SHIFT, HashRing; r = HashRing(3); "
            "print(','.join(str(r.shard_of(b'key-%d' % i)) for i in range(200)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ",".join(str(ring.shard_of(b"key-%d" % i)) for i in range(200))


def test_single_shard_and_bad_arguments():
    assert HashRing(1).shards_of(KEYS[:10]).tolist() == [0] * 10
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(InvalidArgument, match="shards"):
            HashRing(bad)
