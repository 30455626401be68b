"""String commands: GET, SET and friends, counters, ranges.

Which process runs what: a front-end process (see commands.py). Values are
bytes. Every command that reads before it writes runs in ``store.atomic``
(one transaction, retried on conflict), so concurrent clients in any front
end never lose an update. Commands that change a value in place (APPEND,
SETRANGE, INCR*) keep the key's expiry, as in Redis; SET, GETSET, MSET and
SETEX replace it.
"""

from __future__ import annotations

import re
import warnings
from decimal import Decimal
from typing import Any

import numpy as np

from .commands import (
    INT_MAX,
    INT_MIN,
    MAX_EXPIRE_MS,
    Context,
    command,
    err_arity,
    err_syntax,
    now_ms,
    parse_float,
    parse_int,
)
from .resp import OK, ReplyError
from .store import Store

__all__ = ["format_float", "parse_expire", "set_options"]

# option flags of SET and GETEX (Redis's OBJ_SET_* / OBJ_* flags)
NX, XX, GET, KEEPTTL, PERSIST, EX, PX, EXAT, PXAT = (1 << i for i in range(9))
_EXPIRES = EX | PX | EXAT | PXAT
_OPTS = {b"NX": NX, b"XX": XX, b"GET": GET, b"KEEPTTL": KEEPTTL, b"PERSIST": PERSIST,
         b"EX": EX, b"PX": PX, b"EXAT": EXAT, b"PXAT": PXAT}


def _too_big() -> ReplyError:
    return ReplyError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")


def set_options(argv: list[bytes], start: int, for_set: bool) -> tuple[int, bytes | None]:
    """(flags, raw expire argument) of SET (*for_set*) or GETEX, as Redis's
    parseExtendedStringArgumentsOrReply accepts them."""
    flags, expire = 0, None
    j, n = start, len(argv)
    while j < n:
        opt = _OPTS.get(argv[j].upper(), 0)
        has_next = j + 1 < n
        if opt == NX and for_set and not flags & XX:
            flags |= NX
        elif opt == XX and for_set and not flags & NX:
            flags |= XX
        elif opt == GET and for_set:
            flags |= GET
        elif opt == KEEPTTL and for_set and not flags & (PERSIST | _EXPIRES):
            flags |= KEEPTTL
        elif opt == PERSIST and not for_set and not flags & (KEEPTTL | _EXPIRES):
            flags |= PERSIST
        elif opt & _EXPIRES and has_next and not flags & (KEEPTTL | PERSIST | (_EXPIRES & ~opt)):
            flags |= opt
            expire = argv[j + 1]
            j += 1
        else:
            raise err_syntax()
        j += 1
    return flags, expire


