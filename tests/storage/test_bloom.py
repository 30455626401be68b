"""Bloom filter: no false negatives, ~1% false positives at 10 bits/key,
scalar and vectorized probes agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lightning_db.storage.bloom import FILTER_HEADER, BloomFilter, build_filter, key_hash


def _hashes(keys):
    return [key_hash(k) for k in keys]


def test_key_hash_is_xxh3():
    import xxhash
    assert key_hash(b"abc") == xxhash.xxh3_64_intdigest(b"abc")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=24), max_size=300), st.integers(1, 20))
def test_no_false_negatives(keys, bits):
    hs = _hashes(keys)
    f = BloomFilter(build_filter(hs, bits))
    assert all(f.may_contain(h) for h in hs)
    assert f.may_contain_many(np.array(hs, dtype=np.uint64)).all()


def test_false_positive_rate():
    keys = [b"key%d" % i for i in range(20000)]
    f = BloomFilter(build_filter(np.array(_hashes(keys), dtype=np.uint64), 10))
    probes = _hashes(b"other%d" % i for i in range(20000))
    fp = sum(f.may_contain(h) for h in probes)
    assert fp / len(probes) < 0.03
    assert int(f.may_contain_many(probes).sum()) == fp


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=200),
       st.lists(st.integers(0, 2**64 - 1), max_size=200), st.integers(1, 16))
def test_scalar_and_vector_agree(members, probes, bits):
    f = BloomFilter(build_filter(members, bits))
    many = f.may_contain_many(np.array(probes + members, dtype=np.uint64))
    assert list(many) == [f.may_contain(h) for h in probes + members]


def test_zero_bits_always_true():
    buf = build_filter(_hashes([b"a", b"b"]), 0)
    f = BloomFilter(buf)
    assert f.may_contain(12345) and f.may_contain(0)
    assert f.may_contain_many(np.array([1, 2, 3], dtype=np.uint64)).all()


def test_empty_filter_rejects_everything():
    f = BloomFilter(build_filter([], 10))
    assert not f.may_contain(key_hash(b"x"))
    assert f.may_contain_many(np.array([], dtype=np.uint64)).shape == (0,)


def test_probe_count_clamped():
    nbits, k = FILTER_HEADER.unpack_from(build_filter([1, 2], 1000))
    assert k == 30 and nbits >= 2000
    nbits, k = FILTER_HEADER.unpack_from(build_filter([1, 2], 1))
    assert k == 1


@pytest.mark.parametrize("buf", [b"", b"\x01", FILTER_HEADER.pack(64, 0) + bytes(8),
                                 FILTER_HEADER.pack(64, 7) + bytes(7),
                                 FILTER_HEADER.pack(63, 7) + bytes(8),
                                 FILTER_HEADER.pack(0, 3)])
def test_malformed_filter_rejected(buf):
    with pytest.raises(ValueError):
        BloomFilter(buf)


def test_accepts_memoryview():
    hs = _hashes([b"a", b"b", b"c"])
    f = BloomFilter(memoryview(build_filter(hs, 10)))
    assert all(f.may_contain(h) for h in hs)
