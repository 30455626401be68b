"""A checkpoint of a sharded database opens as a sharded database with the
same data, independent of the original."""

from __future__ import annotations

import psutil

import lightning_db as ldb
from tests.waiting import wait_until


def no_node(path: str) -> bool:
    return not any("lightning_db.shards.node" in " ".join(p.info["cmdline"] or []) and path in
                   " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def test_sharded_checkpoint_reopens_with_its_data(tmp_path):
    src, cp = str(tmp_path / "db"), str(tmp_path / "cp")
    with ldb.open(src, shards=2) as db:
        db.put_many({b"k%03d" % i: b"v%d" % i for i in range(300)})
        db.checkpoint(cp)
        db.put(b"after", b"1")
    wait_until(lambda: no_node(src), what="the source node to exit")
    with ldb.open(cp) as copy:                   # shards=None: the recorded count
        assert copy.stats()["shard_count"] == 2
        assert copy.get(b"k299") == b"v299" and copy.get(b"after") is None
        assert sum(1 for _ in copy.scan()) == 300
    wait_until(lambda: no_node(cp), what="the checkpoint's node to exit")
