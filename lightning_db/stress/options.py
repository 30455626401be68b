"""Parsing the harness's option values: durations, intervals, fault lists.

Pure functions; a bad value raises ``InvalidArgument`` naming it (the
command line turns that into exit status 2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import InvalidArgument
from .target import FAULTS

__all__ = ["DURATION_OPTIONS", "join_dashed_values", "parse_duration", "parse_faults", "parse_interval"]

# The options whose value is a duration or an interval: argparse takes a
# value like "-5s" for an option of its own, so the command line joins it
# to its option first and the parser below names what is wrong with it.
DURATION_OPTIONS = ("--duration", "--fault-interval", "--pause", "--rotate")
_DASHED = re.compile(r"-[\d.]")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|)")


def parse_duration(text: str | float) -> float:
    """Seconds in "60s", "2m", "1h", "500ms", "1h30m" or a plain number
    (seconds). InvalidArgument for anything else or a negative value."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not text >= 0 or text == float("inf"):
            raise InvalidArgument(f"a duration must be a finite number of seconds >= 0, got {text!r}")
        return float(text)
    if not isinstance(text, str):
        raise InvalidArgument(f"a duration must be a string like 60s or a number, got {type(text).__name__}")
    s = text.strip().lower()
    pos, total, parts, bare = 0, 0.0, 0, False
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None or m.end() == pos:
            raise InvalidArgument(f"bad duration {text!r}: expected e.g. 60s, 2m, 1h, 500ms")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        parts += 1
        bare = bare or not m.group(2)
        pos = m.end()
        while pos < len(s) and s[pos] == " ":
            pos += 1
    if not s or (bare and parts > 1):           # a number without a unit only stands alone
        raise InvalidArgument(f"bad duration {text!r}: expected e.g. 60s, 2m, 1h, 500ms")
    return total


def join_dashed_values(argv: Sequence[str]) -> list[str]:
    """``["--duration", "-5s"]`` -> ``["--duration=-5s"]`` for the options
    in DURATION_OPTIONS, so that a negative value reaches parse_duration."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":                     # the rest are values, as they are
            return out + list(argv[i:])
        if arg in DURATION_OPTIONS and i + 1 < len(argv) and _DASHED.match(argv[i + 1]):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def parse_interval(text: str | Sequence[float]) -> tuple[float, float]:
    """"0.2s..3s" -> (0.2, 3.0); one duration d -> (d, d)."""
    if not isinstance(text, str):
        lo, hi = (float(v) for v in text)
    else:
        lo_s, sep, hi_s = text.partition("..")
        lo = parse_duration(lo_s)
        hi = parse_duration(hi_s) if sep else lo
    if not 0 <= lo <= hi:
        raise InvalidArgument(f"bad interval {text!r}: expected LOW..HIGH with 0 <= LOW <= HIGH")
    return lo, hi


def parse_faults(text: str | Sequence[str] | None) -> tuple[str, ...]:
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text or ())
    items = [t for t in items if t and t != "none"]
    unknown = [t for t in items if t not in FAULTS]
    if unknown:
        raise InvalidArgument(f"unknown fault(s) {', '.join(unknown)}: expected some of {', '.join(FAULTS)}")
    return tuple(dict.fromkeys(items))
