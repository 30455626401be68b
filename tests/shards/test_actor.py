"""ShardActor end to end: one real shard worker process (spawned with
``lightning_db.actors.spawn``), every op asked from the test process, wrong
payload shapes answered with InvalidArgument, errors keeping their class."""

from __future__ import annotations

import os

import pytest

from lightning_db.actors import spawn
from lightning_db.errors import InvalidArgument, TransactionConflict
from lightning_db.shards.actor import ShardActor

CONFIG = {"max_key_size": 64, "max_value_size": 256}
T = 20.0


@pytest.fixture(scope="module")
def shard(runtime_dir, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("shard"))
    ref = spawn(ShardActor, os.path.join(d, "shard-000"), CONFIG, 7, name="shard-actor-t", runtime_dir=runtime_dir)
    try:
        yield ref, d
    finally:
        ref.stop()


def ask(ref, op, payload=None):
    return ref.ask(op, payload, T).result()


def test_write_get_get_many(shard):
    ref, _ = shard
    seq = ask(ref, "write", [[[1, b"wa", b"1"], [1, b"wb", b"2"]], False])
    assert isinstance(seq, int) and seq >= 2
    assert ask(ref, "get", [b"wa", None]) == b"1"
    assert ask(ref, "get", [b"nope", None]) is None
    assert ask(ref, "get_many", [[b"wb", b"nope", b"wa"], None]) == [b"2", None, b"1"]
    seq2 = ask(ref, "write", [[[0, b"wa", b""]], True])
    assert seq2 == seq + 1
    assert ask(ref, "get", [b"wa", None]) is None
    assert ask(ref, "get", [b"wa", seq]) == b"1"          # read at an older seq
    assert ask(ref, "get_many", [[b"wa"], seq]) == [b"1"]


def test_scan_pages(shard):
    ref, _ = shard
    keys = [b"sc%02d" % i for i in range(25)]
    ask(ref, "write", [[[1, k, k + b"!"] for k in keys], False])
    lo, hi = b"sc", b"sd"

    def pages(reverse, page):
        out, after = [], None
        while True:
            rows = ask(ref, "scan", [lo, hi, reverse, None, page, after])
            assert len(rows) <= page
            out += rows
            if len(rows) < page:
                return out
            after = rows[-1][0]

    for page in (1, 4, 25, 100):
        assert pages(False, page) == [[k, k + b"!"] for k in keys]
        assert pages(True, page) == [[k, k + b"!"] for k in reversed(keys)]
    assert ask(ref, "scan", [b"sc05", b"sc08", False, None, 10, None]) == [[k, k + b"!"] for k in keys[5:8]]
    assert ask(ref, "scan", [b"sc05", b"sc08", False, None, 10, b"sc06"]) == [[keys[7], keys[7] + b"!"]]
    assert ask(ref, "scan", [b"sc05", b"sc08", True, None, 10, b"sc06"]) == [[keys[5], keys[5] + b"!"]]
    assert ask(ref, "scan", [b"sc09", b"sc01", False, None, 10, None]) == []


def test_snapshot_release(shard):
    ref, _ = shard
    ask(ref, "write", [[[1, b"snap", b"old"]], False])
    seq = ask(ref, "snapshot")
    ask(ref, "write", [[[1, b"snap", b"new"]], False])
    assert ask(ref, "get", [b"snap", seq]) == b"old"
    assert ask(ref, "scan", [b"snap", b"snaq", False, seq, 10, None]) == [[b"snap", b"old"]]
    assert ask(ref, "stats")["snapshots"] >= 1
    assert ask(ref, "release", [seq]) is None
    assert ask(ref, "get", [b"snap", None]) == b"new"


