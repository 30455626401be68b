"""Helpers of the node tests (importable by the node's workers, so not a test
module).

Worker processes run ``EchoShard`` (a stand-in for ShardActor: same
constructor, records opens and stops in its shard directory). Caller
processes run ``python -m tests.shards.node_helpers DIR SHARDS CONFIG``: attach,
print one JSON line (session, node pid, shard pids), then on each stdin line
``detach`` detach and print ``detached``; exit on EOF.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from lightning_db.actors import Actor

ACTOR = "tests.shards.node_helpers:EchoShard"


class EchoShard(Actor):
    def __init__(self, shard_dir: str, config: dict[str, Any], shard_id: int) -> None:
        self.shard_dir, self.config, self.shard_id = shard_dir, config, shard_id

    def on_start(self) -> None:
        os.makedirs(self.shard_dir, exist_ok=True)
        with open(os.path.join(self.shard_dir, "opens"), "a") as f:
            f.write(f"{os.getpid()}\n")

    def on_receive(self, op: str, payload: Any) -> Any:
        if op == "whoami":
            return {"shard_id": self.shard_id, "pid": os.getpid(), "shard_dir": self.shard_dir,
                    "config": self.config}
        if op == "echo":
            return payload
        return super().on_receive(op, payload)

    def on_stop(self) -> None:
        with open(os.path.join(os.path.dirname(self.shard_dir), "stops"), "a") as f:
            f.write(f"{self.shard_id}\n")


def _main() -> None:
    from lightning_db.shards.attach import attach

    data, shards, config = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    session = attach(data, shards, config, timeout=120, actor=ACTOR)
    stats = session.request("stats")
    print(json.dumps({"session": session.session, "node_pid": session.node_pid,
                      "shard_pids": [s["pid"] for s in stats["shards"]]}), flush=True)
    for line in sys.stdin:
        if line.strip() == "detach":
            session.detach()
            print("detached", flush=True)


if __name__ == "__main__":
    _main()
