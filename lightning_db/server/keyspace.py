"""Keyspace commands: DEL, EXISTS, TYPE, expiry, KEYS, SCAN, RENAME, FLUSHDB, ...

Which process runs what: a front-end process (see commands.py). There is one
keyspace (database 0) and every value is a string.

Costs that differ from Redis: DBSIZE counts by scanning (O(N)); FLUSHDB and
FLUSHALL delete in batches of ``FLUSH_BATCH`` keys, each batch atomic but not
the whole (a key written meanwhile behind the sweep survives; inside
MULTI/EXEC the flush is one transaction). SCAN cursors name the last key
returned (kept per connection), so a scan resumes strictly after it in key
order: every key present for the whole scan is returned exactly once, and
a cursor is valid only on the connection that received it.
"""

from __future__ import annotations

import os
import random
from typing import Any

from .commands import (
    INT_MAX,
    INT_MIN,
    MAX_EXPIRE_MS,
    Context,
    command,
    err_syntax,
    now_ms,
    parse_int,
)
from .pattern import literal_prefix, matcher
from .resp import OK, ReplyError, Status
from .store import Store

__all__ = ["FLUSH_BATCH", "SCAN_DEFAULT_COUNT"]

FLUSH_BATCH = 1024
SCAN_DEFAULT_COUNT = 10
SCAN_MAX_COUNT = 100_000          # one SCAN call reads at most this many keys


def _unique(keys: list[bytes]) -> list[bytes]:
    return list(dict.fromkeys(keys))


def _delete(ctx: Context, argv: list[bytes]) -> int:
    keys = _unique(argv[1:])

    def rmw(s: Store) -> int:
        found = [k for k, v in zip(keys, s.get_many(keys)) if v is not None]
        s.delete_many(found)
        return len(found)
    return ctx.store.atomic(rmw)


@command("del", -2, "write", (1, -1, 1), group="generic", complexity="O(N)",
         summary="Deletes one or more keys.")
def del_(ctx: Context, argv: list[bytes]) -> Any:
    return _delete(ctx, argv)


@command("unlink", -2, "write fast", (1, -1, 1), group="generic", since="4.0.0", complexity="O(N)",
         summary="Asynchronously deletes one or more keys.")
def unlink(ctx: Context, argv: list[bytes]) -> Any:
    return _delete(ctx, argv)


@command("exists", -2, "readonly fast", (1, -1, 1), group="generic", inline=True, complexity="O(N)",
         summary="Determines whether one or more keys exist.")
def exists(ctx: Context, argv: list[bytes]) -> Any:
    return sum(v is not None for v in ctx.store.get_many(argv[1:]))


@command("touch", -2, "readonly fast", (1, -1, 1), group="generic", since="3.2.1", inline=True,
         complexity="O(N)", summary="Returns the number of existing keys out of those specified "
                                    "after updating the time they were last accessed.")
def touch(ctx: Context, argv: list[bytes]) -> Any:
    return sum(v is not None for v in ctx.store.get_many(argv[1:]))


@command("type", 2, "readonly fast", (1, 1, 1), group="generic", inline=True,
         summary="Determines the type of value stored at a key.")
def type_(ctx: Context, argv: list[bytes]) -> Any:
    return Status("none" if ctx.store.get(argv[1]) is None else "string")


# --- expiry -------------------------------------------------------------------------------------

_NX, _XX, _GT, _LT = 1, 2, 4, 8
_EXPIRE_OPTS = {b"NX": _NX, b"XX": _XX, b"GT": _GT, b"LT": _LT}


def _expire(ctx: Context, argv: list[bytes], unit: int, absolute: bool, name: str) -> Any:
    key = argv[1]
    flags = 0
    for opt in argv[3:]:
        f = _EXPIRE_OPTS.get(opt.upper())
        if f is None:
            raise ReplyError(f"ERR Unsupported option {opt.decode('utf-8', 'replace')}")
        flags |= f
    if flags & _NX and flags & (_XX | _GT | _LT):
        raise ReplyError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if flags & _GT and flags & _LT:
        raise ReplyError("ERR GT and LT options at the same time are not compatible")
    when = parse_int(argv[2])
    invalid = ReplyError(f"ERR invalid expire time in '{name}' command")
    if when > INT_MAX // unit or when < -(-INT_MIN // unit):    # C's division: toward zero
        raise invalid
    when *= unit
    if not absolute:
        when += now_ms()
    if when > MAX_EXPIRE_MS:
        raise invalid

    def rmw(s: Store) -> int:
        cur = s.get_ex(key)
        if cur is None:
            return 0
        old = cur[1]
        if (flags & _NX and old is not None) or (flags & _XX and old is None):
            return 0
        if flags & _GT and (old is None or when <= old):
            return 0
        if flags & _LT and old is not None and when >= old:
            return 0
        s.put(key, cur[0], when)                              # in the past: deleted
        return 1
    return ctx.store.atomic(rmw)


