"""The commit gate's directory (shards/gate.py): a private one goes with its gate."""

from __future__ import annotations

import gc
import os

from lightning_db.shards.gate import CommitGate


def test_a_private_directory_goes_on_close_and_when_the_gate_is_collected(tmp_path):
    g = CommitGate()
    d = g.directory
    with g.shared(5.0):
        pass
    assert os.path.isdir(d)
    g.close()
    assert not os.path.exists(d)
    g.close()                                         # twice is fine

    g = CommitGate()
    d = g.directory
    with g.shared(5.0):
        pass
    del g                                             # never closed: a router a caller forgot
    gc.collect()
    assert not os.path.exists(d)


def test_a_shared_directory_stays(tmp_path):
    d = str(tmp_path / "runtime")
    os.makedirs(d)
    g = CommitGate(d)
    with g.shared(5.0):
        pass
    g.close()
    del g
    gc.collect()
    assert os.path.isdir(d)
