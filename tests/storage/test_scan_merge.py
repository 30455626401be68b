"""The chunked k-way merge behind cross-shard scans (storage/scan.py)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_db.storage.scan import CHUNK_MAX, CHUNK_MIN, chunked, first_chunk, merge_chunks


def _split(keys: list[bytes], nsources: int, rng: random.Random, reverse: bool) -> list[list[list[tuple]]]:
    """Disjoint sources over *keys*, each cut into chunks of random sizes."""
    owned: list[list[tuple]] = [[] for _ in range(nsources)]
    for k in keys:
        owned[rng.randrange(nsources)].append((k, b"v" + k))
    sources = []
    for pairs in owned:
        pairs.sort(reverse=reverse)
        chunks, i = [], 0
        while i < len(pairs):
            n = rng.randint(1, 7)
            chunks.append(pairs[i:i + n])
            i += n
        sources.append(chunks)
    return sources


@settings(max_examples=200, deadline=None)
@given(st.sets(st.binary(max_size=4), max_size=80), st.integers(1, 5), st.booleans(), st.integers(0, 2**32))
def test_merge_chunks_is_the_sorted_union(keys: set[bytes], nsources: int, reverse: bool, seed: int) -> None:
    rng = random.Random(seed)
    sources = _split(sorted(keys), nsources, rng, reverse)
    merged = [p for c in merge_chunks([iter(s) for s in sources], reverse) for p in c]
    assert merged == sorted(((k, b"v" + k) for k in keys), reverse=reverse)


def test_merge_chunks_skips_empty_chunks_and_sources() -> None:
    a = iter([[], [(b"a", b"1")], [], [(b"c", b"3")]])
    b = iter([[(b"b", b"2")], []])
    merged = [p for c in merge_chunks([a, iter([]), b], False) for p in c]
    assert merged == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]


def test_merge_chunks_never_compares_values() -> None:
    class Opaque:          # comparing one raises: a value must never be compared
        def __lt__(self, other: object) -> bool:
            raise AssertionError("values compared")
        __gt__ = __le__ = __ge__ = __lt__

    left = [[(b"a", Opaque()), (b"c", Opaque())]]
    right = [[(b"b", Opaque()), (b"d", Opaque())]]
    merged = [p[0] for c in merge_chunks([iter(left), iter(right)], False) for p in c]
    assert merged == [b"a", b"b", b"c", b"d"]


def test_chunked_grows_from_min_to_max_and_keeps_every_pair() -> None:
    pairs = [(i.to_bytes(4, "big"), b"") for i in range(10_000)]
    chunks = list(chunked(iter(pairs)))
    assert [p for c in chunks for p in c] == pairs
    assert len(chunks[0]) == CHUNK_MIN and len(chunks[1]) == 2 * CHUNK_MIN
    assert max(map(len, chunks)) == CHUNK_MAX


def test_merge_chunks_reads_a_drained_source_on_only_when_asked() -> None:
    pulled: list[int] = []

    def source(n: int, chunks: list[list[tuple]]):
        for i, c in enumerate(chunks):
            pulled.append(n)
            yield c

    a = source(0, [[(b"a", b""), (b"c", b"")], [(b"e", b"")]])
    b = source(1, [[(b"b", b""), (b"d", b"")], [(b"f", b"")]])
    it = merge_chunks([a, b], False)
    assert next(it) == [(b"a", b""), (b"b", b""), (b"c", b"")]
    assert pulled == [0, 1]                  # the first chunk of each, nothing more yet
    rest = [p for c in it for p in c]
    assert rest == [(b"d", b""), (b"e", b""), (b"f", b"")]


def test_first_chunk_follows_the_limit() -> None:
    assert first_chunk(None) == first_chunk(None, 2) == CHUNK_MIN
    assert first_chunk(1) == 1 and first_chunk(50) == 50 and first_chunk(10**9) == CHUNK_MAX
    assert first_chunk(0) == 1
    for limit in (1, 2, 3, 10, 50, 100, 5000):
        for ways in (2, 3, 8):
            f = first_chunk(limit, ways)
            assert 1 <= f <= min(limit, CHUNK_MAX)
            assert f * ways >= min(limit, CHUNK_MAX)          # together the first chunks cover the limit

