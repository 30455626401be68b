"""RESP framing: requests in (hiredis), replies out (RESP2 and RESP3).

Which process runs what: a front-end process (frontend.py), on its event
loop, one ``RequestParser`` per connection; replies are encoded wherever the
command ran (event loop or a worker thread).

Requests are arrays of bulk strings (``*N\\r\\n$L\\r\\n...``) or, as in
Redis, inline commands (a line of words) when a request starts with any
byte other than ``*``. hiredis parses the arrays; it knows nothing of limits
and waits for as many bytes as a header announces, so the parser walks the
headers of the one request that is still incomplete after each read and
refuses, as Redis does, an argument count over ``max_args``, a bulk length
over ``max_bulk`` and an incomplete request over ``max_buffer`` bytes. Where
that request starts is known from the sizes of the complete ones: hiredis
accepts only canonical lengths (no sign, no leading zeros), so a request's
size follows from its arguments. A protocol error ends the connection: the
commands before it still run, then the error is sent and the socket closed.

Replies are Python values: ``bytes``/``str`` bulk strings, ``Status``
simple strings, ``int``, ``None`` (null), ``NULL_ARRAY``, ``list``/``tuple``
arrays, ``dict`` maps (flat arrays in RESP2), ``float`` doubles (bulk strings
in RESP2), ``bool`` (integers in RESP2), ``Verbatim`` text (bulk in RESP2),
``ReplyError`` errors.
"""

from __future__ import annotations

import math
import re
from typing import Any

import hiredis

__all__ = [
    "NULL_ARRAY",
    "OK",
    "PONG",
    "QUEUED",
    "Limits",
    "ProtocolError",
    "ReplyError",
    "RequestParser",
    "Status",
    "Verbatim",
    "encode",
    "error_line",
]

WHOLE_MAX = 16 * 1024         # reads up to this long first try the parse of whole requests (_feed_whole)
MAX_INLINE = 64 * 1024        # Redis's PROTO_INLINE_MAX_SIZE: longest inline request and header line
DEFAULT_MAX_ARGS = 1024 * 1024


class Status(str):
    """A simple-string reply (``+OK``)."""

    __slots__ = ()


class Verbatim(str):
    """Text shown as is (INFO, CLIENT LIST): RESP3 verbatim string ``txt``."""

    __slots__ = ()


class ReplyError(Exception):
    """An error reply; the message starts with its code (``ERR ...``,
    ``EXECABORT ...``). Raised by command handlers, or kept as an element
    of an array (EXEC)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _NullArray:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_ARRAY"


NULL_ARRAY = _NullArray()
OK = Status("OK")
QUEUED = Status("QUEUED")
PONG = Status("PONG")


class ProtocolError(Exception):
    """The request stream is broken; the message is the reply text
    (``Protocol error: ...``) and the connection is closed after it."""


class _StreamReply(Exception):
    """hiredis's ``replyError`` class: an error frame sent by a client."""


class Limits:
    """Request limits of one front end: argument count, bulk length and
    bytes buffered for one incomplete request."""

    __slots__ = ("max_args", "max_buffer", "max_bulk", "big_count")

    def __init__(self, max_bulk: int, max_buffer: int, max_args: int = DEFAULT_MAX_ARGS) -> None:
        self.max_bulk, self.max_buffer, self.max_args = max_bulk, max_buffer, max_args
        # An array count with as many digits as max_args may be over it:
        # hiredis would allocate its list before any limit is checked.
        self.big_count = re.compile(rb"\*(\d{%d,})" % len(str(max_args)))


_HEADER_TAIL = re.compile(rb"\*\d{0,20}\r?\Z")    # an array header not yet ended by its CRLF


def _type_byte(obj: Any) -> str:
    if isinstance(obj, bool):
        return "#"
    if isinstance(obj, int):
        return ":"
    if isinstance(obj, float):
        return ","
    if isinstance(obj, list):
        return "*"
    if isinstance(obj, _StreamReply):
        return "-"
    if isinstance(obj, dict):
        return "%"
    return "?"


