"""``lightning_db.open(path, shards=N)``: the sharded database through the
public API, from one and from several processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import psutil
import pytest

import lightning_db as ldb
from lightning_db.errors import InvalidArgument
from lightning_db.shards.node import NODE_FILE, runtime_dir_for
from tests.waiting import wait_until

CHILD = r"""
import sys, lightning_db as ldb
path, tag, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
with ldb.open(path) as db:                       # shards=None: the recorded count
    for i in range(n):
        db.put(tag + b"-%04d" % i, b"%d" % i)
        db.put(b"shared-%02d" % (i % 10), tag)
    with db.batch() as b:
        for i in range(20):
            b.put(tag + b"-batch-%02d" % i, b"x")
    assert db.get(tag + b"-0000") == b"0"
print("done", flush=True)
"""


def node_pids(path: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "lightning_db.shards.node" in " ".join(p.info["cmdline"])
            and path in " ".join(p.info["cmdline"])]


def test_open_sharded_round_trip_and_reopen(tmp_path):
    path = str(tmp_path / "db")
    with ldb.open(path, shards=2) as db:
        db.put_many({b"k%03d" % i: b"v%d" % i for i in range(200)})
        with db.batch() as b:                    # spans both shards: two-phase commit
            b.put(b"a", b"1")
            b.delete(b"k000")
        assert db.get(b"a") == b"1" and db.get(b"k000") is None
        assert [k for k, _ in db.scan(prefix=b"k00", limit=3)] == [b"k001", b"k002", b"k003"]
        stats = db.stats()
        assert len(stats["shards"]) == 2
        for shard in stats["shards"]:              # per shard: engine, worker, placement obtained
            assert {"keys_estimate", "table_bytes", "memtable_bytes", "levels", "compactions",
                    "wal_syncs"} <= set(shard)
            assert shard["worker"]["pid"] > 0 and shard["worker"]["restarts"] == 0
            assert shard["placement"]["cpu"] in shard["placement"]["cpus"]
            assert shard["placement"]["page_size"] >= 4096
            assert shard["breaker"]["state"] == "closed"
    wait_until(lambda: not node_pids(path), what="the node to exit after the last close")
    with ldb.open(path) as db:                   # None: the recorded count
        assert db.get(b"k199") == b"v199" and db.get(b"a") == b"1"
        assert sum(1 for _ in db.scan()) == 200
    wait_until(lambda: not node_pids(path), what="the node to exit")


def test_the_last_close_returns_once_the_node_has_exited(tmp_path):
    # A caller may copy, move or delete the directory as soon as its last
    # handle's close() returns: the node and its workers are gone by then,
    # their files closed, node.json and the runtime directory removed.
    path, copy = str(tmp_path / "db"), str(tmp_path / "copy")
    db = ldb.open(path, shards=2)
    second = ldb.open(path)
    node = node_pids(path)
    assert len(node) == 1
    workers = [shard["worker"]["pid"] for shard in db.stats()["shards"]]
    db.put_many({b"k%04d" % i: b"v%d" % i for i in range(1000)})
    db.close()                                   # not the last: the node serves on
    assert node_pids(path) == node and second.get(b"k0999") == b"v999"
    second.close()
    assert not node_pids(path)
    for pid in workers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not os.path.exists(os.path.join(path, NODE_FILE)) and not os.path.exists(runtime_dir_for(path))
    shutil.copytree(path, copy)
    shutil.rmtree(path)
    with ldb.open(copy) as db:
        assert db.get(b"k0000") == b"v0" and sum(1 for _ in db.scan()) == 1000
    assert not node_pids(copy)


def test_every_caller_uses_the_nodes_runtime_directory(tmp_path, monkeypatch):
    """The commit gate and the published versions must be the node's for
    every process attached: a caller whose own environment would put a
    runtime directory elsewhere (another root) still takes the node's."""
    from lightning_db.shards import node as node_mod

    path = str(tmp_path / "db")
    with ldb.open(path, shards=2) as first:
        nodes_dir = first.gate.directory
        monkeypatch.setattr(node_mod, "_RUNTIME_ROOT", str(tmp_path / "elsewhere"))
        with ldb.open(path) as second:
            assert second.gate.directory == nodes_dir
            first.put_many({b"a": b"1", b"b": b"2"})
            reads = second.shared_reads
            assert second.get(b"a") == b"1" and second.shared_reads == reads + 1   # from shared memory
    assert not node_pids(path)


