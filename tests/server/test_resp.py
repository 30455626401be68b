"""RESP framing without a server: the request parser (hiredis plus the
limits walk) fed in every possible split, reply encoding in RESP2 and RESP3,
and Redis glob patterns."""

from __future__ import annotations

import random
import re

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_db.server.pattern import literal_prefix, matcher
from lightning_db.server.resp import (
    NULL_ARRAY,
    OK,
    Limits,
    ReplyError,
    RequestParser,
    Status,
    Verbatim,
    encode,
)


def frame(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def parser(max_bulk: int = 1 << 20, max_buffer: int = 4 << 20, max_args: int = 1000) -> RequestParser:
    return RequestParser(Limits(max_bulk, max_buffer, max_args))


def feed_in_pieces(p: RequestParser, data: bytes, cuts: list[int]) -> list[list[bytes]]:
    out, prev = [], 0
    for c in sorted(set(cuts)) + [len(data)]:
        out += p.feed(data[prev:c])
        prev = c
    return out


COMMANDS = [[b"SET", b"k", b"v" * 300], [b"GET", b"k"], [b"PING"], [b"MSET"] + [b"x%d" % i for i in range(20)],
            [b"ECHO", b""], [b"ECHO", b"\r\n*3\r\n$1"]]


def test_every_split_point_gives_the_same_commands():
    stream = b"".join(frame(*c) for c in COMMANDS)
    for cut in range(len(stream) + 1):
        p = parser()
        assert feed_in_pieces(p, stream, [cut]) == COMMANDS, cut
        assert p.error is None and p.buffered == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6), min_size=1, max_size=12),
       st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_random_streams_and_splits(cmds, cuts):
    stream = b"".join(frame(*c) for c in cmds)
    assert feed_in_pieces(parser(), stream, [c % (len(stream) + 1) for c in cuts]) == cmds


def test_inline_requests_mixed_with_arrays():
    data = b'PING\r\nSET a "b c"\r\n' + frame(b"GET", b"a") + b"ECHO 'x y'\n\r\n" + frame(b"PING") + b"QUIT\r\n"
    want = [[b"PING"], [b"SET", b"a", b"b c"], [b"GET", b"a"], [b"ECHO", b"x y"], [b"PING"], [b"QUIT"]]
    for cut in range(len(data) + 1):
        assert feed_in_pieces(parser(), data, [cut]) == want, cut


def test_inline_quoting_as_redis_splits_arguments():
    """sdssplitargs: in double quotes \\xHH is a byte (not followed by two hex
    digits it is a plain x) and \\n \\r \\t \\b \\a the usual bytes; in single
    quotes only \\' is an escape."""
    cases = [(b'ECHO "\\x41\\x00B"', [b"ECHO", b"A\x00B"]), (b'ECHO "\\xZZ"', [b"ECHO", b"xZZ"]),
             (b'ECHO "a\\tb\\q"', [b"ECHO", b"a\tbq"]), (b"ECHO 'a\\'b'", [b"ECHO", b"a'b"]),
             (b"ECHO 'a\\\\b'", [b"ECHO", b"a\\\\b"]), (b'ECHO "\\xff"', [b"ECHO", b"\xff"])]
    for line, want in cases:
        assert parser().feed(line + b"\r\n") == [want], line


