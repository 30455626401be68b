"""The block cache: decoded table blocks kept in memory, charged in bytes.

Lives in the shard process (one cache per shard, shared by all its table
readers); every method is safe from any thread. Keys are
``(file_number, block_offset)`` tuples, so ``erase_file`` can drop every block
of a deleted table. The replacement policy sits behind ``CachePolicy`` so that
ARC or W-TinyLFU can be added next to ``LRUCache``; ``make_cache`` picks one by
the name in ``Config.block_cache_policy``.
"""

from __future__ import annotations

import abc
import threading
from collections import OrderedDict
from typing import Any, Hashable

from ..errors import InvalidArgument

__all__ = ["CachePolicy", "LRUCache", "ClockCache", "make_cache", "POLICIES"]


class CachePolicy(abc.ABC):
    """A byte-charged cache of decoded blocks keyed by (file_number, offset)."""

    name: str = "?"

    @abc.abstractmethod
    def get(self, key: Hashable) -> Any | None:
        """The cached value, or None (a miss)."""

    @abc.abstractmethod
    def put(self, key: Hashable, value: Any, charge: int) -> None:
        """Insert (or replace) *key*, charging *charge* bytes; may evict."""

    @abc.abstractmethod
    def erase_file(self, number: int) -> None:
        """Drop every block of table file *number* (the file was deleted)."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Drop everything (counters are kept)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """hits, misses, evictions, size (bytes charged), capacity, entries, policy."""


class LRUCache(CachePolicy):
    """Least-recently-used eviction until the charged size fits *capacity*
    bytes. Capacity 0 caches nothing; an entry larger than the capacity is
    not inserted."""

    name = "lru"

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 0:
            raise InvalidArgument(f"cache capacity must be an integer >= 0, got {capacity!r}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._map: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._by_file: dict[Any, set[Hashable]] = {}
        self._size = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, key: Hashable) -> Any | None:
        # Hot path, lock-free: move_to_end and the lookup are each one C call
        # that holds the GIL, so a concurrent put/evict can only make the key
        # vanish between them, which reads as a miss. The counters may lose
        # an increment under contention; they are statistics.
        m = self._map
        try:
            m.move_to_end(key)
            v = m[key][0]
        except KeyError:
            self._misses += 1
            return None
        self._hits += 1
        return v

    def put(self, key: Hashable, value: Any, charge: int) -> None:
        with self._lock:
            m = self._map
            old = m.pop(key, None)
            if old is not None:
                self._size -= old[1]
                self._forget(key)
            if charge > self.capacity:
                return
            m[key] = self._entry(value, charge)
            self._size += charge
            self._by_file.setdefault(key[0], set()).add(key)  # type: ignore[index]
            while self._size > self.capacity:
                self._evict_one(key)

    def _entry(self, value: Any, charge: int) -> Any:
        return (value, charge)

    def _evict_one(self, inserted: Hashable) -> None:
        """REQUIRES: the lock. Drop the least recently used entry."""
        k, e = self._map.popitem(last=False)
        self._size -= e[1]
        self._evictions += 1
        self._forget(k)

    def _forget(self, key: Hashable) -> None:
        number = key[0]  # type: ignore[index]
        keys = self._by_file.get(number)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_file[number]

    def erase_file(self, number: int) -> None:
        with self._lock:
            keys = self._by_file.pop(number, None)
            if not keys:
                return
            m = self._map
            for key in keys:
                entry = m.pop(key, None)
                if entry is not None:
                    self._size -= entry[1]

    def clear(self) -> None:
        with self._lock:
            self._map.clear()
            self._by_file.clear()
            self._size = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "policy": self.name,
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
                "size": self._size,
                "capacity": self.capacity,
                "entries": len(self._map),
            }


class ClockCache(LRUCache):
    """CLOCK (second chance): a hit only sets a reference bit, so the read
    path touches one dict entry instead of relinking LRU list nodes; at
    eviction the oldest entry is dropped unless its bit is set, in which case
    the bit is cleared and the entry goes round again. Approximates LRU."""

    name = "clock"

    def get(self, key: Hashable) -> Any | None:
        e = self._map.get(key)
        if e is None:
            self._misses += 1
            return None
        e[2] = True
        self._hits += 1
        return e[0]

    def _entry(self, value: Any, charge: int) -> Any:
        return [value, charge, False]

    def _evict_one(self, inserted: Hashable) -> None:
        """REQUIRES: the lock. The oldest entry goes unless it was referenced
        since the hand last passed (and is not the one just inserted)."""
        m = self._map
        while True:
            k, e = m.popitem(last=False)
            if e[2] and k != inserted:
                e[2] = False                     # second chance
                m[k] = e
                continue
            self._size -= e[1]
            self._evictions += 1
            self._forget(k)
            return


POLICIES: dict[str, type[CachePolicy]] = {"lru": LRUCache, "clock": ClockCache}


def make_cache(policy: str, capacity: int) -> CachePolicy:
    """Build the cache named by *policy* (``Config.block_cache_policy``)."""
    cls = POLICIES.get(policy)
    if cls is None:
        raise InvalidArgument(f"unknown block cache policy {policy!r}; allowed: "
                              f"{', '.join(sorted(POLICIES))}")
    return cls(capacity)  # type: ignore[call-arg]
