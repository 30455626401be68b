"""Envelope encoding: round trips, the frozen wire constants, the decoder's
promise (MalformedFrame and nothing else, whatever the bytes), and the
rebuilding of remote errors by name without evaluating anything."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_db import errors
from lightning_db.mailbox import (
    PROTOCOL_VERSION,
    Envelope,
    MailboxBusy,
    MailboxClosed,
    MailboxError,
    MalformedFrame,
    MsgKind,
    RemoteError,
    Timeout,
    decode,
    error_from_payload,
    error_payload,
    raise_remote,
    register_error,
)
from lightning_db.mailbox import envelope as envelope_module
from lightning_db.mailbox.wire import MAX_ID

# --- frozen constants ------------------------------------------------------------------------


def test_wire_constants_are_frozen():
    assert PROTOCOL_VERSION == 1
    assert {k.name: k.value for k in MsgKind} == {"REQUEST": 1, "REPLY": 2, "ERROR": 3, "TELL": 4, "CONTROL": 5}


def test_frame_starts_with_the_version_byte_then_one_msgpack_array():
    data = Envelope(7, MsgKind.REQUEST, "put", 12.5, b"r", [b"k", b"v"]).encode()
    assert data[0] == PROTOCOL_VERSION
    assert msgpack.unpackb(data[1:]) == [7, 1, "put", 12.5, b"r", [b"k", b"v"]]


# --- round trips -----------------------------------------------------------------------------

payloads = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8) | st.integers(-100, 100), inner, max_size=5),
    max_leaves=20,
)

envelopes = st.builds(
    Envelope,
    id=st.integers(0, MAX_ID),
    kind=st.sampled_from(list(MsgKind)),
    op=st.text(max_size=30),
    deadline=st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False),
    reply_to=st.none() | st.binary(max_size=16),
    payload=payloads,
)


@given(envelopes)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(env):
    back = decode(env.encode())
    assert back == env
    assert type(back.kind) is MsgKind and type(back.deadline) is float


def test_round_trip_example_and_helpers():
    env = Envelope(1, MsgKind.REQUEST, "get", 0.0, None, {"keys": [b"a", b"b"], 3: (1, 2)})
    back = Envelope.decode(env.encode())
    assert back.payload == {"keys": [b"a", b"b"], 3: [1, 2]}   # tuples travel as arrays
    reply = decode(env.reply("x").encode())
    assert (reply.id, reply.kind, reply.payload) == (1, MsgKind.REPLY, "x")
    err = decode(env.error(errors.DiskFull("disk full")).encode())
    assert (err.id, err.kind, err.payload) == (1, MsgKind.ERROR, ["DiskFull", "disk full", "RecoverableError"])


def test_int_deadline_is_read_as_float():
    data = bytes([PROTOCOL_VERSION]) + msgpack.packb([1, 1, "op", 5, None, None])
    assert decode(data).deadline == 5.0


# --- the decoder never raises anything but MalformedFrame -------------------------------------


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_random_bytes_raise_only_malformed_frame(data):
    try:
        decode(data)
    except MalformedFrame:
        pass


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_random_bytes_after_the_version_byte_raise_only_malformed_frame(data):
    try:
        decode(bytes([PROTOCOL_VERSION]) + data)
    except MalformedFrame:
        pass


@given(st.lists(payloads, min_size=0, max_size=8))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_msgpack_arrays_decode_or_raise_malformed_frame(fields):
    try:
        env = decode(bytes([PROTOCOL_VERSION]) + msgpack.packb(fields, use_bin_type=True))
    except MalformedFrame:
        return
    assert decode(env.encode()) == env


@given(envelopes, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 10_000))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_damaged_valid_frames_decode_or_raise_malformed_frame(env, flips, cut):
    """Valid frames with a few bytes replaced and the tail cut off."""
    data = bytearray(env.encode())
    for pos, byte in flips:
        data[pos % len(data)] = byte
    try:
        decode(bytes(data[:max(1, cut % (len(data) + 1))]))
    except MalformedFrame:
        pass


BAD_FIELDS = {
    "negative id": [-1, 1, "op", 0.0, None, None],
    "bool id": [True, 1, "op", 0.0, None, None],
    "float id": [1.0, 1, "op", 0.0, None, None],
    "unknown kind": [9, 99, "op", 0.0, None, None],
    "str kind": [9, "REQUEST", "op", 0.0, None, None],
    "op not str": [9, 1, b"op", 0.0, None, None],
    "op too long": [9, 1, "x" * 300, 0.0, None, None],
    "nan deadline": [9, 1, "op", math.nan, None, None],
    "inf deadline": [9, 1, "op", math.inf, None, None],
    "negative deadline": [9, 1, "op", -1.0, None, None],
    "str deadline": [9, 1, "op", "soon", None, None],
    "str reply_to": [9, 1, "op", 0.0, "me", None],
    "five fields": [9, 1, "op", 0.0, None],
    "seven fields": [9, 1, "op", 0.0, None, None, None],
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_each_bad_field_is_malformed_and_the_id_is_kept_when_readable(case):
    fields = BAD_FIELDS[case]
    with pytest.raises(MalformedFrame) as info:
        decode(bytes([PROTOCOL_VERSION]) + msgpack.packb(fields, use_bin_type=True))
    readable_id = len(fields) == 6 and type(fields[0]) is int and fields[0] >= 0
    assert info.value.envelope_id == (fields[0] if readable_id else 0)


@pytest.mark.parametrize("data", [
    b"",
    b"\x02" + msgpack.packb([1, 1, "op", 0.0, None, None]),           # another protocol version
    bytes([PROTOCOL_VERSION]),                                         # nothing after the version
    bytes([PROTOCOL_VERSION]) + b"\xc1",                               # never-used msgpack byte
    bytes([PROTOCOL_VERSION]) + msgpack.packb([1, 1, "op", 0.0, None, None]) + b"\x00",   # trailing bytes
    bytes([PROTOCOL_VERSION]) + b"\xdd\xff\xff\xff\xff",               # array claiming 4G elements
    bytes([PROTOCOL_VERSION]) + b"\x91" * 100_000,                     # nesting deeper than any stack
    bytes([PROTOCOL_VERSION]) + msgpack.packb({"a": 1}),               # a map, not an array
    bytes([PROTOCOL_VERSION]) + b"\xa2\xff\xfe",                       # invalid utf-8 in a str
    "a str", 5, None, [1, 2],                                          # not bytes at all
])
def test_malformed_inputs(data):
    with pytest.raises(MalformedFrame):
        decode(data)


def test_oversized_frames_are_refused_both_ways(monkeypatch):
    monkeypatch.setattr(envelope_module, "MAX_FRAME_SIZE", 100)
    with pytest.raises(MalformedFrame, match="limit of 100 bytes"):
        Envelope(5, MsgKind.REQUEST, "put", 0.0, None, b"x" * 200).encode()
    with pytest.raises(MalformedFrame, match="limit of 100 bytes"):
        decode(bytes([PROTOCOL_VERSION]) + b"\x00" * 200)


@pytest.mark.parametrize("payload", [object(), 2**70, {1.5j: 1}])
def test_unencodable_payload_is_malformed_frame(payload):
    with pytest.raises(MalformedFrame) as info:
        Envelope(5, MsgKind.REQUEST, "put", 0.0, None, payload).encode()
    assert info.value.envelope_id == 5


def test_memoryview_and_bytearray_frames_decode():
    data = Envelope(3, MsgKind.TELL, "t", 0.0, None, [1]).encode()
    assert decode(bytearray(data)) == decode(memoryview(data)) == decode(data)


# --- errors across the wire ------------------------------------------------------------------

REGISTERED = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)] + [
    MalformedFrame, RemoteError, Timeout, MailboxBusy, MailboxError, MailboxClosed]


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda c: c.__name__)
def test_registered_errors_come_back_as_themselves(cls):
    exc = cls("something went wrong")
    back = error_from_payload(decode(Envelope(1, MsgKind.ERROR, "", 0.0, None, error_payload(exc)).encode()).payload)
    assert type(back) is cls
    assert str(back) == "something went wrong"
    assert errors.classify(back) is errors.classify(exc)


def test_corruption_error_keeps_the_file_in_its_message():
    back = error_from_payload(error_payload(errors.CorruptionError("bad block", path="/d/000001.ldb")))
    assert type(back) is errors.CorruptionError and "/d/000001.ldb" in str(back)


def test_error_classes_of_the_mailbox_belong_to_the_taxonomy():
    assert issubclass(MalformedFrame, errors.InvalidArgument)
    assert issubclass(Timeout, errors.TransientError)
    assert issubclass(MailboxBusy, errors.TransientError)
    assert issubclass(MailboxError, errors.RecoverableError)
    assert issubclass(RemoteError, errors.CriticalError)
    assert issubclass(MailboxClosed, errors.FatalError)


def test_foreign_exceptions_become_remote_error():
    back = error_from_payload(error_payload(KeyError("k")))
    assert type(back) is RemoteError and isinstance(back, errors.CriticalError)
    assert back.remote_name == "KeyError" and "KeyError" in str(back)
    with pytest.raises(RemoteError):
        raise_remote(error_payload(ZeroDivisionError("x")))


def test_unknown_lightning_subclass_keeps_its_taxonomy_class():
    class ShardBusy(errors.TransientError):
        pass

    class ShardGone(errors.CriticalError):
        pass

    back = error_from_payload(error_payload(ShardBusy("busy")))
    assert type(back) is errors.TransientError and back.remote_name == "ShardBusy"
    assert type(error_from_payload(error_payload(ShardGone("gone")))) is RemoteError


@pytest.mark.parametrize("name", ["SystemExit", "KeyboardInterrupt", "object", "__import__('os').system('false')",
                                  "LightningError.__subclasses__", "", "os.system"])
def test_names_are_looked_up_never_evaluated(name):
    back = error_from_payload([name, "message"])
    assert type(back) is RemoteError and back.remote_name == name


@pytest.mark.parametrize("payload", [None, "x", [], ["a"], [1, "m"], ["a", 2], ["a", "b", "c", "d"], {"a": 1}])
def test_unreadable_error_payloads_become_malformed_frame(payload):
    assert type(error_from_payload(payload)) is MalformedFrame


def test_registry_accepts_only_lightning_errors_and_one_class_per_name():
    with pytest.raises(errors.InvalidArgument):
        register_error(KeyError)  # type: ignore[arg-type]

    class Timeout(errors.TransientError):   # same name as the mailbox's Timeout
        pass

    with pytest.raises(errors.InvalidArgument, match="already registered"):
        register_error(Timeout)