def test_transaction_registrations_named_by_a_token(shard):
    """A token makes a transaction's registration one: asked again it is
    not counted twice; released before it arrives it holds nothing."""
    ref, _ = shard
    base = ask(ref, "stats")["tx_registered"]
    seq, _, _ = ask(ref, "snapshot", [True, 41])
    assert ask(ref, "register", [seq, True, 41]) is None           # again, from another thread
    assert ask(ref, "stats")["tx_registered"] == base + 1
    assert ask(ref, "release", [seq, True, 41]) is True
    assert ask(ref, "release", [seq, True, 42]) is True            # overtook its registration
    ref.tell("register", [seq, True, 42])                           # which arrives late
    assert ask(ref, "stats")["tx_registered"] == base


def test_a_check_with_the_token_ends_the_registration_passed_or_not(shard):
    ref, _ = shard
    base = ask(ref, "stats")["tx_registered"]
    seq, _, _ = ask(ref, "snapshot", [True, 51])
    ask(ref, "write", [[[1, b"ck", b"after"]], False])          # written after the snapshot
    with pytest.raises(TransactionConflict):
        ask(ref, "txwrite", [[[1, b"ck", b"lost"]], False, [seq, [], [], False, 51]])
    assert ask(ref, "stats")["tx_registered"] == base
    seq, _, _ = ask(ref, "snapshot", [True, 52])
    tx = b"\x00\x07" + b"c" * 14
    assert ask(ref, "prepare", [tx, [[1, b"ck2", b"v"]], [seq, [], [], False, 52]]) is None
    assert ask(ref, "stats")["tx_registered"] == base
    ask(ref, "abort", [tx])
    with pytest.raises(InvalidArgument, match="needs its snapshot"):
        ask(ref, "txwrite", [[[1, b"ck", b"x"]], False, [None, [], [], False, 53]])


def test_two_phase_ops(shard):
    ref, _ = shard
    tx = b"\x00\x07" + b"a" * 14
    assert ask(ref, "prepare", [tx, [[1, b"tx1", b"v"], [0, b"wb", b""]]]) is None
    assert ask(ref, "get", [b"tx1", None]) is None         # invisible until commit
    assert ask(ref, "in_doubt") == [[tx, [[1, b"tx1", b"v"], [0, b"wb", b""]]]]
    assert ask(ref, "decided", [tx]) is False
    seq = ask(ref, "commit", [tx, True, True])
    assert isinstance(seq, int)
    assert ask(ref, "get", [b"tx1", None]) == b"v" and ask(ref, "get", [b"wb", None]) is None
    assert ask(ref, "in_doubt") == []
    assert ask(ref, "decided", [tx]) is True
    assert ask(ref, "forget", [tx]) is None
    assert ask(ref, "decided", [tx]) is False
    several = [b"\x00\x07" + bytes([c]) * 14 for c in b"cde"]
    for t in several:
        ask(ref, "prepare", [t, [[1, t, b"v"]]])
        ask(ref, "commit", [t, False, True])
    assert ask(ref, "forget", several[:2]) is None           # one message, several txids
    assert sorted(ask(ref, "decisions")) == [several[2]]
    with pytest.raises(InvalidArgument, match="txid"):
        ask(ref, "forget", [several[2], 7])                   # a bad txid: nothing forgotten
    assert ask(ref, "decisions") == [several[2]]
    ask(ref, "forget", [several[2]])

    tx2 = b"\x00\x07" + b"b" * 14
    ask(ref, "prepare", [tx2, [[1, b"tx2", b"v"]]])
    assert ask(ref, "abort", [tx2]) is True
    assert ask(ref, "abort", [tx2]) is False
    assert ask(ref, "get", [b"tx2", None]) is None and ask(ref, "in_doubt") == []
    with pytest.raises(InvalidArgument):
        ask(ref, "commit", [tx2, True, False])               # nothing prepared under it
    # An abort that arrives before its prepare wins: the prepare is refused.
    tx3 = b"\x00\x07" + b"c" * 14
    assert ask(ref, "abort", [tx3]) is False
    with pytest.raises(TransactionConflict):
        ask(ref, "prepare", [tx3, [[1, b"tx3", b"v"]]])
    assert ask(ref, "in_doubt") == []


