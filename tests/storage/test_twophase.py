"""The participant side of two-phase commit in one shard's engine: prepared
transactions are durable but invisible until decided, survive WAL rotation,
flushes, crashes and checkpoints, and come back in doubt after recovery."""

from __future__ import annotations

import os

import msgpack
import pytest

from lightning_db.config import Config
from lightning_db.errors import CorruptionError, InvalidArgument, TransactionConflict
from lightning_db.storage.engine import Engine
from lightning_db.storage.faultfs import FaultInjectingFileSystem
from lightning_db.storage.format import Kind, WalOp
from lightning_db.storage.fs import OSFileSystem
from lightning_db.storage.log import encode_frame
from lightning_db.storage.txn import TxCheck
from lightning_db.storage.wal import decode_record, encode_commit, read_wal

V, D = int(Kind.VALUE), int(Kind.DELETE)
SMALL = dict(memtable_size=64 * 1024, l0_compaction_trigger=2)


def test_prepare_is_invisible_until_commit(tmp_path):
    eng = Engine(str(tmp_path), Config())
    eng.write([(V, b"gone", b"old")])
    eng.prepare(b"tx1", [(V, b"a", b"1"), (D, b"gone", b"")])
    assert eng.get(b"a") is None and eng.get(b"gone") == b"old"
    assert eng.in_doubt() == {b"tx1": [(V, b"a", b"1"), (D, b"gone", b"")]}
    eng.commit_prepared(b"tx1")
    assert eng.get(b"a") == b"1" and eng.get(b"gone") is None
    assert eng.in_doubt() == {}
    eng.close()


def test_abort_drops_and_unknown_or_repeated_txids_are_refused(tmp_path):
    eng = Engine(str(tmp_path), Config())
    eng.prepare(b"tx", [(V, b"a", b"1")])
    with pytest.raises(InvalidArgument, match="already prepared"):
        eng.prepare(b"tx", [(V, b"b", b"2")])
    assert eng.abort_prepared(b"tx") is True
    assert eng.abort_prepared(b"tx") is False
    with pytest.raises(InvalidArgument, match="no prepared transaction"):
        eng.commit_prepared(b"tx")
    assert eng.get(b"a") is None
    eng.close()
    eng = Engine(str(tmp_path), Config())
    assert eng.in_doubt() == {} and eng.get(b"a") is None
    eng.close()


def test_in_doubt_after_reopen_then_decided(tmp_path):
    eng = Engine(str(tmp_path), Config())
    eng.prepare(b"c", [(V, b"k1", b"v1")])
    eng.prepare(b"a", [(V, b"k2", b"v2")])
    eng.prepare(b"done", [(V, b"k3", b"v3")])
    eng.commit_prepared(b"done")
    eng.close()
    eng = Engine(str(tmp_path), Config())
    assert set(eng.in_doubt()) == {b"c", b"a"}
    assert eng.get(b"k1") is None and eng.get(b"k3") == b"v3"
    eng.commit_prepared(b"c")
    eng.abort_prepared(b"a")
    eng.close()
    eng = Engine(str(tmp_path), Config())
    assert eng.in_doubt() == {}
    assert eng.get(b"k1") == b"v1" and eng.get(b"k2") is None
    eng.close()