def _first_bad(buf: bytes, i: int, left: int = -1) -> str:
    """The protocol error of a request that hiredis could not read into
    Python values: the first argument header that is not a bulk string's.
    The request's array header is at *buf[i:]*; or, with *left* >= 0, the
    header of its next argument of *left* still to come."""
    if left < 0:
        j = buf.find(b"\r\n", i)
        left = (_header_int(bytearray(buf[i + 1:j])) or 0) if j > i else 0
        i = j + 2
    pos = i
    for _ in range(left):
        if pos >= len(buf):
            break
        if buf[pos] != 0x24:
            return f"Protocol error: expected '$', got '{chr(buf[pos])}'"
        e = buf.find(b"\r\n", pos)
        size = _header_int(bytearray(buf[pos + 1:e])) if e > pos else None
        if size is None or size < 0:
            return "Protocol error: invalid bulk length"
        pos = e + 2 + size + 2
    return "Protocol error: expected an array of bulk strings"


def _hiredis_message(exc: Exception) -> str:
    text = str(exc)
    if "ulti-bulk length" in text:
        return "Protocol error: invalid multibulk length"
    if "ulk string length" in text:
        return "Protocol error: invalid bulk length"
    if "as reply type byte" in text:
        got = text.split('"')[1] if text.count('"') >= 2 else "?"
        return f"Protocol error: expected '$', got '{got}'"
    return f"Protocol error: {text}"