def test_maintenance(shard):
    ref, d = shard
    ask(ref, "write", [[[1, b"m%d" % i, b"x" * 100] for i in range(50)], True])
    assert ask(ref, "flush") is None
    assert ask(ref, "compact") is None
    v = ask(ref, "verify")
    assert v["tables"] >= 1 and v["blocks"] >= 1
    st = ask(ref, "stats")
    assert st["shard_id"] == 7 and st["keys_estimate"] > 0 and isinstance(st["levels"], list)
    target = os.path.join(d, "ckpt")
    info = ask(ref, "checkpoint", [target])
    assert info["path"] == target and os.path.isdir(target)
    with pytest.raises(InvalidArgument):
        ask(ref, "checkpoint", [target])                     # not empty any more


@pytest.mark.parametrize("op,payload", [
    ("write", None), ("write", [[[1, b"k", b"v"]]]), ("write", [[[1, b"k", b"v"]], "yes"]),
    ("write", [[[2, b"k", b"v"]], False]), ("write", [[[1, "k", b"v"]], False]),
    ("write", [[[1, b"", b"v"]], False]), ("write", [[[1, b"k" * 65, b"v"]], False]),
    ("write", [[[1, b"k", b"v" * 257]], False]), ("write", [[[0, b"k", b"v"]], False]),
    ("write", [[[1, b"k"]], False]), ("write", [b"notalist", False]),
    ("write", [[b"\x01", [b"k"], []], False]), ("write", [[b"\x01", b"k", [b"v"]], False]),
    ("write", [[b"\x02", [b"k"], [b"v"]], False]), ("write", [[b"\x01", [b"k" * 65], [b"v"]], False]),
    ("write", [[b"\x00", [b"k"], [b"v"]], False]), ("write", [[b"\x01", ["k"], [b"v"]], False]),
    ("get", [b"k"]), ("get", ["k", None]), ("get", [b"k", -1]), ("get", [b"k", True]),
    ("get_many", [b"k", None]), ("get_many", [[b"k", 3], None]),
    ("scan", [None, None, False, None, 10]), ("scan", [None, None, "no", None, 10, None]),
    ("scan", [None, None, False, None, 0, None]), ("scan", [1, None, False, None, 10, None]),
    ("scan", [None, None, False, None, 10, "after"]),
    ("release", []), ("release", [None]), ("release", [1, True, 0]), ("release", [1, True, "t"]),
    ("release", [1, True, 1 << 63]), ("register", [1, True, -3]), ("register", [1]),
    ("snapshot", [True, b"t"]), ("snapshot", [True, 1, 2]), ("prepare", [b"\x00\x00" + b"x" * 14]),
    ("prepare", [b"t", []]), ("prepare", [b"\x00\x00" + b"y" * 14, [[9, b"k", b"v"]]]),
    ("commit", [b"\x00\x00" + b"z" * 14, True]), ("commit", [b"\x00\x00" + b"z" * 14, 1, False]),
    ("abort", "txid"), ("decided", [1]), ("forget", []), ("checkpoint", []), ("checkpoint", [3]),
    ("no-such-op", None),
])
def test_bad_payloads(shard, op, payload):
    ref, _ = shard
    with pytest.raises(InvalidArgument):
        ask(ref, op, payload)
    assert ask(ref, "get", [b"k", None]) is None             # still serving, nothing written


def test_restart_keeps_prepared(runtime_dir, tmp_path):
    """A prepare survives kill -9 and a new actor on the same directory."""
    d = str(tmp_path)
    path = os.path.join(d, "s")
    ref = spawn(ShardActor, path, CONFIG, 0, name="shard-restart-a", runtime_dir=runtime_dir)
    try:
        tx = b"\x00\x00" + os.urandom(14)
        ask(ref, "prepare", [tx, [[1, b"p", b"1"]]])
        ref.kill()
        ref = spawn(ShardActor, path, CONFIG, 0, name="shard-restart-b", runtime_dir=runtime_dir)
        assert ask(ref, "in_doubt") == [[tx, [[1, b"p", b"1"]]]]
        ask(ref, "commit", [tx, True, False])
        assert ask(ref, "get", [b"p", None]) == b"1"
    finally:
        ref.stop()


