"""Point lookups over one version: shared by the engine (its own memtables
and tables) and by published-version readers in other processes (segment
readers and tables they mapped themselves). Any thread, no locks."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from .bloom import key_hash
from .version import Version


def lookup(mems: Sequence[Any], version: Version, key: bytes, seq: int,
           copy: bool = True, h: int | None = None) -> tuple[int, Any] | None:
    """(kind, value) of the newest version of *key* with seq <= *seq* in
    *mems* (newest first, each with ``get(key, seq)``) and then the tables
    of *version*, or None. A tombstone comes back as (Kind.DELETE, b"").
    ``copy=False``: the value is a memoryview into the mapped data. *h*:
    the key's ``key_hash`` where the caller has it (else computed once, if
    a source needs it)."""
    for m in mems:
        r = m.get(key, seq, copy, h)
        if r is not None:
            return r
    for f in version.levels[0]:
        if f.smallest <= key <= f.largest:
            if h is None:
                h = key_hash(key)
            r = f.reader.get(key, seq, h, True, copy)
            if r is not None:
                return r
    for files, largest in version.upper:
        i = bisect_left(largest, key)
        if i < len(files) and files[i].smallest <= key:
            if h is None:
                h = key_hash(key)
            r = files[i].reader.get(key, seq, h, True, copy)
            if r is not None:
                return r
    last = version.last
    if last is not None:
        # The last level: most lookups of present keys end here, and the
        # point index answers a miss as fast as the filter would.
        files, largest = last
        i = bisect_left(largest, key)
        if i < len(files):
            f = files[i]
            if f.smallest <= key:
                return f.reader.get(key, seq, h, False, copy)
    return None