class RequestParser:
    """Requests of one connection. ``feed(data)`` returns the commands
    completed so far (lists of bytes); after a protocol error it sets
    ``error`` (the reply text) and accepts nothing more."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._reader = hiredis.Reader(protocolError=ProtocolError, replyError=_StreamReply)
        self.error: str | None = None
        self._fed = 0                    # stream bytes given to hiredis
        self._done = 0                   # stream offset where the incomplete request starts
        self._inline: bytearray | None = None
        self._held = b""                 # an array header cut by the read, held until its CRLF comes
        # Header walk of the incomplete request: the bytes from _tail_off on
        # (only those not yet walked past), the walk position and the bulk
        # headers still to come (-1: the array header itself).
        self._tail = bytearray()
        self._tail_off = 0
        self._walk_start = -1
        self._walk_pos = 0
        self._walk_left = -1

    @property
    def buffered(self) -> int:
        """Bytes held for the incomplete request (client query buffer)."""
        return (self._fed - self._done) + (len(self._inline) if self._inline else 0) + len(self._held)

    def feed(self, data: bytes) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        if self.error is not None or not data:
            return out
        if (self._fed == self._done and not self._held and self._inline is None and data[0] == 0x2A
                and len(data) <= WHOLE_MAX and self._limits.big_count.search(data) is None):
            whole = self._feed_whole(data)
            if whole is not None:
                return whole
        if self._held:
            data, self._held = self._held + data, b""
        try:
            # hiredis allocates an array's list as soon as it has read the
            # header line, so an array count over max_args is refused before
            # hiredis sees it: a header cut by the read waits for its CRLF,
            # and a long count is fed only once it is known not to start a
            # request or an argument (inside a bulk string it is data).
            end = len(data)
            tail = _HEADER_TAIL.search(data, max(0, end - 23))
            if tail is not None:
                end = tail.start()
                self._held = data[end:]
            view = memoryview(data)
            big = self._limits.big_count
            pos = 0
            while pos < end:
                if self._inline is not None or (self._fed == self._done and data[pos] != 0x2A):
                    pos = self._feed_inline(data, pos, out, end)
                    continue
                m = big.search(data, pos, end)
                if m is None:
                    pos += self._feed_resp(view[pos:end], out)
                elif m.start() > pos:
                    pos += self._feed_resp(view[pos:m.start()], out)
                else:
                    self._check_count(int(m.group(1)))
                    pos += self._feed_resp(view[pos:m.end()], out)
        except ProtocolError as exc:
            self.error = str(exc)
        return out

    def _feed_whole(self, data: bytes) -> list[list[bytes]] | None:
        """The usual read, nothing held from before: whole requests, arrays
        of bulk strings, and nothing else. Their commands; None for
        anything else (an incomplete request, an inline one, a null or
        nested array, an error), with a fresh reader: the general path
        then reads *data* from its start."""
        reader = self._reader
        reader.feed(data)
        out: list[list[bytes]] = []
        max_args = self._limits.max_args
        pos = 0                                              # where the next request starts
        try:
            while True:
                cmd = reader.gets()
                if cmd is False:
                    break
                if type(cmd) is not list or len(cmd) > max_args:
                    raise ProtocolError("not an array of bulk strings")
                n = len(cmd)
                pos += 4 if n < 10 else 3 + len(str(n))
                for a in cmd:
                    # hiredis reads +, =, ( and the like as bytes too: the
                    # header at the argument's place must be a bulk string's.
                    if type(a) is not bytes or data[pos] != 0x24:
                        raise ProtocolError("not an array of bulk strings")
                    la = len(a)
                    pos += la + (6 if la < 10 else 7 if la < 100 else 5 + len(str(la)))
                if cmd:                                      # *0: ignored
                    out.append(cmd)
            # Nothing left over: hiredis keeps no bytes and is not inside a
            # request exactly when an empty array fed now is read back as one.
            reader.feed(b"*0\r\n")
            if reader.gets() != []:
                raise ProtocolError("an incomplete request")
        except (ProtocolError, TypeError, ValueError):      # TypeError: a map hiredis could not build
            self._reader = hiredis.Reader(protocolError=ProtocolError, replyError=_StreamReply)
            return None
        self._fed += len(data)
        self._done = self._fed
        return out

    def _check_count(self, n: int) -> None:
        """An array header at the next stream byte: refused when it starts
        a request with more than max_args arguments, or stands where the
        incomplete request's next argument header belongs."""
        if self._fed == self._done:
            if n > self._limits.max_args:
                raise ProtocolError("Protocol error: invalid multibulk length")
        elif self._walk_left != 0 and self._walk_pos == self._fed:
            raise ProtocolError("Protocol error: expected '$', got '*'")

    # --- inline requests --------------------------------------------------------------------
    def _feed_inline(self, data: bytes, pos: int, out: list[list[bytes]], end: int) -> int:
        nl = data.find(b"\n", pos, end)
        if nl < 0:
            if self._inline is None:
                self._inline = bytearray()
            self._inline += data[pos:end]
            if len(self._inline) > MAX_INLINE:
                raise ProtocolError("Protocol error: too big inline request")
            return end
        line = bytes(data[pos:nl])
        if self._inline is not None:
            line = bytes(self._inline) + line
            self._inline = None
        if len(line) > MAX_INLINE:
            raise ProtocolError("Protocol error: too big inline request")
        args = _split_inline(line.rstrip(b"\r"))
        if args:
            if len(args) > self._limits.max_args:
                raise ProtocolError("Protocol error: invalid multibulk length")
            out.append(args)
        return nl + 1

    # --- arrays of bulk strings -------------------------------------------------------------
    def _feed_resp(self, seg: memoryview, out: list[list[bytes]]) -> int:
        """Feed *seg* to hiredis; the bytes of it used: all, or up to an
        inline request that follows a complete one."""
        reader, limits = self._reader, self._limits
        before = self._fed
        was_partial = self._walk_start >= 0
        reader.feed(seg)
        self._fed += len(seg)
        done = self._done
        # Stream bytes at hand to check argument headers in: this segment,
        # and the kept bytes of a request still incomplete before it (its
        # headers before _tail_off were checked by the walk).
        tail, tail_off = (self._tail, self._tail_off) if was_partial else (b"", before)
        try:
            while True:
                try:
                    cmd = reader.gets()
                except (TypeError, ValueError):          # a map with unhashable keys, and the like
                    buf = bytes(tail) + bytes(seg)
                    raise ProtocolError(_first_bad(buf, done - tail_off) if done >= tail_off else
                                        _first_bad(buf, self._walk_pos - tail_off, self._walk_left)) from None
                if cmd is False:
                    break
                if type(cmd) is not list:
                    if cmd is None:                          # *-1: ignored, as by Redis
                        done += 5
                        if done < self._fed and seg[done - before] != 0x2A:
                            return self._restart(done) - before
                        continue
                    raise ProtocolError(f"Protocol error: expected '*', got '{_type_byte(cmd)}'")
                n = len(cmd)
                size = 4 if n < 10 else 3 + len(str(n))     # its bytes as a canonical RESP array of bulk strings
                for a in cmd:
                    at = done + size                         # where this argument's header is
                    if at >= before:
                        head = seg[at - before]
                    elif at >= tail_off:
                        head = tail[at - tail_off]
                    else:
                        head = 0x24                          # checked by the walk
                    if head != 0x24:
                        raise ProtocolError(f"Protocol error: expected '$', got '{chr(head)}'")
                    if type(a) is not bytes:
                        if a is None:                        # $-1: a null bulk string
                            raise ProtocolError("Protocol error: invalid bulk length")
                        raise ProtocolError(f"Protocol error: expected '$', got '{_type_byte(a)}'")
                    la = len(a)
                    size += la + (6 if la < 10 else 7 if la < 100 else 5 + len(str(la)))
                if n > limits.max_args:
                    raise ProtocolError("Protocol error: invalid multibulk length")
                done += size
                if cmd:                                      # *0: ignored
                    out.append(cmd)
                if done < self._fed and seg[done - before] != 0x2A:
                    return self._restart(done) - before     # an inline request follows
        except ProtocolError as exc:
            msg = str(exc)
            raise ProtocolError(msg if msg.startswith("Protocol error: ") else _hiredis_message(exc)) from None
        if done >= self._fed:                               # nothing incomplete
            self._done = self._fed
            self._walk_start = -1
            self._tail = bytearray()
            return len(seg)
        self._done = done
        if was_partial:
            self._tail += seg
        else:
            self._tail = bytearray(seg[done - before:])
            self._tail_off = done
        if self._walk_start != done:
            self._walk_start, self._walk_pos, self._walk_left = done, done, -1
        self._walk()
        if self._fed - self._done > limits.max_buffer:
            raise ProtocolError(f"Protocol error: request larger than the client query buffer limit "
                                f"({limits.max_buffer} bytes)")
        return len(seg)

    def _restart(self, done: int) -> int:
        """A fresh hiredis reader from stream offset *done* on (hiredis never
        parses past the reply it returned, so nothing after it is lost)."""
        self._reader = hiredis.Reader(protocolError=ProtocolError, replyError=_StreamReply)
        self._fed = self._done = done
        self._walk_start = -1
        self._tail = bytearray()
        return done

    def _walk(self) -> None:
        """Check the headers of the incomplete request as far as they are here."""
        t, off, limits = self._tail, self._tail_off, self._limits
        pos, left = self._walk_pos, self._walk_left
        end = off + len(t)
        while pos < end and left != 0:
            i = pos - off
            j = t.find(b"\r\n", i, i + MAX_INLINE)
            if j < 0:
                if end - pos > MAX_INLINE:
                    what = "mbulk" if left < 0 else "bulk"
                    raise ProtocolError(f"Protocol error: too big {what} count string")
                break
            head, body = t[i], t[i + 1:j]
            if left < 0:
                if head != 0x2A:                             # not a request array: left to hiredis
                    left = 0
                    break
                n = _header_int(body)
                if n is None or n > limits.max_args:
                    raise ProtocolError("Protocol error: invalid multibulk length")
                left = max(n, 0)
                pos = off + j + 2
            else:
                if head != 0x24:
                    raise ProtocolError(f"Protocol error: expected '$', got '{chr(head)}'")
                n = _header_int(body)
                if n is None or n < 0 or n > limits.max_bulk:
                    raise ProtocolError("Protocol error: invalid bulk length")
                left -= 1
                pos = off + j + 2 + n + 2
        self._walk_pos, self._walk_left = pos, left
        cut = min(pos, end) - off
        if cut > 0:
            del t[:cut]
            self._tail_off += cut