def parse_expire(raw: bytes, flags: int, name: str) -> int:
    """Absolute expiry in unix milliseconds from an EX/PX/EXAT/PXAT value
    (Redis's getExpireMillisecondsOrReply)."""
    ms = parse_int(raw)
    invalid = ReplyError(f"ERR invalid expire time in '{name}' command")
    if ms <= 0 or (flags & (EX | EXAT) and ms > INT_MAX // 1000):
        raise invalid
    if flags & (EX | EXAT):
        ms *= 1000
    if flags & (EX | PX):
        ms += now_ms()
    if ms > MAX_EXPIRE_MS:
        raise invalid
    return ms


# --- GET / SET family ---------------------------------------------------------------------------


@command("get", 2, "readonly fast", (1, 1, 1), group="string", inline=True,
         summary="Returns the string value of a key.")
def get(ctx: Context, argv: list[bytes]) -> Any:
    v = ctx.store.get(argv[1])
    ctx.server.stats["keyspace_misses" if v is None else "keyspace_hits"] += 1
    return v


@command("set", -3, "write denyoom", (1, 1, 1), group="string",
         summary="Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.")
def set_(ctx: Context, argv: list[bytes]) -> Any:
    key, value = argv[1], argv[2]
    flags, raw = set_options(argv, 3, True)
    when = None if raw is None else parse_expire(raw, flags, "set")
    if not flags & (NX | XX | GET | KEEPTTL):
        ctx.store.put(key, value, when)
        return OK

    def rmw(s: Store) -> Any:
        cur = s.get_ex(key)
        old = None if cur is None else cur[0]
        if (flags & NX and cur is not None) or (flags & XX and cur is None):
            return old if flags & GET else None
        s.put(key, value, cur[1] if flags & KEEPTTL and cur is not None else when)
        return old if flags & GET else OK
    return ctx.store.atomic(rmw)


@command("setnx", 3, "write denyoom fast", (1, 1, 1), group="string",
         summary="Set the string value of a key only when the key doesn't exist.")
def setnx(ctx: Context, argv: list[bytes]) -> Any:
    key, value = argv[1], argv[2]

    def rmw(s: Store) -> int:
        if s.get(key) is not None:
            return 0
        s.put(key, value)
        return 1
    return ctx.store.atomic(rmw)


def _setex(ctx: Context, argv: list[bytes], unit: int, name: str) -> Any:
    when = parse_expire(argv[2], unit, name)
    ctx.store.put(argv[1], argv[3], when)
    return OK


@command("setex", 4, "write denyoom", (1, 1, 1), group="string",
         summary="Sets the string value and expiration time of a key. Creates the key if it doesn't exist.",
         since="2.0.0")
def setex(ctx: Context, argv: list[bytes]) -> Any:
    return _setex(ctx, argv, EX, "setex")


@command("psetex", 4, "write denyoom", (1, 1, 1), group="string", since="2.6.0",
         summary="Sets both string value and expiration time in milliseconds of a key. "
                 "The key is created if it doesn't exist.")
def psetex(ctx: Context, argv: list[bytes]) -> Any:
    return _setex(ctx, argv, PX, "psetex")


@command("getset", 3, "write denyoom fast", (1, 1, 1), group="string",
         summary="Returns the previous string value of a key after setting it to a new value.")
def getset(ctx: Context, argv: list[bytes]) -> Any:
    key, value = argv[1], argv[2]

    def rmw(s: Store) -> Any:
        old = s.get(key)
        s.put(key, value)
        return old
    return ctx.store.atomic(rmw)


@command("getdel", 2, "write fast", (1, 1, 1), group="string", since="6.2.0",
         summary="Returns the string value of a key after deleting the key.")
def getdel(ctx: Context, argv: list[bytes]) -> Any:
    key = argv[1]

    def rmw(s: Store) -> Any:
        old = s.get(key)
        if old is not None:
            s.delete(key)
        return old
    return ctx.store.atomic(rmw)


@command("getex", -2, "write fast", (1, 1, 1), group="string", since="6.2.0",
         summary="Returns the string value of a key after setting its expiration time.")
def getex(ctx: Context, argv: list[bytes]) -> Any:
    key = argv[1]
    flags, raw = set_options(argv, 2, False)
    if not flags:
        return ctx.store.get(key)
    if ctx.store.get(key) is None:         # as Redis: a missing key is nil before the expire time is checked
        return None
    when = None if raw is None else parse_expire(raw, flags, "getex")

    def rmw(s: Store) -> Any:
        cur = s.get_ex(key)
        if cur is None:
            return None
        if when is not None or cur[1] is not None:          # PERSIST of a key without expiry: no write
            s.put(key, cur[0], when)
        return cur[0]
    return ctx.store.atomic(rmw)


@command("mget", -2, "readonly fast", (1, -1, 1), group="string", inline=True,
         summary="Atomically returns the string values of one or more keys.", complexity="O(N)")
def mget(ctx: Context, argv: list[bytes]) -> Any:
    return ctx.store.get_many(argv[1:])


def _pairs(argv: list[bytes], name: str) -> list[tuple[bytes, bytes]]:
    if len(argv) % 2 == 0:
        raise err_arity(name)
    return list(zip(argv[1::2], argv[2::2]))


@command("mset", -3, "write denyoom", (1, -1, 2), group="string", since="1.0.1", complexity="O(N)",
         summary="Atomically creates or modifies the string values of one or more keys.")
def mset(ctx: Context, argv: list[bytes]) -> Any:
    ctx.store.put_many(_pairs(argv, "mset"))
    return OK


@command("msetnx", -3, "write denyoom", (1, -1, 2), group="string", since="1.0.1", complexity="O(N)",
         summary="Atomically modifies the string values of one or more keys only when all keys don't exist.")
def msetnx(ctx: Context, argv: list[bytes]) -> Any:
    pairs = _pairs(argv, "msetnx")

    def rmw(s: Store) -> int:
        if any(v is not None for v in s.get_many([k for k, _ in pairs])):
            return 0
        s.put_many(pairs)
        return 1
    return ctx.store.atomic(rmw)


# --- in-place changes ---------------------------------------------------------------------------


@command("append", 3, "write denyoom fast", (1, 1, 1), group="string", since="2.0.0",
         summary="Appends a string to the value of a key. Creates the key if it doesn't exist.")
def append(ctx: Context, argv: list[bytes]) -> Any:
    key, tail = argv[1], argv[2]
    limit = ctx.db.config.max_value_size

    def rmw(s: Store) -> int:
        cur = s.get_ex(key)
        value = tail if cur is None else cur[0] + tail
        if len(value) > limit:
            raise _too_big()
        s.put(key, value, None if cur is None else cur[1])
        return len(value)
    return ctx.store.atomic(rmw)


@command("strlen", 2, "readonly fast", (1, 1, 1), group="string", since="2.2.0", inline=True,
         summary="Returns the length of a string value.")
def strlen(ctx: Context, argv: list[bytes]) -> Any:
    v = ctx.store.get(argv[1])
    return 0 if v is None else len(v)


def _getrange(ctx: Context, argv: list[bytes]) -> Any:
    start, end = parse_int(argv[2]), parse_int(argv[3])
    v = ctx.store.get(argv[1])
    if v is None:
        return b""
    n = len(v)
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start = max(n + start, 0)
    if end < 0:
        end = max(n + end, 0)
    end = min(end, n - 1)
    if start > end or n == 0:
        return b""
    return v[start:end + 1]


@command("getrange", 4, "readonly", (1, 1, 1), group="string", since="2.4.0", inline=True,
         summary="Returns a substring of the string stored at a key.", complexity="O(N)")
def getrange(ctx: Context, argv: list[bytes]) -> Any:
    return _getrange(ctx, argv)


@command("substr", 4, "readonly", (1, 1, 1), group="string", inline=True,
         summary="Returns a substring from a string value.", complexity="O(N)")
def substr(ctx: Context, argv: list[bytes]) -> Any:
    return _getrange(ctx, argv)


@command("setrange", 4, "write denyoom", (1, 1, 1), group="string", since="2.2.0",
         summary="Overwrites a part of a string value with another by an offset. "
                 "Creates the key if it doesn't exist.")
def setrange(ctx: Context, argv: list[bytes]) -> Any:
    key, part = argv[1], argv[3]
    offset = parse_int(argv[2])
    if offset < 0:
        raise ReplyError("ERR offset is out of range")
    limit = ctx.db.config.max_value_size

    def rmw(s: Store) -> int:
        cur = s.get_ex(key)
        old = b"" if cur is None else cur[0]
        if not part:
            return len(old)
        if offset + len(part) > limit:
            raise _too_big()
        value = old[:offset].ljust(offset, b"\x00") + part + old[offset + len(part):]
        s.put(key, value, None if cur is None else cur[1])
        return len(value)
    return ctx.store.atomic(rmw)


# --- counters -----------------------------------------------------------------------------------


def _incr(ctx: Context, key: bytes, delta: int) -> Any:
    def rmw(s: Store) -> int:
        cur = s.get_ex(key)
        n = 0 if cur is None else parse_int(cur[0])
        if (delta < 0 and n < 0 and delta < INT_MIN - n) or (delta > 0 and n > 0 and delta > INT_MAX - n):
            raise ReplyError("ERR increment or decrement would overflow")
        n += delta
        s.put(key, b"%d" % n, None if cur is None else cur[1])
        return n
    return ctx.store.atomic(rmw)


@command("incr", 2, "write denyoom fast", (1, 1, 1), group="string",
         summary="Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.")
def incr(ctx: Context, argv: list[bytes]) -> Any:
    return _incr(ctx, argv[1], 1)


@command("decr", 2, "write denyoom fast", (1, 1, 1), group="string",
         summary="Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.")
def decr(ctx: Context, argv: list[bytes]) -> Any:
    return _incr(ctx, argv[1], -1)


@command("incrby", 3, "write denyoom fast", (1, 1, 1), group="string",
         summary="Increments the integer value of a key by a number. "
                 "Uses 0 as initial value if the key doesn't exist.")
def incrby(ctx: Context, argv: list[bytes]) -> Any:
    return _incr(ctx, argv[1], parse_int(argv[2]))


@command("decrby", 3, "write denyoom fast", (1, 1, 1), group="string",
         summary="Decrements a number from the integer value of a key. "
                 "Uses 0 as initial value if the key doesn't exist.")
def decrby(ctx: Context, argv: list[bytes]) -> Any:
    delta = parse_int(argv[2])
    if delta == INT_MIN:
        raise ReplyError("ERR decrement would overflow")
    return _incr(ctx, argv[1], -delta)


def format_float(x: Any) -> bytes:
    """What Redis prints for INCRBYFLOAT: 17 decimals of the long double
    (``%.17Lf``), trailing zeros and point dropped, never an exponent."""
    if isinstance(x, np.longdouble):
        out = np.format_float_positional(x, precision=17, unique=False, fractional=True, trim="-").encode()
        return b"0" if out == b"-0" else out        # as Redis's ld2string: no negative zero
    s = format(Decimal(repr(x)), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s.encode()


_MAX_LONG_DOUBLE_CHARS = 5 * 1024      # string2ld's buffer: a longer text is not a number
_NONZERO_DIGIT = re.compile(rb"[1-9]")
_NONZERO_HEX = re.compile(rb"[1-9a-fA-F]")


def _long_double(b: bytes) -> np.longdouble:
    """A number as Redis's string2ld reads it, in long double precision:
    one that overflows the long double, or a nonzero one that underflows
    to 0, is not a valid float (strtold's ERANGE)."""
    if len(b) >= _MAX_LONG_DOUBLE_CHARS:
        raise ReplyError("ERR value is not a valid float")
    x = parse_float(b)                 # the syntax check and its error
    hexadecimal = b"x" in b or b"X" in b
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)     # overflow: inf, refused below
            ld = np.longdouble(b.decode())
    except ValueError:                 # a numpy that reads decimal only
        ld = np.longdouble(x)
    if hexadecimal:
        digits, mantissa = _NONZERO_HEX, re.split(rb"[pP]", b[b.lower().index(b"x") + 1:])[0]
    else:
        digits, mantissa = _NONZERO_DIGIT, re.split(rb"[eE]", b)[0]
    if (np.isinf(ld) and b"inf" not in b.lower()) or (ld == 0 and digits.search(mantissa)):
        raise ReplyError("ERR value is not a valid float")
    return ld


@command("incrbyfloat", 3, "write denyoom fast", (1, 1, 1), group="string", since="2.6.0",
         summary="Increment the floating point value of a key by a number. "
                 "Uses 0 as initial value if the key doesn't exist.")
def incrbyfloat(ctx: Context, argv: list[bytes]) -> Any:
    key = argv[1]
    delta = _long_double(argv[2])

    def rmw(s: Store) -> bytes:
        cur = s.get_ex(key)
        x = (np.longdouble(0) if cur is None else _long_double(cur[0])) + delta
        if np.isnan(x) or np.isinf(x):
            raise ReplyError("ERR increment would produce NaN or Infinity")
        out = format_float(x)
        s.put(key, out, None if cur is None else cur[1])
        return out
    return ctx.store.atomic(rmw)