_PIECES = st.one_of(
    st.lists(st.binary(max_size=30), min_size=1, max_size=5).map(lambda c: frame(*c)),
    st.sampled_from([b"*0\r\n", b"*-1\r\n", b"PING\r\n", b"ECHO ab\n", b"*1\r\n*1\r\n$1\r\na\r\n",
                     b"*2\r\n$4\r\nECHO\r\n:5\r\n", b"+OK\r\n", b"-ERR x\r\n", b"*1\r\n$-1\r\n",
                     b"*1\r\n+PING\r\n", b"*2\r\n$4\r\nECHO\r\n(12\r\n", b"*1\r\n%1\r\n*0\r\n$1\r\nx\r\n",
                     b"*1\r\n=8\r\ntxt:PING\r\n"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=10), st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_whole_reads_parse_as_the_general_path_does(pieces, cuts):
    """Reads of whole requests take a shorter way (``_feed_whole``); any
    read it cannot take whole (incomplete, inline, null or nested arrays,
    errors) goes the general way from its start: same commands, same error."""
    stream = b"".join(pieces)
    cuts = [c % (len(stream) + 1) for c in cuts]
    fast = parser()
    got = feed_in_pieces(fast, stream, cuts)
    slow = parser()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lightning_db.server.resp.WHOLE_MAX", -1)
        assert got == feed_in_pieces(slow, stream, cuts)
    assert (fast.error, fast.buffered) == (slow.error, slow.buffered)


@pytest.mark.parametrize("data, message", [
    (b"*1\r\n$2000000\r\n", "Protocol error: invalid bulk length"),
    (b"*2\r\n$3\r\nGET\r\n$-7\r\n", "Protocol error: invalid bulk length"),
    (b"*1001\r\n", "Protocol error: invalid multibulk length"),
    (b"*x\r\n", "Protocol error: invalid multibulk length"),
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
    (b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\na\r\n", "Protocol error: expected '$', got '*'"),
    (b"*1\r\n" + b"$" + b"1" * 70000, "Protocol error: too big bulk count string"),
    (b"X" * 70000, "Protocol error: too big inline request"),
    (b'GET "a\r\n', "Protocol error: unbalanced quotes in request"),
    # Only bulk strings are arguments: hiredis reads these as bytes, ints or
    # maps (a map of arrays it cannot even build); each is refused by its byte.
    (b"*1\r\n+PING\r\n", "Protocol error: expected '$', got '+'"),
    (b"*1\r\n=8\r\ntxt:PING\r\n", "Protocol error: expected '$', got '='"),
    (b"*1\r\n(123\r\n", "Protocol error: expected '$', got '('"),
    (b"*2\r\n$3\r\nGET\r\n+sa\r\n", "Protocol error: expected '$', got '+'"),
    (b"*1\r\n_\r\n", "Protocol error: expected '$', got '_'"),
    (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
    (b"*1\r\n~1\r\n$1\r\na\r\n", "Protocol error: expected '$', got '~'"),
    (b"*1\r\n>1\r\n$1\r\na\r\n", "Protocol error: expected '$', got '>'"),
    (b"*1\r\n%1\r\n", "Protocol error: expected '$', got '%'"),
    (b"*1\r\n%1\r\n*0\r\n$1\r\nx\r\n", "Protocol error: expected '$', got '%'"),
    (b"*3\r\n$3\r\nSET\r\n$20\r\n01234567890123456789\r\n%1\r\n%1\r\n", "Protocol error: expected '$', got '%'"),
])
def test_protocol_errors(data, message):
    for cuts in ([], [len(data) // 2], list(range(0, len(data), 997)), *([c] for c in range(1, min(len(data), 60)))):
        p = parser()
        feed_in_pieces(p, data, cuts)
        assert p.error == message, cuts


def test_commands_before_an_odd_argument_type_run_and_nothing_after():
    data = frame(b"SET", b"ma", b"1") + b"*1\r\n%1\r\n*0\r\n$1\r\nx\r\n" + frame(b"PING")
    for cut in range(len(data) + 1):
        p = parser()
        assert feed_in_pieces(p, data, [cut]) == [[b"SET", b"ma", b"1"]], cut
        assert p.error == "Protocol error: expected '$', got '%'", cut


@pytest.mark.parametrize("data, message", [
    (b"*1073741824\r\n", "Protocol error: invalid multibulk length"),
    (b"*4294967295\r\n", "Protocol error: invalid multibulk length"),
    (frame(b"PING") + b"*1073741824\r\n", "Protocol error: invalid multibulk length"),
    (b"*2\r\n$3\r\nGET\r\n*1073741824\r\n", "Protocol error: expected '$', got '*'"),
])
def test_array_counts_over_the_limit_never_reach_hiredis(monkeypatch, data, message):
    """hiredis allocates an array's list when it reads the count: a count
    over max_args is refused before hiredis sees it, wherever the reads cut
    the header (a list of 2**30 would be 8 GiB)."""
    counts: list[int] = []
    real = hiredis.Reader

    class Spy:
        def __init__(self, *a, **kw):
            self._r = real(*a, **kw)

        def feed(self, buf, *a):
            counts.extend(int(x) for x in re.findall(rb"\*(\d{7,})", bytes(buf)))
            return self._r.feed(buf, *a)

        def gets(self, *a):
            return self._r.gets(*a)
    monkeypatch.setattr("lightning_db.server.resp.hiredis.Reader", Spy)
    for cuts in ([], *([c] for c in range(1, len(data)))):
        p = RequestParser(Limits(1 << 20, 4 << 20, 1024 * 1024))
        feed_in_pieces(p, data, cuts)
        assert p.error == message, cuts
        assert counts == [], cuts


def test_a_long_count_inside_a_value_is_data():
    cmds = [[b"SET", b"k", b"*1073741824\r\n"], [b"ECHO", b"x*99999999"], [b"GET", b"k"]]
    stream = b"".join(frame(*c) for c in cmds)
    for cut in range(len(stream) + 1):
        p = RequestParser(Limits(1 << 20, 4 << 20, 1024 * 1024))
        assert feed_in_pieces(p, stream, [cut]) == cmds, cut
        assert p.error is None and p.buffered == 0


def test_commands_before_an_error_are_returned():
    p = parser()
    assert p.feed(frame(b"PING") + b"*1\r\n$9999999\r\n" + frame(b"PING")) == [[b"PING"]]
    assert p.error == "Protocol error: invalid bulk length"
    assert p.feed(frame(b"PING")) == []


def test_client_query_buffer_limit():
    p = parser(max_bulk=1000, max_buffer=5000)
    data = frame(*[b"v" * 900] * 10)
    assert p.feed(data[:4000]) == [] and p.error is None and p.buffered == 4000
    p.feed(data[4000:6000])
    assert p.error is not None and "client query buffer" in p.error


def test_the_limits_walk_keeps_little():
    """A large value arriving in small pieces is not copied by the walk."""
    p = parser(max_bulk=1 << 20, max_buffer=4 << 20)
    data = frame(b"SET", b"k", b"v" * 500_000)
    for i in range(0, len(data), 1000):
        got = p.feed(data[i:i + 1000])
        if i + 1000 < len(data):
            assert got == [] and len(p._tail) <= 1000
    assert got == [[b"SET", b"k", b"v" * 500_000]] and p.buffered == 0


def test_hiredis_is_the_parser():
    assert isinstance(parser()._reader, hiredis.Reader)


# --- replies ----------------------------------------------------------------------------------


def decode(data: bytes):
    r = hiredis.Reader(replyError=ReplyError)
    r.feed(data)
    out = r.gets()
    assert r.gets() is False
    return out


@pytest.mark.parametrize("value, resp2, resp3", [
    (OK, b"+OK\r\n", b"+OK\r\n"),
    (b"ab", b"$2\r\nab\r\n", b"$2\r\nab\r\n"),
    ("é", b"$2\r\n\xc3\xa9\r\n", b"$2\r\n\xc3\xa9\r\n"),
    (None, b"$-1\r\n", b"_\r\n"),
    (NULL_ARRAY, b"*-1\r\n", b"_\r\n"),
    (-7, b":-7\r\n", b":-7\r\n"),
    (True, b":1\r\n", b"#t\r\n"),
    (1.5, b"$3\r\n1.5\r\n", b",1.5\r\n"),
    (float("inf"), b"$3\r\ninf\r\n", b",inf\r\n"),
    ([b"a", [1, None]], b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n", b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n_\r\n"),
    ({b"k": 1}, b"*2\r\n$1\r\nk\r\n:1\r\n", b"%1\r\n$1\r\nk\r\n:1\r\n"),
    (Verbatim("a\r\nb"), b"$4\r\na\r\nb\r\n", b"=8\r\ntxt:a\r\nb\r\n"),
    (ReplyError("ERR bad\r\nthing"), b"-ERR bad  thing\r\n", b"-ERR bad  thing\r\n"),
    (Status("QUEUED"), b"+QUEUED\r\n", b"+QUEUED\r\n"),
])
def test_encode(value, resp2, resp3):
    assert encode(value) == resp2
    assert encode(value, resp3=True) == resp3


def test_encoded_replies_parse_back():
    value = [b"x" * 1000, 12, [b"", [b"deep"]], None]
    assert decode(encode(value)) == value


# --- glob patterns ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, yes, no", [
    (b"h?llo", [b"hello", b"hallo", b"h\nllo"], [b"hllo", b"heello"]),
    (b"h*llo", [b"hllo", b"heeeello"], [b"hell"]),
    (b"h[ae]llo", [b"hello", b"hallo"], [b"hillo"]),
    (b"h[^e]llo", [b"hallo", b"hbllo"], [b"hello"]),
    (b"h[a-b]llo", [b"hallo", b"hbllo"], [b"hcllo"]),
    (b"h[b-a]llo", [b"hallo", b"hbllo"], [b"hcllo"]),
    (rb"h\*llo", [b"h*llo"], [b"hello"]),
    (rb"[\]]", [b"]"], [b"a"]),
    (b"a[bc", [b"ab", b"ac"], [b"a[bc"]),
    (b"*", [b"", b"anything"], []),
    (b"a.b+(c)", [b"a.b+(c)"], [b"axbb(c)"]),
    (b"[]", [], [b"a", b""]),
])
def test_glob(pattern, yes, no):
    m = matcher(pattern)
    assert all(m(s) for s in yes) and not any(m(s) for s in no)


def test_literal_prefix():
    assert literal_prefix(b"user:*") == b"user:" and literal_prefix(b"abc") == b"abc"
    assert literal_prefix(b"a?c") == b"a" and literal_prefix(rb"a\*") == b"a" and literal_prefix(b"*") == b""


def test_random_glob_agrees_with_a_simple_matcher():
    def slow(p: bytes, s: bytes) -> bool:
        if not p:
            return not s
        if p[0:1] == b"*":
            return any(slow(p[1:], s[i:]) for i in range(len(s) + 1))
        if not s:
            return False
        if p[0:1] == b"?":
            return slow(p[1:], s[1:])
        return p[0] == s[0] and slow(p[1:], s[1:])

    rng = random.Random(7)
    for _ in range(500):
        p = bytes(rng.choice(b"ab*?") for _ in range(rng.randint(0, 6)))
        s = bytes(rng.choice(b"ab") for _ in range(rng.randint(0, 6)))
        assert matcher(p)(s) == slow(p, s), (p, s)