def _header_int(body: bytearray) -> int | None:
    if not body or len(body) > 20:
        return None
    try:
        return int(body)
    except ValueError:
        return None


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)


def _split_inline(line: bytes) -> list[bytes]:
    """Words of an inline request; "..." and '...' quote (Redis's sdssplitargs:
    in double quotes \\xHH is a byte and \\n \\r \\t \\b \\a the usual ones,
    in single quotes \\' is a quote)."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\n\r\v\f":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0
        while i < n:
            c = line[i]
            if quote == 0x22:                                # "..." with \-escapes
                if c == 0x5C and i + 3 < n and line[i + 1] == 0x78 and _is_hex(line[i + 2:i + 4]):
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    esc = line[i]
                    cur.append({0x6E: 10, 0x72: 13, 0x74: 9, 0x62: 8, 0x61: 7}.get(esc, esc))
                elif c == 0x22:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r\v\f":
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                else:
                    cur.append(c)
            elif quote == 0x27:
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    cur.append(0x27)
                    i += 2
                    continue
                if c == 0x27:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r\v\f":
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                cur.append(c)
            elif c in b" \t\n\r\v\f":
                break
            elif c in (0x22, 0x27) and not cur:
                quote = c
            else:
                cur.append(c)
            i += 1
        if quote:
            raise ProtocolError("Protocol error: unbalanced quotes in request")
        args.append(bytes(cur))


# --- replies ----------------------------------------------------------------------------------

_CRLF = b"\r\n"
_SIMPLE = {OK: b"+OK\r\n", QUEUED: b"+QUEUED\r\n", PONG: b"+PONG\r\n"}


def error_line(message: str) -> bytes:
    """``-message\\r\\n`` with any line breaks in *message* made spaces."""
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + _CRLF


def _double(v: float) -> bytes:
    if math.isinf(v):
        return b"inf" if v > 0 else b"-inf"
    if math.isnan(v):
        return b"nan"
    return repr(v).encode()


def encode(value: Any, resp3: bool = False) -> bytes:
    """One reply in RESP2 (default) or RESP3."""
    t = type(value)
    if t is bytes:
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if t is Status:
        return _SIMPLE.get(value) or b"+" + value.encode() + _CRLF
    if t is int:
        return b":%d\r\n" % value
    if value is None:
        return b"_\r\n" if resp3 else b"$-1\r\n"
    out: list[bytes] = []
    _encode(value, resp3, out)
    return b"".join(out)


def _encode(value: Any, resp3: bool, out: list[bytes]) -> None:
    t = type(value)
    if t is bytes:
        out.append(b"$%d\r\n" % len(value))
        out.append(value)
        out.append(_CRLF)
    elif t is int:
        out.append(b":%d\r\n" % value)
    elif t is Status:
        out.append(_SIMPLE.get(value) or b"+" + value.encode() + _CRLF)
    elif value is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif t is list or t is tuple:
        out.append(b"*%d\r\n" % len(value))
        for v in value:
            _encode(v, resp3, out)
    elif t is dict:
        out.append((b"%%%d\r\n" if resp3 else b"*%d\r\n") % (len(value) if resp3 else 2 * len(value)))
        for k, v in value.items():
            _encode(k, resp3, out)
            _encode(v, resp3, out)
    elif t is str:
        _encode(value.encode("utf-8", "surrogateescape"), resp3, out)
    elif t is Verbatim:
        data = value.encode("utf-8", "replace")
        if resp3:
            out.append(b"=%d\r\ntxt:%s\r\n" % (len(data) + 4, data))
        else:
            _encode(data, resp3, out)
    elif t is bool:
        out.append((b"#t\r\n" if value else b"#f\r\n") if resp3 else (b":1\r\n" if value else b":0\r\n"))
    elif t is float:
        if resp3:
            out.append(b"," + _double(value) + _CRLF)
        else:
            _encode(_double(value), resp3, out)
    elif value is NULL_ARRAY:
        out.append(b"_\r\n" if resp3 else b"*-1\r\n")
    elif isinstance(value, ReplyError):
        out.append(error_line(value.message))
    elif isinstance(value, int):                              # IntEnum and friends
        out.append(b":%d\r\n" % int(value))
    elif isinstance(value, str):
        _encode(str(value).encode("utf-8", "surrogateescape"), resp3, out)
    else:
        raise TypeError(f"cannot encode {t.__name__} as a RESP reply")
