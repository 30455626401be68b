"""The deterministic workload of test_powerloss and its write history.

``run_workload`` runs ``Workload.main`` in a thread: it drives the public API
over a ``FaultInjectingFileSystem`` and records every write: invoked, acknowledged, with or without sync. After
each step that may start background work it waits until the engine is idle
(no immutable memtable, no compaction due, no obsolete file left on disk),
so the filesystem operations are the same on every run and ``crash_at=i``
stops the same operation. The one exception is the write that rotates the
memtable: its WAL append (and sync) races the start of the background flush,
so around those indexes the crash may land on either thread's operation.
"""

from __future__ import annotations

import random
import threading
from contextlib import suppress
from dataclasses import dataclass, field

from lightning_db.config import Config
from lightning_db.db import Database
from lightning_db.storage.engine import Engine
from lightning_db.storage.faultfs import FaultInjectingFileSystem
from tests.crash.util import engine_idle, quiesce, wait_until

NKEYS = 48
KEYS = [b"pk%03d" % i for i in range(NKEYS)]
CONFIG = Config(sync="never", memtable_size=64 * 1024, l0_compaction_trigger=2, block_size=8 * 1024,
                target_file_size=48 * 1024, max_bytes_for_level_base=96 * 1024,
                max_manifest_size=250, write_stall_timeout_s=30.0)


def value_for(wid: int, key: bytes) -> bytes:
    return b"w%d|%s|" % (wid, key) + bytes([65 + wid % 26]) * (900 + (wid * 37) % 700)


@dataclass
class Write:
    index: int
    effects: dict[bytes, bytes | None]     # key -> value, None = deleted (last op per key wins)
    sync: bool
    acked: bool = False


@dataclass
class History:
    writes: list[Write] = field(default_factory=list)
    durable_upto: int = 0       # writes[:durable_upto] returned before a flush/close returned
    steps: list[str] = field(default_factory=list)


class Workload:
    """One run of the workload on *path* over *fs*; ``db`` is the open handle."""

    def __init__(self, path: str, fs: FaultInjectingFileSystem, seed: int = 7) -> None:
        self.path = path
        self.fs = fs
        self.rng = random.Random(seed)
        self.h = History()
        self.db: Database | None = None
        self.error: BaseException | None = None
        self.done = False
        self.thread: threading.Thread | None = None
        self.manifests: set[int] = set()      # manifest numbers seen live (coverage check)
        self.counters = {"flushes": 0, "compactions": 0}
        self.error_before_crash = False

    # --- recorded writes ---
    def _write(self, effects: dict[bytes, bytes | None], sync: bool, call) -> None:
        w = Write(len(self.h.writes), effects, sync)
        self.h.writes.append(w)
        call()
        w.acked = True

    def put(self, k: bytes, sync: bool) -> None:
        v = value_for(len(self.h.writes), k)
        self._write({k: v}, sync, lambda: self.db.put(k, v, sync=sync))

    def delete(self, k: bytes, sync: bool) -> None:
        self._write({k: None}, sync, lambda: self.db.delete(k, sync=sync))

    def put_many(self, ks: list[bytes], sync: bool) -> None:
        wid = len(self.h.writes)
        items = {k: value_for(wid, k) for k in ks}
        self._write(dict(items), sync, lambda: self.db.put_many(items, sync=sync))

    def batch(self, ops: list[tuple[str, bytes]], sync: bool) -> None:
        wid = len(self.h.writes)
        eff: dict[bytes, bytes | None] = {}
        for kind, k in ops:
            eff[k] = value_for(wid, k) if kind == "p" else None

        def go() -> None:
            with self.db.batch(sync=sync) as b:
                for kind, k in ops:
                    if kind == "p":
                        b.put(k, value_for(wid, k))
                    else:
                        b.delete(k)
        self._write(eff, sync, go)

    # --- steps ---
    def _open(self) -> None:
        self.db = Database(Engine(self.path, CONFIG, fs=self.fs))
        self._quiesce()

    def _quiesce(self) -> None:
        quiesce(self.db._engine)
        self.manifests.add(self.db._engine.versions.manifest_number)

    def _count(self) -> None:
        st = self.db.stats()
        for k in self.counters:
            self.counters[k] += st[k]

    def _after_write(self) -> None:
        # Cheap when idle; after a memtable rotation it waits for the flush
        # and for the compaction that the flush may have made due.
        if not engine_idle(self.db._engine):
            self._quiesce()

    def _mixed(self, n: int, p_sync: float) -> None:
        rng = self.rng
        for _ in range(n):
            r = rng.random()
            sync = rng.random() < p_sync
            if r < 0.6:
                self.put(rng.choice(KEYS), sync)
            elif r < 0.8:
                self.delete(rng.choice(KEYS), sync)
            elif r < 0.9:
                self.put_many(rng.sample(KEYS, rng.randint(2, 4)), sync)
            else:
                self.batch([(rng.choice("pd"), rng.choice(KEYS)) for _ in range(rng.randint(2, 4))], sync)
            self._after_write()

    def _step(self, name: str) -> None:
        self.h.steps.append(name)

    def main(self) -> None:
        try:
            self._step("open")
            self._open()
            self._step("sync puts")
            for k in KEYS[:10]:
                self.put(k, True)
            self._step("mixed 1")
            self._mixed(14, 0.3)
            self._step("flush 1")
            n = len(self.h.writes)
            self.db.flush()
            self._quiesce()
            self.h.durable_upto = n
            self._step("fill memtable")       # the memtable rotates; L0 reaches 2: compaction
            self._mixed(60, 0.15)
            self._step("close")
            n = len(self.h.writes)
            self._count()
            self.db.close()
            self.h.durable_upto = n
            self._step("reopen")
            self._open()
            self._step("mixed 2")
            self._mixed(24, 0.4)
            self._step("flush 2")
            n = len(self.h.writes)
            self.db.flush()
            self._quiesce()
            self.h.durable_upto = n
            self._step("mixed 3")
            self._mixed(12, 0.3)
            self._count()
            self._step("end")
            self.done = True
        except BaseException as exc:  # noqa: BLE001 - SimulatedCrash, or a real failure
            self.error = exc
            self.error_before_crash = not self.crashed()

    def crashed(self) -> bool:
        fs = self.fs
        return fs.crash_at is not None and fs.ops >= fs.crash_at


def run_workload(path: str, fs: FaultInjectingFileSystem, seed: int = 7, timeout: float = 120.0) -> Workload:
    """Run the workload in a thread until it ends or the filesystem crashes.
    On a crash the engine is abandoned (closed best-effort so that its
    threads end; power_loss must already have happened or happen next)."""
    wl = Workload(path, fs, seed)
    wl.thread = threading.Thread(target=wl.main, name="powerloss-workload", daemon=True)
    wl.thread.start()
    wait_until(lambda: not wl.thread.is_alive() or wl.crashed(), timeout, "the workload to end or crash")
    if wl.error_before_crash:
        raise AssertionError(f"the workload failed before any crash: {wl.error!r}") from wl.error
    return wl


def abandon(wl: Workload) -> None:
    """After a crash: stop the engine's threads and the workload thread."""
    if wl.db is not None:
        with suppress(BaseException):    # SimulatedCrash from the WAL sync in close()
            wl.db._engine.close()
    wl.thread.join(60)
    assert not wl.thread.is_alive(), "the workload thread did not end after the crash"
    if wl.error_before_crash:
        raise AssertionError(f"the workload failed before the crash: {wl.error!r}") from wl.error
