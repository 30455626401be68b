"""Redis glob patterns (KEYS, SCAN MATCH, CONFIG GET, COMMAND LIST) over bytes.

Redis's ``stringmatchlen``: ``*`` any run of bytes, ``?`` one byte,
``[abc]``, ``[^abc]`` and ``[a-z]`` one byte of (or not of) a set, ``\\x``
the byte x itself. As in Redis, a range given backwards (``[z-a]``) means
the same as forwards, a range's end is the byte after the ``-`` whatever it
is (``[a-]`` is the range from ``]`` to ``a``, and the set goes on; in
``[a-\\]`` the backslash ends the range), and a ``[`` left open runs to the
end of the pattern.
A pattern is translated once to a compiled regular expression (cached).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

__all__ = ["literal_prefix", "matcher"]

_SPECIAL = b"*?[\\"


def _byte(c: int) -> bytes:
    return re.escape(bytes([c]))


def _class(p: bytes, i: int) -> tuple[bytes, int]:
    """The regex of the set starting after ``[`` at *i*, and the index after it."""
    n = len(p)
    negate = i < n and p[i] == 0x5E
    if negate:
        i += 1
    parts: list[bytes] = []
    while i < n and p[i] != 0x5D:
        c = p[i]
        if c == 0x5C and i + 1 < n:
            i += 1
            parts.append(_byte(p[i]))
        elif i + 2 < n and p[i + 1] == 0x2D:       # the range's end is the next byte, whatever it is
            lo, hi = c, p[i + 2]
            if lo > hi:
                lo, hi = hi, lo
            parts.append(_byte(lo) + b"-" + _byte(hi))
            i += 2
        else:
            parts.append(_byte(c))
        i += 1
    i += 1                                          # past "]" (or the end)
    if not parts:
        return (b"[\\x00-\\xff]" if negate else b"(?!)"), i
    return b"[" + (b"^" if negate else b"") + b"".join(parts) + b"]", i


@lru_cache(maxsize=256)
def _compile(pattern: bytes) -> re.Pattern[bytes]:
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:
            while i + 1 < n and pattern[i + 1] == 0x2A:
                i += 1
            out.append(b".*")
        elif c == 0x3F:
            out.append(b".")
        elif c == 0x5B:
            cls, i = _class(pattern, i + 1)
            out.append(cls)
            continue
        elif c == 0x5C and i + 1 < n:
            i += 1
            out.append(_byte(pattern[i]))
        else:
            out.append(_byte(c))
        i += 1
    return re.compile(b"".join(out), re.DOTALL)


def matcher(pattern: bytes, nocase: bool = False) -> Callable[[bytes], bool]:
    """A function telling whether a byte string matches *pattern*."""
    if pattern == b"*":
        return lambda s: True
    rx = _compile(pattern.lower() if nocase else pattern)
    if nocase:
        return lambda s: rx.fullmatch(s.lower()) is not None
    return lambda s: rx.fullmatch(s) is not None


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every match starts with (up to the first special byte)."""
    for i, c in enumerate(pattern):
        if c in _SPECIAL:
            return pattern[:i]
    return pattern
