"""Issue 3: kill -9 the coordinator of a cross-shard batch before each step
of its two-phase commit; the node notices the dead caller and settles what
it left in doubt, so a handle that stays open reads the batch all or
nothing, and so does the next open."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lightning_db as ldb
from tests.waiting import wait_until

# The coordinator (a separate process) counts the two-phase-commit messages
# it sends and SIGKILLs itself just before the N-th one.
CHILD = r"""
import os, signal, sys
import lightning_db as ldb
from tests.waiting import wait_until
import lightning_db.shards.router as router
import lightning_db.shards.coordinator as coordinator

path, step, tag, n = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4])
sent = 0

def before(op):
    global sent
    if op in ("prepare", "decide", "commit", "abort", "forget"):
        sent += 1
        if sent == step:
            print("killing before", op, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

plain_send, plain_here, plain_ask = coordinator._send, coordinator._send_here, router.ShardRouter._ask
coordinator._send = lambda ref, op, payload, timeout: (before(op), plain_send(ref, op, payload, timeout))[1]
coordinator._send_here = lambda ref, op, payload, timeout: (before(op), plain_here(ref, op, payload, timeout))[1]
router.ShardRouter._ask = lambda self, shard, op, payload=None: (before(op), plain_ask(self, shard, op, payload))[1]

db = ldb.open(path)
keys = [b"batch-%03d" % i for i in range(n)]           # spread over both shards
with db.batch() as b:
    for k in keys:
        b.put(k, tag)
print("committed", flush=True)
db.close()
"""

# Keys in the batch -> its steps. Small: prepare on the other shard, the
# primary's part with its decision, commit x2 (the primary's first), forget;
# large (more than MERGE_OPS keys on the primary): prepare x2, the primary's
# decision, commit x2, forget. The last step: no kill.
SIZES = {40: 6, 200: 7}


@pytest.mark.crash
@pytest.mark.parametrize("n", sorted(SIZES))
def test_coordinator_killed_before_every_step_leaves_all_or_nothing(tmp_path, n):
    path = str(tmp_path / "db")
    with ldb.open(path, shards=2) as db:                # keeps the node up across the children
        keys = [b"batch-%03d" % i for i in range(n)]
        assert len({db.ring.shard_of(k) for k in keys}) == 2
        outcomes, kills = [], []
        for step in range(1, SIZES[n] + 1):
            tag = b"t%d" % step
            child = subprocess.run([sys.executable, "-c", CHILD, path, str(step), tag.decode(), str(n)],
                                   capture_output=True, text=True, timeout=120)
            killed = child.returncode == -9
            assert killed or (child.returncode == 0 and "committed" in child.stdout), child.stderr[-2000:]
            # The node notices the dead caller and settles its batch by itself:
            # the long-lived handle reads all or nothing without a new open.
            wait_until(lambda: [r.ask("in_doubt", None, 30).result(30) for r in db.refs] == [[], []],
                       timeout=60, what=f"step {step}: the node to settle the dead caller's batch")
            # ... and to forget the decision it left kept (killed after the primary's commit).
            wait_until(lambda: [r.ask("decisions", None, 30).result(30) for r in db.refs] == [[], []],
                       timeout=60, what=f"step {step}: the node to forget the dead caller's decision")
            seen = db.get_many(keys)
            assert len(set(seen)) == 1, (step, set(seen))
            with ldb.open(path) as again:
                got = again.get_many(keys)
                in_doubt = [ref.ask("in_doubt", None, 30).result(30) for ref in again.refs]
            assert in_doubt == [[], []], (step, in_doubt)
            assert got == seen and got in ([tag] * n, [db.get(keys[0])] * n), (step, set(got))
            outcomes.append("applied" if got == [tag] * n else "absent")
            kills.append(killed)
            if not killed:
                assert outcomes[-1] == "applied"
        print("outcomes by step:", outcomes)
        assert kills == [True] * (SIZES[n] - 1) + [False], kills     # the path meant: its number of steps
        # Killed before any prepare finished: absent; after the primary commit: applied.
        assert outcomes[0] == "absent" and outcomes[-1] == "applied"
        assert "applied" in outcomes[:-1], outcomes        # some kill came after the decision