@command("expire", -3, "write fast", (1, 1, 1), group="generic",
         summary="Sets the expiration time of a key in seconds.")
def expire(ctx: Context, argv: list[bytes]) -> Any:
    return _expire(ctx, argv, 1000, False, "expire")


@command("pexpire", -3, "write fast", (1, 1, 1), group="generic", since="2.6.0",
         summary="Sets the expiration time of a key in milliseconds.")
def pexpire(ctx: Context, argv: list[bytes]) -> Any:
    return _expire(ctx, argv, 1, False, "pexpire")


@command("expireat", -3, "write fast", (1, 1, 1), group="generic", since="1.2.0",
         summary="Sets the expiration time of a key to a Unix timestamp.")
def expireat(ctx: Context, argv: list[bytes]) -> Any:
    return _expire(ctx, argv, 1000, True, "expireat")


@command("pexpireat", -3, "write fast", (1, 1, 1), group="generic", since="2.6.0",
         summary="Sets the expiration time of a key to a Unix milliseconds timestamp.")
def pexpireat(ctx: Context, argv: list[bytes]) -> Any:
    return _expire(ctx, argv, 1, True, "pexpireat")


def _expiry_ms(ctx: Context, key: bytes) -> int:
    """-2 absent, -1 no expiry, else the absolute expiry in unix ms."""
    cur = ctx.store.get_ex(key)
    if cur is None:
        return -2
    return -1 if cur[1] is None else cur[1]


def _ttl(ctx: Context, key: bytes, ms: bool) -> int:
    at = _expiry_ms(ctx, key)
    if at < 0:
        return at
    left = max(at - now_ms(), 0)
    return left if ms else (left + 500) // 1000


@command("ttl", 2, "readonly fast", (1, 1, 1), group="generic",
         summary="Returns the expiration time in seconds of a key.")
def ttl(ctx: Context, argv: list[bytes]) -> Any:
    return _ttl(ctx, argv[1], False)


@command("pttl", 2, "readonly fast", (1, 1, 1), group="generic", since="2.6.0",
         summary="Returns the expiration time in milliseconds of a key.")
def pttl(ctx: Context, argv: list[bytes]) -> Any:
    return _ttl(ctx, argv[1], True)


@command("expiretime", 2, "readonly fast", (1, 1, 1), group="generic", since="7.0.0",
         summary="Returns the expiration time of a key as a Unix timestamp.")
def expiretime(ctx: Context, argv: list[bytes]) -> Any:
    at = _expiry_ms(ctx, argv[1])
    return at if at < 0 else (at + 500) // 1000


@command("pexpiretime", 2, "readonly fast", (1, 1, 1), group="generic", since="7.0.0",
         summary="Returns the expiration time of a key as a Unix milliseconds timestamp.")
def pexpiretime(ctx: Context, argv: list[bytes]) -> Any:
    return _expiry_ms(ctx, argv[1])


@command("persist", 2, "write fast", (1, 1, 1), group="generic", since="2.2.0",
         summary="Removes the expiration time of a key.")
def persist(ctx: Context, argv: list[bytes]) -> Any:
    key = argv[1]

    def rmw(s: Store) -> int:
        cur = s.get_ex(key)
        if cur is None or cur[1] is None:
            return 0
        s.put(key, cur[0])
        return 1
    return ctx.store.atomic(rmw)


# --- iteration ----------------------------------------------------------------------------------


@command("keys", 2, "readonly", (0, 0, 0), group="generic", complexity="O(N)", acl="@dangerous",
         summary="Returns all key names that match a pattern.")
def keys(ctx: Context, argv: list[bytes]) -> Any:
    pattern = argv[1]
    match = matcher(pattern)
    return [k for k, _ in ctx.store.scan(prefix=literal_prefix(pattern)) if match(k)]


def _invalid_cursor() -> ReplyError:
    return ReplyError("ERR invalid cursor")


@command("scan", -2, "readonly", (0, 0, 0), group="generic", since="2.8.0", complexity="O(1) per call",
         summary="Iterates over the key names in the database.")
