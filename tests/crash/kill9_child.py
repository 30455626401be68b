"""The writer process of test_kill9: run as a script, never imported by pytest
as a test. It opens the database in-process (``shards=0``) and writes forever
(until killed), reporting every operation on stdout, one line per report:

    S                      about to open the database
    O                      opened
    I <id> <sync> <ops>    about to start write <id>; ops like ``p12,d40,p7``
                           (p = put, d = delete, of key index n)
    A <id>                 write <id> returned (acknowledged)

Each line goes out in one ``write`` call on an unbuffered pipe before the next
step starts, so a SIGKILL never loses a report of something that happened.
Values are derived from (write id, key index) by ``value_for`` so the parent
can recompute them.

Usage: kill9_child.py PATH SEED FIRST_ID SYNC MAX_OPS
"""

from __future__ import annotations

import os
import random
import sys

NKEYS = 500
CONFIG = {"memtable_size": 64 * 1024, "l0_compaction_trigger": 2, "target_file_size": 16 * 1024,
          "block_size": 2048, "max_bytes_for_level_base": 64 * 1024, "max_manifest_size": 4096}


def key_for(ki: int) -> bytes:
    return b"key-%04d" % ki


def value_for(wid: int, ki: int) -> bytes:
    pad = (wid * 7919 + ki * 104729) % 600
    return b"v%d.%d:" % (wid, ki) + bytes([97 + wid % 26]) * pad


def effects(ops: list[tuple[str, int]], wid: int) -> dict[int, bytes | None]:
    """Key index -> state (value, or None when deleted) after applying *ops* in order."""
    out: dict[int, bytes | None] = {}
    for kind, ki in ops:
        out[ki] = value_for(wid, ki) if kind == "p" else None
    return out


def encode_ops(ops: list[tuple[str, int]]) -> str:
    return ",".join(f"{k}{ki}" for k, ki in ops)


def decode_ops(text: str) -> list[tuple[str, int]]:
    return [(t[0], int(t[1:])) for t in text.split(",")]


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main(argv: list[str]) -> int:
    path, seed, first_id, sync, max_ops = argv[0], int(argv[1]), int(argv[2]), argv[3], int(argv[4])
    import lightning_db as ldb

    rng = random.Random(seed)
    _say("S")
    db = ldb.open(path, shards=0, sync=sync, **CONFIG)
    _say("O")
    wid = first_id
    for _ in range(max_ops):
        r = rng.random()
        explicit_sync = rng.random() < 0.05
        if r < 0.55:
            ops = [("p", rng.randrange(NKEYS))]
        elif r < 0.75:
            ops = [("d", rng.randrange(NKEYS))]
        elif r < 0.9:
            ops = [("p", ki) for ki in sorted({rng.randrange(NKEYS) for _ in range(rng.randint(2, 8))})]
        else:   # a batch of puts and deletes; a key may appear twice (the last op wins)
            ops = [(rng.choice("pd"), rng.randrange(NKEYS)) for _ in range(rng.randint(2, 6))]
        _say(f"I {wid} {int(explicit_sync)} {encode_ops(ops)}")
        s = True if explicit_sync else None
        if r < 0.55:
            db.put(key_for(ops[0][1]), value_for(wid, ops[0][1]), sync=s)
        elif r < 0.75:
            db.delete(key_for(ops[0][1]), sync=s)
        elif r < 0.9:
            db.put_many({key_for(ki): value_for(wid, ki) for _, ki in ops}, sync=s)
        else:
            with db.batch(sync=s) as b:
                for kind, ki in ops:
                    if kind == "p":
                        b.put(key_for(ki), value_for(wid, ki))
                    else:
                        b.delete(key_for(ki))
        _say(f"A {wid}")
        wid += 1
    db.close()
    _say("D")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
