"""A caller for the bank test (test_bank.py): random transfers between the
accounts, in transactions, until a stop file appears or a deadline passes.

Run as ``python -m tests.shards.bank_child PATH STOP_FILE LOG_FILE SEED SECONDS``
from the repository root. Each committed transfer appends a line
``FROM TO AMOUNT`` to LOG_FILE (line-buffered: a SIGKILL may lose only the
last one); the last line, ``# done ...``, counts what the caller met. A
TransientError (a conflict that outlived its retries, a worker being
restarted, a commit whose outcome is unknown) or a RecoverableError (a
breaker open on a shard being restarted) is counted and the loop goes on;
anything else ends the process with a traceback (exit status 1).
"""

from __future__ import annotations

import os
import random
import sys
import time

import lightning_db as ldb
from lightning_db.errors import RecoverableError, TransientError

ACCOUNTS = [b"acct:%02d" % i for i in range(16)]
OPEN_DEADLINE_S = 120.0          # a worker may be down while we attach: generous


def open_db(path: str) -> ldb.Database:
    deadline = time.monotonic() + OPEN_DEADLINE_S
    while True:
        try:
            return ldb.open(path)
        except (TransientError, RecoverableError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> int:
    path, stop_file, log_file = sys.argv[1:4]
    rng = random.Random(int(sys.argv[4]))
    deadline = time.monotonic() + float(sys.argv[5])
    counts = {"committed": 0, "skipped": 0, "transient": 0, "recoverable": 0}
    db = open_db(path)
    with open(log_file, "a", buffering=1) as log:
        while not os.path.exists(stop_file) and time.monotonic() < deadline:
            src, dst = rng.sample(ACCOUNTS, 2)
            amount = rng.randint(1, 10)
            pair = rng.random() < 0.5            # read both at once, or one by one
            isolation = "serializable" if rng.random() < 0.25 else "snapshot"

            def transfer(tx) -> bool:
                a, b = tx.get_many([src, dst]) if pair else (tx.get(src), tx.get(dst))
                have = int(a)
                if have < amount:
                    return False                 # never below zero
                tx.put(src, b"%d" % (have - amount))
                tx.put(dst, b"%d" % (int(b) + amount))
                return True

            try:
                done = db.run_transaction(transfer, isolation=isolation)
            except TransientError:
                counts["transient"] += 1
                time.sleep(rng.uniform(0.005, 0.05))
                continue
            except RecoverableError:
                counts["recoverable"] += 1
                time.sleep(rng.uniform(0.02, 0.1))
                continue
            if done:
                counts["committed"] += 1
                log.write(f"{src.decode()} {dst.decode()} {amount}\n")
            else:
                counts["skipped"] += 1
        db.close()
        log.write("# done " + " ".join(f"{k}={v}" for k, v in counts.items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
