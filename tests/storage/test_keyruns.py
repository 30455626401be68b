"""KeyRuns: a segment's sorted keys as a big and a small run (storage/keyruns.py)."""

from __future__ import annotations

import random
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_db.storage import gil, keyruns
from lightning_db.storage.keyruns import KeyRuns, fold_at


def _expected(keys, start, end, reverse):
    out = sorted(k for k in keys if (start is None or k >= start) and (end is None or k < end))
    return out[::-1] if reverse else out


keys_st = st.lists(st.binary(min_size=1, max_size=3), unique=True, max_size=60)
bound_st = st.none() | st.binary(min_size=0, max_size=3)


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(keys_st, max_size=6), start=bound_st, end=bound_st, reverse=st.booleans(),
       min_fold=st.sampled_from([1, 4, 1024]))
def test_ranges_match_a_sorted_list(batches, start, end, reverse, min_fold):
    old = keyruns.MIN_FOLD
    keyruns.MIN_FOLD = min_fold
    try:
        runs = KeyRuns([])
        seen: set[bytes] = set()
        history = []
        for batch in batches:
            new = sorted(set(batch) - seen)
            seen.update(new)
            runs = runs.add(new)
            history.append((runs, set(seen)))
            assert runs.count == len(seen)
            assert runs.full() == sorted(seen)
            assert list(runs.range(start, end, reverse)) == _expected(seen, start, end, reverse)
        # Earlier runs never change: each still gives the keys it had.
        for r, had in history:
            assert list(r.range(start, end, reverse)) == _expected(had, start, end, reverse)
    finally:
        keyruns.MIN_FOLD = old


def test_the_small_run_is_folded_into_the_big_one_past_its_limit():
    rng = random.Random(7)
    keys = [b"%08d" % i for i in rng.sample(range(10**6), 20_000)]
    runs = KeyRuns(sorted(keys[:10_000]))
    limit = fold_at(10_000)
    step = 100
    folded = False
    for i in range(10_000, 20_000, step):
        before = runs
        runs = runs.add(sorted(keys[i:i + step]))
        if len(runs.small) == 0:
            folded = True
            assert len(before.small) + step > limit
        else:
            assert len(runs.small) <= fold_at(len(runs.big))
            assert runs.big is before.big            # the big run is shared, not copied
    assert folded
    assert runs.full() == sorted(keys)


def test_an_iterator_keeps_its_keys_while_keys_are_added():
    runs = KeyRuns([b"b", b"d", b"f"])
    it = runs.range(None, None, False)
    assert next(it) == b"b"
    later = runs.add([b"c", b"e"])
    assert list(it) == [b"d", b"f"]
    assert list(later.range(None, None, False)) == [b"b", b"c", b"d", b"e", b"f"]
    assert list(later.range(b"c", b"f", True)) == [b"e", b"d", b"c"]


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.binary(min_size=1, max_size=4).map(lambda b: b.replace(b"\x01", b"\x00")), unique=True,
                     max_size=80),
       chunk=st.sampled_from([1, 3, 4096]), prefix=st.sampled_from([1, 2, 64]), lex=st.sampled_from([0, 32]))
def test_sort_keys_in_numpy_is_sorted(keys, chunk, prefix, lex):
    """Every path of the numpy sort (as 64-bit words, and as bytes strings
    when *lex* is 0), in chunks of any size, keys that differ only in
    trailing NULs (numpy ties them: b"a" < b"a\\0" < b"a\\0\\0") and keys
    longer than the prefix numpy sorts on."""
    saved = gil.CHUNK, keyruns.SORT_IN_NUMPY, keyruns.SORT_PREFIX, keyruns.LEX_WIDTH
    gil.CHUNK, keyruns.SORT_IN_NUMPY, keyruns.SORT_PREFIX, keyruns.LEX_WIDTH = chunk, 0, prefix, lex
    try:
        assert keyruns.sort_keys(keys) == sorted(keys)
        assert [keys[i] for i in keyruns.sort_order(keys)] == sorted(keys)
    finally:
        gil.CHUNK, keyruns.SORT_IN_NUMPY, keyruns.SORT_PREFIX, keyruns.LEX_WIDTH = saved


def test_sort_keys_of_a_big_segment():
    rng = random.Random(7)
    keys = {rng.randbytes(rng.randint(1, 24)) for _ in range(30_000)}
    keys |= {k + b"\0" * rng.randint(1, 3) for k in list(keys)[:2000]}       # trailing-NUL twins
    keys |= {b"p" * 70 + rng.randbytes(rng.randint(0, 40)) for _ in range(3000)}   # past SORT_PREFIX
    keys.add(b"k" * 65536)                                                        # one huge key
    keys = list(keys)
    rng.shuffle(keys)
    assert len(keys) > keyruns.SORT_IN_NUMPY
    assert keyruns.sort_keys(keys) == sorted(keys)
    short = [k for k in keys if len(k) <= keyruns.LEX_WIDTH]      # sorted as 64-bit words
    assert len(short) > keyruns.SORT_IN_NUMPY
    assert [short[i] for i in keyruns.sort_order(short)] == sorted(short)


def test_pause_steps_aside_on_background_threads_only():
    slept = []
    real = gil._sleep
    gil._sleep = slept.append
    try:
        gil.pause()                                   # this thread is not a background one
        assert slept == []

        def bg():
            gil.background()
            for _ in range(3):
                t = time.perf_counter()
                while time.perf_counter() - t < gil.PAUSE_EVERY_S * 1.5:
                    pass                              # a millisecond and a half of work
                gil.pause()

        t = threading.Thread(target=bg)
        t.start()
        t.join()
        assert len(slept) == 3
    finally:
        gil._sleep = real
