"""Issue 3: four processes attached at once, reading and writing disjoint
and shared keys; the final state must match the acknowledged history.

Each process logs every write with CLOCK_MONOTONIC (one clock for every
process on the machine) at invoke and at ack (writes acknowledged on return:
``sync=False``). A key's final value must come
from a write that no other write to that key strictly followed (invoked after
it was acknowledged); an absent key must come from such a delete.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

import lightning_db as ldb
from tests.waiting import wait_until

CHILD = r"""
import json, random, sys, time
import lightning_db as ldb
path, me, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(me)
log = []
with ldb.open(path) as db:
    for i in range(n):
        if rng.random() < 0.5:
            key = b"own-%d-%03d" % (me, rng.randrange(40))
        else:
            key = b"shared-%02d" % rng.randrange(16)
        value = None if rng.random() < 0.15 else b"p%d-%d" % (me, i)
        t0 = time.monotonic()
        # sync=False: acknowledged when the call returns (a pipelined put,
        # sync=None, is acknowledged only at the process's next barrier, so
        # its return is no ack for this history).
        if value is None:
            db.delete(key, sync=False)
        else:
            db.put(key, value, sync=False)
        log.append([key.decode(), None if value is None else value.decode(), t0, time.monotonic()])
        if key.startswith(b"own-"):
            got = db.get(key)                 # read-your-writes on a key only this process writes
            assert got == value, (key, got, value)
print(json.dumps(log))
"""


def node_gone(path: str) -> bool:
    return not any("lightning_db.shards.node" in " ".join(p.info["cmdline"] or []) and path in
                   " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def test_four_attached_processes_match_the_acknowledged_history(tmp_path):
    path = str(tmp_path / "db")
    ldb.open(path, shards=2).close()              # create it sharded; the children attach
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, path, str(i), "250"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    logs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            logs.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    writes: dict[str, list[tuple[str | None, float, float]]] = {}
    for log in logs:
        for key, value, t0, t1 in log:
            writes.setdefault(key, []).append((value, t0, t1))
    with ldb.open(path) as db:
        for key, ws in writes.items():
            # Writes that no other write to the key strictly followed.
            allowed = {v for v, _, ack in ws if not any(t0 > ack for _, t0, _ in ws)}
            got = db.get(key.encode())
            assert (None if got is None else got.decode()) in allowed, (key, got, allowed)
        present = {k.decode() for k, _ in db.scan()}
        assert present <= set(writes)              # nothing that was never written
    wait_until(lambda: node_gone(path), what="the node to exit after the last process")
