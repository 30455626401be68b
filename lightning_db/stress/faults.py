"""The fault injector: one thread in the harness process.

Between faults it waits a random interval within ``--fault-interval``
(before a kill-server or disk-full, also until the clients completed an
operation since the previous fault: a server is not killed again before it
served anyone). Then it takes the next fault of a shuffled round of the
enabled ones (so every type comes once per round), injects it, waits
for it to heal, and logs ``{time, fault, target, detail, healed, heal_s}``
(``time`` and ``healed`` on the clients' monotonic clock). A "cycle" is
one fault injected and healed. Worker faults on different shards may
overlap (each runs on a thread of its own, at most one per shard);
kill-server and disk-full wait until nothing else is in progress.

- kill-worker: SIGKILL a running shard worker (pid from the node's stats);
  healed when the node runs a new worker for that shard.
- pause: SIGSTOP a worker for ``pause`` seconds (0.2-1.5 s), then SIGCONT,
  always (``finally``): shorter than the node's hang detection (heartbeat
  interval x misses, 5 s by default), so the worker is resumed, not replaced.
- kill-server: the target's (target.py): SIGKILL the node (embedded; the
  clients' next open starts a new one) or the serve process tree, which is
  started again; healed when a new node runs every worker.
- corrupt: invert a few bytes of a table file (``*.ldb``, never a WAL) of a
  random shard, one of its three newest that has not changed for a second
  (a table at rest, not one a flush is writing); the shard finds the damage when it
  reads the file, quarantines it and restores itself (shards/actor.py).
  Healed when the file has left its place (quarantined, or deleted by a
  compaction); a table nobody reads within 30 s counts as not healed, one
  still unread when the run ends as cut short.
- disk-full: fill the file system the harness mounted for the target with
  a ballast file for ``pause`` seconds, then delete it (``finally``);
  healed when the node runs every worker again.
- drop-connection: SIGUSR1 to some client processes, which cut their
  connection to the server under the request in flight (client.py).

Processes signalled are only the target's node, workers and serve tree
(whose pids the node or serve report) and the harness's own clients.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from .target import Target, _NotNow

__all__ = ["FaultRecord", "Injector", "flip_bytes", "flip_offsets"]

HEAL_TIMEOUT_S = 120.0
PROGRESS_TIMEOUT_S = 30.0      # inject anyway after this long without a completed operation
BALLAST = ".stress-ballast"
TABLE_REST_S = 1.0
RECENT_TABLES = 3
CORRUPT_HEAL_S = 30.0          # a damaged table not read within this long counts as not healed


@dataclass
class FaultRecord:
    time: float
    fault: str
    target: str
    detail: str
    healed: float | None = None
    heal_s: float | None = None
    cut_short: bool = False            # the run ended before it could heal (a damaged table nobody read since)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flip_offsets(path: str, rng: random.Random, count: int = 8) -> list[int]:
    """*count* random offsets within the file, sorted (fewer if it is tiny)."""
    size = os.path.getsize(path)
    return sorted({rng.randrange(size) for _ in range(count)}) if size else []


def flip_bytes(path: str, offsets: list[int]) -> None:
    """Invert the bytes at *offsets* of the file, in place (a running worker
    may map it)."""
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            b = f.read(1)
            if not b:
                continue
            f.seek(off)
            f.write(bytes([b[0] ^ 0xFF]))
        f.flush()


class Injector(threading.Thread):
    """Injects faults until ``stop()``; ``records`` is the log.

    Shard faults (kill-worker, pause, corrupt) run as cycles of their own,
    one thread each, so a fault on one shard may overlap one on another
    (never two kills or pauses on the same shard, nor two corrupts; a
    damaged shard may still be killed or paused); kill-server and disk-full wait until no other
    fault is in progress and hold the injector until they healed."""

    def __init__(self, target: Target, faults: list[str], interval: tuple[float, float], rng: random.Random, *,
                 progress: Callable[[], int], clients: Callable[[], list[int]],
                 pause: tuple[float, float] = (0.2, 1.5), log_path: str | None = None) -> None:
        super().__init__(name="stress-faults", daemon=True)
        self.target, self.faults, self.interval, self.rng = target, list(faults), interval, rng
        self.progress, self.clients, self.pause = progress, clients, pause
        self.records: list[FaultRecord] = []
        self.skipped = 0
        self.failure: BaseException | None = None
        self._halt = threading.Event()
        self._log = open(log_path, "w", encoding="utf-8", buffering=1) if log_path else None
        self._lock = threading.Lock()
        self._busy: set[str] = set()                 # shards with a kill-worker or pause in progress
        self._damaged: set[str] = set()              # shards with a corrupt in progress
        self._cycles: list[threading.Thread] = []

    # -- control --

    def stop(self, timeout: float = HEAL_TIMEOUT_S + 60.0) -> None:
        """Stop after the faults in progress have healed."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout)
        for t in list(self._cycles):
            t.join(timeout)
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def busy(self) -> bool:
        """Whether a fault is still in progress (or the injector still runs)."""
        return self.is_alive() or any(t.is_alive() for t in self._cycles)

    def counts(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for r in self.records:
                out[r.fault] = out.get(r.fault, 0) + 1
            return out

    def healed(self) -> int:
        with self._lock:
            return sum(1 for r in self.records if r.healed is not None)

    def _wait(self, seconds: float) -> bool:
        """Sleep; True when told to stop meanwhile."""
        return self._halt.wait(seconds)

    def _add(self, record: FaultRecord) -> None:
        with self._lock:
            self.records.append(record)
            if self._log is not None:
                self._log.write(json.dumps(record.to_dict()) + "\n")

    # -- the loop --

    def run(self) -> None:
        deck: list[str] = []                         # every fault type once per round, in random order
        try:
            mark = self.progress()
            while not self._wait(self.rng.uniform(*self.interval)):
                if self.failure is not None:
                    return
                if not deck:
                    deck = self.rng.sample(self.faults, len(self.faults))
                fault = deck.pop()
                if fault in ("kill-server", "disk-full"):
                    # the whole database: only once it serves again since the last one
                    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
                    while self.progress() <= mark and time.monotonic() < deadline:
                        if self._wait(0.02):
                            return
                # A fault with nothing to act on yet (every worker down or
                # faulted) is tried again shortly for a while, then skipped.
                deadline = time.monotonic() + max(1.0, self.interval[1])
                while not self._inject(fault):
                    if time.monotonic() > deadline or self._wait(0.02):
                        break
                mark = self.progress()
        except BaseException as exc:  # noqa: BLE001 - reported by the harness
            self.failure = exc

    def _inject(self, fault: str) -> bool:
        """Inject *fault*; False when it had nothing to act on."""
        try:
            if fault in ("kill-worker", "pause", "corrupt"):
                self._start_cycle(fault)
            else:
                if fault in ("kill-server", "disk-full"):
                    self._quiesce()
                    if self._halt.is_set():
                        return True            # stopping: no new fault
                self._add(getattr(self, "_" + fault.replace("-", "_"))())
            return True
        except _NotNow:
            self.skipped += 1
            return False

    def _quiesce(self) -> None:
        """Wait until no kill-worker or pause is in progress (a damaged
        table waiting to be read may stay)."""
        for t in list(self._cycles):
            if not t.name.startswith("stress-corrupt"):
                t.join()
        self._cycles = [t for t in self._cycles if t.is_alive()]

    def _start_cycle(self, fault: str) -> None:
        """Pick the shard and what to do to it here (one thread draws from
        rng), then run the fault and wait for its heal on a thread of its own."""
        if fault == "corrupt":
            shard, victim = self._table_at_rest()
            args: tuple[Any, ...] = (victim, flip_offsets(victim, self.rng))
        else:
            w, proc = self._running_worker()
            shard, args = w["id"], (w, proc) if fault == "kill-worker" else (w, proc, self.rng.uniform(*self.pause))
        with self._lock:
            (self._damaged if fault == "corrupt" else self._busy).add(shard)
        t = threading.Thread(target=self._cycle, args=(fault, shard, args), name=f"stress-{fault}-{shard}",
                             daemon=True)
        self._cycles = [c for c in self._cycles if c.is_alive()] + [t]
        t.start()

    def _cycle(self, fault: str, shard: str, args: tuple[Any, ...]) -> None:
        try:
            record = getattr(self, "_" + fault.replace("-", "_"))(*args)
            if record is not None:
                self._add(record)
        except BaseException as exc:  # noqa: BLE001 - reported by the harness
            self.failure = exc
        finally:
            with self._lock:
                (self._damaged if fault == "corrupt" else self._busy).discard(shard)

    def _record(self, t0: float, fault: str, target: str, detail: str, healed: bool) -> FaultRecord:
        t1 = time.monotonic()
        return FaultRecord(t0, fault, target, detail, t1 if healed else None, round(t1 - t0, 4) if healed else None)

    # -- the faults --

    def _running_worker(self) -> tuple[dict[str, Any], psutil.Process]:
        with self._lock:
            busy = set(self._busy)
        workers = [w for w in (self.target.workers() or [])
                   if w.get("state") == "running" and w.get("pid") and w.get("id") not in busy]
        if not workers:
            raise _NotNow("no running worker without a fault in progress")
        w = self.rng.choice(workers)
        try:
            return w, psutil.Process(w["pid"])
        except psutil.NoSuchProcess:
            raise _NotNow("the worker exited meanwhile") from None

    def _kill_worker(self, w: dict[str, Any], proc: psutil.Process) -> FaultRecord | None:
        t0 = time.monotonic()
        try:
            proc.kill()                        # psutil checks the pid was not reused
        except psutil.NoSuchProcess:
            return None
        deadline = t0 + HEAL_TIMEOUT_S
        healed = False
        while time.monotonic() < deadline:
            now = {x.get("id"): x for x in (self.target.workers() or [])}.get(w["id"])
            if now is not None and now.get("pid") not in (None, w["pid"]) and now.get("state") == "running":
                healed = True
                break
            time.sleep(0.02)
        return self._record(t0, "kill-worker", w["id"], f"SIGKILL pid {w['pid']}", healed)

    def _pause(self, w: dict[str, Any], proc: psutil.Process, seconds: float) -> FaultRecord | None:
        t0 = time.monotonic()
        try:
            proc.suspend()
        except psutil.NoSuchProcess:
            return None
        try:
            time.sleep(seconds)                # not cut short by stop(): SIGCONT comes on time
        finally:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()
        return self._record(t0, "pause", w["id"], f"SIGSTOP pid {w['pid']} for {seconds:.2f}s, then SIGCONT",
                            True)

    def _kill_server(self) -> FaultRecord:
        t0 = time.monotonic()
        detail, token = self.target.kill_server()
        healed = self.target.await_server(token, HEAL_TIMEOUT_S)
        return self._record(t0, "kill-server", self.target.kind, detail, healed)

    def _table_at_rest(self) -> tuple[str, str]:
        """(shard id, path) of one of the RECENT_TABLES newest tables that
        have not changed for TABLE_REST_S, of a random shard without a
        corrupt in progress. Recent tables hold the keys in use (keys
        rotate), so the damage is met soon; an old one may wait for a
        compaction."""
        path = self.target.path
        assert path is not None
        with self._lock:
            busy = set(self._damaged)
        now = time.time()
        by_shard: dict[str, list[tuple[float, str]]] = {}
        for t in glob.glob(os.path.join(path, "shard-*", "*.ldb")):
            shard = os.path.basename(os.path.dirname(t))
            try:
                mtime = os.stat(t).st_mtime
            except FileNotFoundError:
                continue
            if shard not in busy and now - mtime >= TABLE_REST_S:
                by_shard.setdefault(shard, []).append((mtime, t))
        if not by_shard:
            raise _NotNow("no table at rest")
        shard = self.rng.choice(sorted(by_shard))
        recent = [t for _, t in sorted(by_shard[shard], reverse=True)[:RECENT_TABLES]]
        return shard, self.rng.choice(recent)

    def _corrupt(self, victim: str, offsets: list[int]) -> FaultRecord | None:
        """Damage the table, then wait until the shard moved it away (into
        quarantine/, or a compaction deleted it): that is the heal."""
        path = self.target.path
        assert path is not None
        rel = os.path.relpath(victim, path)
        t0 = time.monotonic()
        try:
            flip_bytes(victim, offsets)
        except FileNotFoundError:
            return None
        deadline = t0 + CORRUPT_HEAL_S
        while os.path.exists(victim) and time.monotonic() < deadline and not self._halt.is_set():
            time.sleep(0.05)
        gone = not os.path.exists(victim)
        moved = gone and any(os.path.basename(q).endswith(os.path.basename(victim))
                             for q in glob.glob(os.path.join(path, "quarantine", "*" + os.path.basename(victim))))
        cut_short = not gone and self._halt.is_set()
        fate = (("quarantined" if moved else "compacted away") if gone else "the run ended first" if cut_short
                else f"still in place after {CORRUPT_HEAL_S:g}s")
        record = self._record(t0, "corrupt", rel.split(os.sep)[0], f"inverted {len(offsets)} bytes of {rel} at "
                              f"{offsets}: {fate}", gone)
        record.cut_short = cut_short
        return record

    def _disk_full(self) -> FaultRecord:
        """Fill the target's own file system (fallocate, then small writes
        until ENOSPC), hold, delete the ballast (``finally``)."""
        path = self.target.path
        assert path is not None
        seconds = self.rng.uniform(*self.pause)
        ballast = os.path.join(path, BALLAST)
        t0 = time.monotonic()
        filled = 0
        try:
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                st = os.statvfs(path)
                want = st.f_bavail * st.f_frsize
                while want >= 1 << 20:
                    try:
                        os.posix_fallocate(fd, filled, want)
                        filled += want
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        want //= 2
                os.lseek(fd, filled, os.SEEK_SET)
                chunk = b"\0" * 65536
                while len(chunk) >= 512:
                    try:
                        filled += os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        chunk = chunk[:len(chunk) // 2]
            finally:
                os.close(fd)
            time.sleep(seconds)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ballast)
        healed = self.target.await_whole(HEAL_TIMEOUT_S)      # workers a full disk brought down are back
        return self._record(t0, "disk-full", "data file system", f"ballast of {filled >> 20} MiB filled it for "
                            f"{seconds:.2f}s", healed)

    def _drop_connection(self) -> FaultRecord:
        pids = self.clients()
        if not pids:
            raise _NotNow("no client running")
        chosen = self.rng.sample(pids, self.rng.randint(1, len(pids)))
        t0 = time.monotonic()
        for pid in chosen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        return self._record(t0, "drop-connection", "clients", f"cut the connections of client pids {chosen}", True)