def test_layouts_and_counts_are_checked(tmp_path):
    inproc, sharded = str(tmp_path / "inproc"), str(tmp_path / "sharded")
    ldb.open(inproc, shards=0).close()
    with pytest.raises(InvalidArgument, match="in-process"):
        ldb.open(inproc, shards=2)
    with ldb.open(sharded, shards=2):
        with pytest.raises(InvalidArgument, match="sharded"):
            ldb.open(sharded, shards=0)
        with pytest.raises(InvalidArgument, match="2 shard"):
            ldb.open(sharded, shards=3)
    wait_until(lambda: not node_pids(sharded), what="the node to exit")


def test_several_processes_attached_at_once(tmp_path):
    path = str(tmp_path / "db")
    with ldb.open(path, shards=2) as db:
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, path, f"p{i}", "100"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(3)]
        try:
            for p in procs:
                out, err = p.communicate(timeout=180)
                assert p.returncode == 0 and "done" in out, err[-2000:]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert len(node_pids(path)) == 1                 # one node served everyone
        for i in range(3):
            tag = b"p%d" % i
            assert [db.get(tag + b"-%04d" % j) for j in range(100)] == [b"%d" % j for j in range(100)]
            assert db.get_many([tag + b"-batch-%02d" % j for j in range(20)]) == [b"x"] * 20
        assert all(db.get(b"shared-%02d" % j) in (b"p0", b"p1", b"p2") for j in range(10))
    wait_until(lambda: not node_pids(path), what="the node to exit after the last caller")


def test_closing_a_handle_releases_its_connections(tmp_path):
    """Open and close many handles while another keeps the node up: no
    thread or file descriptor stays behind in the caller."""
    import threading

    path = str(tmp_path / "db")
    with ldb.open(path, shards=2) as keep:
        keep.put(b"a", b"1")
        me = psutil.Process()
        db = ldb.open(path, shards=2)                 # warm up: imports, the first zmq context
        db.get(b"a")
        db.close()
        threads, fds = threading.active_count(), me.num_fds()
        for _ in range(40):
            db = ldb.open(path, shards=2)
            assert db.get(b"a") == b"1"
            db.close()
        assert threading.active_count() <= threads
        assert me.num_fds() <= fds + 4, f"{me.num_fds() - fds} descriptors more after 40 open/close"


def test_shards_none_on_a_new_directory_is_one_shard_per_usable_cpu(tmp_path):
    from lightning_db.actors.placement import usable_cpus
    from lightning_db.shards.client import ShardedDatabase

    with ldb.open(tmp_path / "new") as db:
        assert isinstance(db, ShardedDatabase)
        assert len(db.refs) == len(usable_cpus())
        db.put(b"k", b"v")
    with ldb.open(tmp_path / "new") as db:                # the recorded count
        assert len(db.refs) == len(usable_cpus()) and db.get(b"k") == b"v"
    with ldb.open(tmp_path / "inproc", shards=0) as db:
        db.put(b"k", b"v")
    with ldb.open(tmp_path / "inproc") as db:             # what the directory holds
        assert isinstance(db, ldb.Database) and db.get(b"k") == b"v"