def scan(ctx: Context, argv: list[bytes]) -> Any:
    cursor = parse_int(argv[1], _invalid_cursor)
    pattern, count, type_name = None, SCAN_DEFAULT_COUNT, None
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if i + 1 >= len(argv):
            raise err_syntax()
        if opt == b"MATCH":
            pattern = argv[i + 1]
        elif opt == b"COUNT":
            count = parse_int(argv[i + 1])
            if count < 1:
                raise err_syntax()
        elif opt == b"TYPE":
            type_name = argv[i + 1].lower()
        else:
            raise err_syntax()
        i += 2
    if cursor == 0:
        start = None
    else:
        last = ctx.client.cursors.get(cursor)
        if last is None:
            raise _invalid_cursor()
        start = last + b"\x00"                                  # strictly after the last key returned
    prefix = literal_prefix(pattern) if pattern else b""
    count = min(count, SCAN_MAX_COUNT)
    rows = [k for k, _ in ctx.store.scan(start=start, prefix=prefix, limit=count)]
    if pattern is None:
        found = rows
    else:
        match = matcher(pattern)
        found = [k for k in rows if match(k)]
    if type_name is not None and type_name != b"string":
        found = []
    nxt = 0 if len(rows) < count else ctx.client.new_cursor(rows[-1])
    return [b"%d" % nxt, found]


@command("randomkey", 1, "readonly", (0, 0, 0), group="generic",
         summary="Returns a random key name from the database.")
def randomkey(ctx: Context, argv: list[bytes]) -> Any:
    store = ctx.store
    first = next(iter(store.scan(limit=1)), None)
    if first is None:
        return None
    last = next(iter(store.scan(limit=1, reverse=True)))
    lo, hi = first[0], last[0]
    n = 0
    while n < min(len(lo), len(hi)) and lo[n] == hi[n]:
        n += 1
    # A probe between the first and the last key: their common prefix, then
    # a random byte in their range, then random bytes; the first key at or
    # after it (wrapping around) is the answer.
    top = hi[n] if n < len(hi) else 255
    bottom = lo[n] if n < len(lo) else 0
    probe = lo[:n] + bytes([random.randint(bottom, top)]) + os.urandom(random.randint(0, 8))
    hit = next(iter(store.scan(start=probe, limit=1)), None)
    return (hit or first)[0]


@command("dbsize", 1, "readonly fast", (0, 0, 0), group="server", complexity="O(N)",
         summary="Returns the number of keys in the database.")
def dbsize(ctx: Context, argv: list[bytes]) -> Any:
    return sum(1 for _ in ctx.store.scan())


def _rename(ctx: Context, argv: list[bytes], nx: bool) -> Any:
    src, dst = argv[1], argv[2]

    def rmw(s: Store) -> Any:
        cur = s.get_ex(src)
        if cur is None:
            raise ReplyError("ERR no such key")
        if src == dst:
            return 0 if nx else OK
        if nx and s.get(dst) is not None:
            return 0
        s.put(dst, cur[0], cur[1])
        s.delete(src)
        return 1 if nx else OK
    return ctx.store.atomic(rmw)


@command("rename", 3, "write", (1, 2, 1), group="generic", summary="Renames a key and overwrites the destination.")
def rename(ctx: Context, argv: list[bytes]) -> Any:
    return _rename(ctx, argv, False)


@command("renamenx", 3, "write fast", (1, 2, 1), group="generic",
         summary="Renames a key only when the target key name doesn't exist.")
def renamenx(ctx: Context, argv: list[bytes]) -> Any:
    return _rename(ctx, argv, True)


def _flush(ctx: Context, argv: list[bytes]) -> Any:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
        raise err_syntax()
    store = ctx.store
    start = None
    while True:
        batch = [k for k, _ in store.scan(start=start, limit=FLUSH_BATCH)]
        if not batch:
            return OK
        store.delete_many(batch)
        start = batch[-1] + b"\x00"


@command("flushdb", -1, "write", (0, 0, 0), group="server", complexity="O(N)", acl="@dangerous",
         summary="Remove all keys from the current database.")
def flushdb(ctx: Context, argv: list[bytes]) -> Any:
    return _flush(ctx, argv)


@command("flushall", -1, "write", (0, 0, 0), group="server", complexity="O(N)", acl="@dangerous",
         summary="Removes all keys from all databases.")
def flushall(ctx: Context, argv: list[bytes]) -> Any:
    return _flush(ctx, argv)