def test_prepared_survive_rotation_flush_and_wal_deletion(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    eng.prepare(b"long", [(V, b"p", b"prepared")])
    for i in range(4000):                        # many memtables: the first WAL is long gone
        eng.write([(V, b"%06d" % i, b"x" * 60)])
    eng.flush()
    eng.close()
    eng = Engine(str(tmp_path), Config(**SMALL))
    assert eng.in_doubt() == {b"long": [(V, b"p", b"prepared")]}
    eng.commit_prepared(b"long")
    assert eng.get(b"p") == b"prepared" and eng.get(b"003999") == b"x" * 60
    eng.close()


def test_prepare_is_durable_through_power_loss(tmp_path):
    fs = FaultInjectingFileSystem()
    eng = Engine(str(tmp_path), Config(sync="never"), fs=fs)
    eng.write([(V, b"unsynced", b"1")])
    eng.prepare(b"t", [(V, b"k", b"v")])         # returns only once durable
    fs.power_loss()
    eng = Engine(str(tmp_path), Config())
    assert eng.in_doubt() == {b"t": [(V, b"k", b"v")]}
    assert eng.get(b"unsynced") == b"1"          # the prepare's fsync covered it too
    eng.close()


def test_checkpoint_carries_in_doubt_transactions(tmp_path):
    eng = Engine(str(tmp_path / "db"), Config(**SMALL))
    eng.prepare(b"t", [(V, b"k", b"v")])
    for i in range(2000):
        eng.write([(V, b"%06d" % i, b"x" * 60)])
    eng.checkpoint(str(tmp_path / "cp"))
    eng.close()
    cp = Engine(str(tmp_path / "cp"), Config(**SMALL))
    assert set(cp.in_doubt()) == {b"t"}
    cp.commit_prepared(b"t")
    assert cp.get(b"k") == b"v" and cp.get(b"001999") == b"x" * 60
    cp.close()


def test_primary_keeps_its_decision_until_forgotten(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    eng.prepare(b"t", [(V, b"k", b"v")])
    eng.commit_prepared(b"t", remember=True)
    assert eng.decided(b"t") and eng.get(b"k") == b"v"
    for i in range(3000):                        # rotations and flushes: the commit record's WAL goes
        eng.write([(V, b"%06d" % i, b"x" * 60)])
    eng.flush()
    eng.close()
    eng = Engine(str(tmp_path), Config(**SMALL))
    assert eng.decided(b"t") and eng.in_doubt() == {}
    eng.forget(b"t")
    assert not eng.decided(b"t")
    eng.close()
    eng = Engine(str(tmp_path), Config(**SMALL))
    assert not eng.decided(b"t") and eng.get(b"k") == b"v"
    eng.close()


def test_many_decisions_forgotten_in_one_write_stay_forgotten(tmp_path):
    eng = Engine(str(tmp_path), Config(**SMALL))
    txids = [b"t%d" % i for i in range(5)]
    for i, t in enumerate(txids):
        eng.prepare(t, [(V, b"k%d" % i, b"v")])
        eng.commit_prepared(t, remember=True)
    assert eng.decisions() and sorted(eng.decisions()) == txids
    eng.forget(b"t0", b"t2", b"t2", b"unknown", b"t4")     # a duplicate and an unknown one are ignored
    assert sorted(eng.decisions()) == [b"t1", b"t3"]
    eng.forget(b"unknown")                                   # nothing kept of it: nothing written
    eng.close()
    eng = Engine(str(tmp_path), Config(**SMALL))
    assert sorted(eng.decisions()) == [b"t1", b"t3"]
    assert [eng.get(b"k%d" % i) for i in range(5)] == [b"v"] * 5
    eng.close()


def test_a_decision_before_the_apply_survives_power_loss_rotation_and_checkpoint(tmp_path):
    """``decide``: durable (its fsync covers the unsynced prepare before it),
    nothing applied, an abort refused; after a power cut, WAL rotations and
    a checkpoint the transaction is still prepared and decided, and its
    commit (unsynced) applies it while the decision stays until forget."""
    fs = FaultInjectingFileSystem()
    eng = Engine(str(tmp_path / "db"), Config(sync="never", **SMALL), fs=fs)
    eng.prepare(b"t", [(V, b"k", b"v")], sync=False)
    with pytest.raises(InvalidArgument):
        eng.decide(b"unknown")
    eng.decide(b"t")
    eng.decide(b"t")                              # a retry: still one decision
    assert eng.get(b"k") is None and eng.decided(b"t")
    assert eng.abort_prepared(b"t") is False and eng.in_doubt() == {b"t": [(V, b"k", b"v")]}
    fs.power_loss()
    eng = Engine(str(tmp_path / "db"), Config(**SMALL))
    assert eng.decided(b"t") and eng.in_doubt() == {b"t": [(V, b"k", b"v")]} and eng.get(b"k") is None
    for i in range(2000):                        # rotations and flushes
        eng.write([(V, b"%06d" % i, b"x" * 60)])
    eng.checkpoint(str(tmp_path / "cp"))
    eng.close()
    for where in ("db", "cp"):
        eng = Engine(str(tmp_path / where), Config(**SMALL))
        assert eng.decided(b"t") and set(eng.in_doubt()) == {b"t"}
        eng.commit_prepared(b"t", sync=False)
        assert eng.get(b"k") == b"v" and eng.in_doubt() == {} and eng.decided(b"t")
        eng.forget(b"t")
        assert not eng.decided(b"t")
        eng.close()


def test_decision_without_remember_is_not_kept(tmp_path):
    eng = Engine(str(tmp_path), Config())
    eng.prepare(b"t", [(V, b"k", b"v")])
    eng.commit_prepared(b"t")
    assert not eng.decided(b"t")
    eng.close()
    eng = Engine(str(tmp_path), Config())
    assert not eng.decided(b"t") and eng.get(b"k") == b"v"
    eng.close()


def test_prepare_commit_at_every_crash_point_is_all_or_nothing(tmp_path):
    """Crash the participant at every I/O operation of prepare + commit:
    afterwards the transaction is applied, in doubt (then commit works), or
    absent — never half applied."""
    from lightning_db.storage.faultfs import SimulatedCrash

    def run(fs, path):
        eng = Engine(path, Config(sync="never"), fs=fs)
        eng.prepare(b"t", [(V, b"a", b"1"), (V, b"b", b"2")])
        eng.commit_prepared(b"t")
        eng.close()

    probe = FaultInjectingFileSystem()
    run(probe, str(tmp_path / "probe"))
    outcomes = set()
    for i in range(1, probe.ops + 1):
        path = str(tmp_path / f"c{i}")
        fs = FaultInjectingFileSystem(crash_at=i)
        try:
            run(fs, path)
        except SimulatedCrash:
            pass
        fs.power_loss()
        eng = Engine(path, Config())
        state = (eng.get(b"a"), eng.get(b"b"))
        if b"t" in eng.in_doubt():
            assert state == (None, None)
            eng.commit_prepared(b"t")
            state = (eng.get(b"a"), eng.get(b"b"))
            outcomes.add("in doubt")
        assert state in ((None, None), (b"1", b"2")), (i, state)
        outcomes.add(state)
        eng.close()
    assert "in doubt" in outcomes and (None, None) in outcomes


def test_an_unsynced_commit_is_made_durable_by_a_later_prepare(tmp_path):
    # What the coordinator relies on before it lets the primary forget a
    # decision (shards/coordinator.py): a participant's commit that is not
    # synced can be lost to a power cut (the transaction is in doubt again,
    # settled by asking the primary), and a later synced prepare makes it
    # durable (sync_wal too).
    fs = FaultInjectingFileSystem()
    eng = Engine(str(tmp_path / "a"), Config(sync="never"), fs=fs)
    eng.prepare(b"t1", [(V, b"k1", b"v1")])
    eng.commit_prepared(b"t1", sync=False)
    fs.power_loss()
    eng = Engine(str(tmp_path / "a"), Config())
    assert eng.in_doubt() == {b"t1": [(V, b"k1", b"v1")]} and eng.get(b"k1") is None
    eng.close()

    for make_durable in ("prepare", "sync_wal"):
        fs = FaultInjectingFileSystem()
        path = str(tmp_path / make_durable)
        eng = Engine(path, Config(sync="never"), fs=fs)
        eng.prepare(b"t1", [(V, b"k1", b"v1")])
        eng.commit_prepared(b"t1", sync=False)
        if make_durable == "prepare":
            eng.prepare(b"t2", [(V, b"k2", b"v2")])
        else:
            eng.sync_wal()
        fs.power_loss()
        eng = Engine(path, Config())
        assert eng.get(b"k1") == b"v1", make_durable
        assert b"t1" not in eng.in_doubt(), make_durable
        eng.close()


def test_a_commit_names_its_prepare_and_replays_from_it(tmp_path):
    """The commit record carries the txid, not the ops again (they are in
    the PREPARE before it); replay applies the PREPARE's ops, also when
    WAL rotations and a flush came between the prepare and the commit."""
    eng = Engine(str(tmp_path), Config(**SMALL))
    big = [(V, b"k%03d" % i, b"v" * 200) for i in range(100)]
    eng.prepare(b"near", big)
    eng.commit_prepared(b"near", remember=True)
    eng.prepare(b"far", [(V, b"far", b"1"), (D, b"k000", b"")])
    for i in range(2000):                        # rotations and flushes: "far"'s PREPARE is logged again
        eng.write([(V, b"%06d" % i, b"x" * 60)])
    eng.commit_prepared(b"far")
    wals = sorted(n for n in os.listdir(tmp_path) if n.endswith(".log"))
    records = [r for n in wals for r in read_wal(OSFileSystem(), str(tmp_path / n)).records]
    commits = [r for r in records if r.op == WalOp.COMMIT]
    assert [(r.txid, r.ops, r.remember) for r in commits][-1] == (b"far", [], False)
    eng.close()
    eng = Engine(str(tmp_path), Config(**SMALL))
    assert eng.get(b"far") == b"1" and eng.get(b"k000") is None and eng.get(b"k099") == b"v" * 200
    assert eng.decided(b"near") and eng.in_doubt() == {}
    eng.close()


def test_a_commit_replayed_from_the_wal_after_power_loss(tmp_path):
    fs = FaultInjectingFileSystem()
    eng = Engine(str(tmp_path / "db"), Config(sync="never", **SMALL), fs=fs)
    eng.prepare(b"t", [(V, b"a", b"1"), (V, b"b", b"2")])
    eng.commit_prepared(b"t", sync=True)         # durable: the WAL holds PREPARE then COMMIT
    fs.power_loss()
    eng = Engine(str(tmp_path / "db"), Config(**SMALL))
    assert (eng.get(b"a"), eng.get(b"b")) == (b"1", b"2") and eng.in_doubt() == {}
    eng.close()


def test_a_commit_without_its_prepare_is_corruption(tmp_path):
    eng = Engine(str(tmp_path), Config())
    eng.write([(V, b"a", b"1")])
    eng.close()
    live = max(n for n in os.listdir(tmp_path) if n.endswith(".log"))
    with open(tmp_path / live, "ab") as f:
        f.write(encode_frame(encode_commit(99, b"nowhere")))
    with pytest.raises(CorruptionError, match="without its PREPARE"):
        Engine(str(tmp_path), Config())


def test_older_self_contained_commits_still_replay(tmp_path):
    """WALs from before the COMMIT record hold commits that carry their
    ops (a BATCH with the txid, and 1 when it is the primary's decision)."""
    eng = Engine(str(tmp_path), Config())
    eng.write([(V, b"a", b"1")])
    eng.close()
    live = max(n for n in os.listdir(tmp_path) if n.endswith(".log"))
    ops = [[V, b"old", b"v"], [D, b"a", b""]]
    with open(tmp_path / live, "ab") as f:
        for rec in ((int(WalOp.PREPARE), 0, ops, b"t"), (int(WalOp.BATCH), 50, ops, b"t", 1)):
            f.write(encode_frame(msgpack.packb(rec, use_bin_type=True)))
    eng = Engine(str(tmp_path), Config())
    assert eng.get(b"old") == b"v" and eng.get(b"a") is None
    assert eng.in_doubt() == {} and eng.decided(b"t")
    eng.close()


@pytest.mark.parametrize("rec", [
    (int(WalOp.COMMIT), 1, [[1, b"k", b"v"]], b"t"),       # a commit names its prepare: no ops
    (int(WalOp.COMMIT), 1, []),                             # no txid
    (int(WalOp.COMMIT), 1, [], b"t", 1, 2),
])
def test_malformed_commit_records_are_refused(rec):
    with pytest.raises(CorruptionError):
        decode_record(msgpack.packb(rec, use_bin_type=True), "wal")


# --- read intents across a restart ---------------------------------------------------------


def _writes_conflict(eng: Engine, key: bytes) -> bool:
    """Whether a transaction's write of *key* meets another's intents."""
    try:
        eng.write([(V, key, b"w")], check=TxCheck(None))
    except TransactionConflict:
        return True
    return False


@pytest.mark.parametrize("ops", [[(V, b"w", b"1")], []], ids=["writer", "read-only"])
def test_a_prepared_transactions_read_intents_survive_a_restart(tmp_path, ops):
    """A serializable transaction validated its reads and prepared (the
    primary decided it; the commit is yet to come). The shard restarts in
    between, as a killed worker does: a write of a key it read or into a
    range it scanned must still conflict until the commit or abort
    releases them, else it slips in between the transaction's validation
    and its commit (G2, found by the stress harness after a worker kill)."""
    eng = Engine(str(tmp_path), Config(**SMALL))
    eng.write([(V, b"r", b"0"), (V, b"s1", b"0")])
    snap = eng.begin_tx()
    check = TxCheck(snap, reads=[b"r"], ranges=[(b"s", b"t")], serializable=True)
    eng.prepare(b"tx", ops, check)
    for i in range(3000):                        # rotations: the PREPARE moves from WAL to WAL
        eng.write([(V, b"%06d" % i, b"x" * 60)])
    eng.close()
    eng = Engine(str(tmp_path), Config(**SMALL))
    assert eng.in_doubt() == {b"tx": ops}
    assert _writes_conflict(eng, b"r") and _writes_conflict(eng, b"s5") and not _writes_conflict(eng, b"u")
    if ops:
        eng.commit_prepared(b"tx")
    else:
        assert eng.abort_prepared(b"tx")         # a read-only participant: nothing to apply either way
    assert not _writes_conflict(eng, b"r") and not _writes_conflict(eng, b"s5")
    eng.close()
    eng = Engine(str(tmp_path), Config(**SMALL))
    assert eng.in_doubt() == {} and not _writes_conflict(eng, b"r")
    assert eng.get(b"w") == (b"1" if ops else None)
    eng.close()


def test_a_snapshot_isolation_prepare_logs_no_read_intents(tmp_path):
    eng = Engine(str(tmp_path), Config())
    eng.prepare(b"tx", [(V, b"w", b"1")], TxCheck(eng.begin_tx(), reads=[], serializable=False))
    eng.close()
    live = max(n for n in os.listdir(tmp_path) if n.endswith(".log"))
    recs = [r for r in read_wal(OSFileSystem(), str(tmp_path / live)).records if r.op == WalOp.PREPARE]
    assert [(r.txid, r.intents) for r in recs] == [(b"tx", None)]


@pytest.mark.parametrize("intents", [
    [[b"k"]],                                    # no ranges
    [[b"k"], [[b"a"]]],                          # a range without its end
    [["k"], []],                                 # a key that is not bytes
    [[b"k"], [[b"a", 5]]],
    {"reads": []},
])
def test_malformed_prepare_intents_are_refused(intents):
    with pytest.raises(CorruptionError):
        decode_record(msgpack.packb((int(WalOp.PREPARE), 0, [], b"t", intents), use_bin_type=True), "wal")