@pytest.mark.parametrize("bad", [
    [True, b"ok-bad", b"v"], [1, b"", b"v"], [1, b"k" * 65, b"v"], [1, b"ok-bad", b"v" * 257],
    [1, "ok-bad", b"v"], [1, b"ok-bad", "v"], [0, b"ok-bad", b"not empty"], [1, b"ok-bad"],
])
def test_a_batch_with_one_bad_op_writes_nothing(shard, bad):
    # Plain value ops are checked together (in C); any other op, or one bad
    # value op, takes the op-by-op check: the whole write is refused.
    ref, _ = shard
    good = [[1, b"ok-%03d" % i, b"v"] for i in range(20)]
    with pytest.raises(InvalidArgument):
        ask(ref, "write", [good[:10] + [bad] + good[10:], False])
    assert ask(ref, "get_many", [[op[1] for op in good], None]) == [None] * 20
    ask(ref, "write", [good, False])
    assert ask(ref, "get_many", [[op[1] for op in good], None]) == [b"v"] * 20
    ask(ref, "write", [[[0, op[1], b""] for op in good], False])     # deletes: the op-by-op path
    assert ask(ref, "get_many", [[op[1] for op in good], None]) == [None] * 20


@pytest.mark.parametrize("bad", [
    [1, b"", b"v"], [1, b"k" * 65, b"v"], [1, b"col-bad", b"v" * 257], [1, "col-bad", b"v"],
    [0, b"col-bad", b"not empty"], [7, b"col-bad", b"v"],
])
def test_ops_as_columns(shard, bad):
    """Pipelined writes carry their ops as [kinds, keys, values]: plain
    values are checked together, anything else op by op, and one bad op
    refuses the whole write."""
    ref, _ = shard
    keys = [b"col-%s-%03d" % (os.urandom(4).hex().encode(), i) for i in range(20)]
    with pytest.raises(InvalidArgument):
        ask(ref, "write", [[bytes([1] * 10 + [bad[0]] + [1] * 10), keys[:10] + [bad[1]] + keys[10:],
                            [b"v"] * 10 + [bad[2]] + [b"v"] * 10], False])
    assert ask(ref, "get_many", [keys, None]) == [None] * 20
    ask(ref, "write", [[bytes([1] * 20), keys, [b"c%d" % i for i in range(20)]], False, [os.urandom(12), 1, 1]])
    assert ask(ref, "get_many", [keys, None]) == [b"c%d" % i for i in range(20)]
    ask(ref, "write", [[bytes([0, 1] * 10), keys, [b"", b"again"] * 10], False])   # deletes: op by op
    assert ask(ref, "get_many", [keys, None]) == [None, b"again"] * 10


def test_the_primary_prepares_without_an_fsync_its_decision_has_one(tmp_path):
    """A prepare on the transaction's primary (the txid's first two bytes)
    is covered by the fsync of its decision, later in the same WAL; on any
    other participant the prepare is fsynced itself."""
    a = ShardActor(str(tmp_path / "shard-003"), {**CONFIG, "sync": "never"}, 3)
    a.on_start()
    try:
        syncs = lambda: a.engine.stats()["wal_syncs"]           # noqa: E731
        mine, other = (3).to_bytes(2, "big") + b"m" * 14, (1).to_bytes(2, "big") + b"o" * 14
        before = syncs()
        a.on_receive("prepare", [mine, [[1, b"pa", b"1"]]])
        assert syncs() == before
        a.on_receive("prepare", [other, [[1, b"pb", b"2"]]])
        assert syncs() == before + 1
        a.on_receive("commit", [mine, True, True])             # the decision
        assert syncs() == before + 2 and a.on_receive("decided", [mine])
        a.on_receive("commit", [other, False, False])
        assert syncs() == before + 2
        assert a.on_receive("get", [b"pa", None]) == b"1" and a.on_receive("get", [b"pb", None]) == b"2"
    finally:
        a.on_stop()
