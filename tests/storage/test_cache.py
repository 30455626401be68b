"""Block cache: LRU order, byte accounting, erase_file, stats, factory."""

from __future__ import annotations

import threading

import pytest

from lightning_db.errors import InvalidArgument
from lightning_db.storage.cache import CachePolicy, LRUCache, make_cache


def test_hit_miss_and_stats():
    c = LRUCache(100)
    assert c.get((1, 0)) is None
    c.put((1, 0), "a", 10)
    assert c.get((1, 0)) == "a"
    s = c.stats()
    assert s == {"policy": "lru", "hits": 1, "misses": 1, "evictions": 0, "size": 10,
                 "capacity": 100, "entries": 1}


def test_evicts_least_recently_used():
    c = LRUCache(30)
    for i in range(3):
        c.put((1, i), i, 10)
    assert c.get((1, 0)) == 0          # (1, 1) is now the oldest
    c.put((1, 3), 3, 10)
    assert c.get((1, 1)) is None
    assert [c.get((1, i)) for i in (0, 2, 3)] == [0, 2, 3]
    assert c.stats()["evictions"] == 1 and c.stats()["size"] == 30


def test_big_put_evicts_several_and_oversized_is_skipped():
    c = LRUCache(30)
    for i in range(3):
        c.put((1, i), i, 10)
    c.put((2, 0), "big", 25)
    assert c.stats()["entries"] == 1 and c.stats()["size"] == 25
    c.put((3, 0), "huge", 31)
    assert c.get((3, 0)) is None and c.stats()["size"] == 25


def test_replace_updates_charge():
    c = LRUCache(100)
    c.put((1, 0), "a", 10)
    c.put((1, 0), "b", 40)
    assert c.get((1, 0)) == "b" and c.stats()["size"] == 40 and c.stats()["entries"] == 1


def test_capacity_zero_caches_nothing():
    c = LRUCache(0)
    c.put((1, 0), "a", 1)
    assert c.get((1, 0)) is None and c.stats()["entries"] == 0


def test_erase_file_and_clear():
    c = LRUCache(1000)
    for f in (1, 2):
        for off in range(5):
            c.put((f, off), (f, off), 10)
    c.erase_file(1)
    c.erase_file(99)
    assert all(c.get((1, o)) is None for o in range(5))
    assert all(c.get((2, o)) == (2, o) for o in range(5))
    assert c.stats()["size"] == 50
    c.put((1, 0), "again", 10)        # the per-file index is still consistent
    c.erase_file(1)
    assert c.get((1, 0)) is None
    c.clear()
    assert c.stats()["entries"] == 0 and c.stats()["size"] == 0


def test_eviction_keeps_file_index_consistent():
    c = LRUCache(20)
    for off in range(10):
        c.put((7, off), off, 10)
    c.erase_file(7)
    assert c.stats()["size"] == 0 and c.stats()["entries"] == 0


def test_threads():
    c = LRUCache(500)

    def work(t):
        for i in range(2000):
            k = (t, i % 50)
            if c.get(k) is None:
                c.put(k, i, 7)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = c.stats()
    assert s["size"] <= 500 and s["size"] == 7 * s["entries"]
    assert s["hits"] + s["misses"] == 8000


def test_make_cache():
    c = make_cache("lru", 10)
    assert isinstance(c, LRUCache) and isinstance(c, CachePolicy)
    with pytest.raises(InvalidArgument, match="lru"):
        make_cache("arc", 10)
    with pytest.raises(InvalidArgument):
        make_cache("lru", -1)


def test_clock_gives_referenced_blocks_a_second_chance():
    from lightning_db.storage.cache import ClockCache
    c = ClockCache(300)
    for i in range(3):
        c.put((1, i), f"b{i}", 100)
    assert c.get((1, 0)) == "b0"              # referenced: survives the next eviction
    c.put((1, 3), "b3", 100)
    assert c.get((1, 0)) == "b0"
    assert c.get((1, 1)) is None              # the oldest unreferenced block went
    s = c.stats()
    assert s["policy"] == "clock" and s["size"] <= 300 and s["evictions"] == 1
    c.put((2, 0), "x", 100)
    c.erase_file(1)
    assert c.get((1, 0)) is None and c.get((2, 0)) == "x"
    assert c.stats()["size"] == 100


def test_clock_never_exceeds_capacity_under_churn():
    import random
    from lightning_db.storage.cache import ClockCache
    rng = random.Random(5)
    c = ClockCache(10_000)
    for _ in range(5000):
        k = (rng.randrange(4), rng.randrange(200))
        if c.get(k) is None:
            c.put(k, k, rng.randrange(1, 900))
        assert c.stats()["size"] <= 10_000