def test_segments_get_huge_page_advice_and_report_what_they_got(tmp_path):
    import mmap

    from lightning_db.actors.placement import thp_mode

    with ldb.open(tmp_path / "db", shards=2) as db:
        db.put(b"k", b"v")
        db.flush()
        thp = thp_mode() in ("always", "madvise") and hasattr(mmap, "MADV_HUGEPAGE")
        for st in db.stats()["shards"]:
            assert st["segment_placement"]["huge_page_advice"] >= (1 if thp else 0)
            placement = st["placement"]
            assert placement["page_size"] >= mmap.PAGESIZE
            if placement["page_size"] == mmap.PAGESIZE:          # a fallback always says why
                assert placement["page_size_fallback"]
            if placement["numa_nodes"] == 1:
                assert st["segment_placement"]["numa_bound"] == 0 and placement["node_fallback"]


def test_an_open_never_aborts_a_live_callers_batch(tmp_path, monkeypatch):
    """Opening settles what dead callers left in doubt, and only that: a
    batch whose coordinator is alive (here: another handle opened between
    its prepares and its decision) commits as if nothing happened."""
    from lightning_db.shards import router

    path = str(tmp_path / "db")
    with ldb.open(path, shards=2) as db:
        keys = [b"live-%02d" % i for i in range(20)]
        assert {db.ring.shard_of(k) for k in keys} == {0, 1}
        plain_ask, opened = router.ShardRouter._ask, []

        def ask(self, shard, op, payload=None):
            if op == "decide" and not opened:                            # prepared everywhere, undecided
                opened.append(ldb.open(path))                            # resolves in-doubt txids
            return plain_ask(self, shard, op, payload)

        monkeypatch.setattr(router.ShardRouter, "_ask", ask)
        try:
            with db.batch() as b:
                for k in keys:
                    b.put(k, b"committed")
            monkeypatch.undo()
            assert opened and opened[0].get_many(keys) == [b"committed"] * len(keys)
            assert db.get_many(keys) == [b"committed"] * len(keys)
        finally:
            for other in opened:
                other.close()


def test_a_damaged_layout_is_a_corruption_error_not_an_empty_shard(tmp_path):
    """Once a node started every shard (SHARDS says ``complete``), a shard
    whose files are gone is damage: opening must not give it back empty,
    its keys reading as absent. A SHARDS of a newer format, or unreadable,
    is damage too. Put back, the directory opens whole."""
    import json

    path = str(tmp_path / "db")
    with ldb.open(path, shards=2) as db:
        db.put_many({b"k%d" % i: b"v" for i in range(500)})
    shards_file = os.path.join(path, "SHARDS")
    with open(shards_file) as f:
        record = json.load(f)
    assert record["complete"] is True
    shutil.move(os.path.join(path, "shard-001"), os.path.join(path, "aside"))
    with pytest.raises(ldb.CorruptionError, match="shard 1 of .* has lost its data"):
        ldb.open(path)
    shutil.move(os.path.join(path, "aside"), os.path.join(path, "shard-001"))
    with ldb.open(path) as db:
        assert len(list(db.scan())) == 500
    for text, says in ((json.dumps({**record, "format": 9}), "has format 9"), ("garbage", "is unreadable")):
        with open(shards_file, "w") as f:
            f.write(text)
        with pytest.raises(ldb.CorruptionError, match=says):
            ldb.open(path)


def test_a_first_start_that_failed_leaves_a_directory_that_opens(tmp_path, monkeypatch):
    """SHARDS is ``complete`` only once a node started every shard: a first
    open that failed before (here, its node never started) leaves shard
    directories missing, and the next open creates them instead of calling
    the directory damaged."""
    import json

    from lightning_db.shards import attach as attach_module

    path = str(tmp_path / "db")

    def refuse(*args, **kwargs):
        raise ldb.IOFault("cannot start a node (test)")

    monkeypatch.setattr(attach_module, "_start_node", refuse)
    with pytest.raises(ldb.IOFault):
        ldb.open(path, shards=2)
    monkeypatch.undo()
    with open(os.path.join(path, "SHARDS")) as f:
        assert json.load(f)["complete"] is False
    with ldb.open(path) as db:
        db.put(b"k", b"v")
        assert db.get(b"k") == b"v"
