"""``lightning-db stress``: load and faults against a database, then the checkers.

Which process runs what: the harness (this module, main thread) starts the
target (target.py), the client processes (client.py: ``python -m
lightning_db.stress.client``, each in a session of its own so that a Ctrl-C
reaches only the harness), the fault injector thread (faults.py) and, on a
terminal or with ``--live``, the live view thread (live.py). A run:

1. start the target; start the clients and wait until each has opened it;
2. for ``duration`` seconds: load, and faults every ``fault_interval``;
3. stop the injector (the fault in progress heals first: no worker is left
   stopped), then the clients (a stop file; a client still running after a
   generous deadline is killed by pid, its last operation stays "info");
4. wait until the database is whole and read every key through a fresh
   handle; stop the target (nothing the harness started outlives the run);
5. one pass over the merged histories: the checkers (checkers.py, a
   generation of keys at a time, so memory stays bounded however long the
   run), the numbers of the report and, with ``out``, the files (report.py).

Exit status of ``main``: 0 every checker passed (a verdict may be unknown
when a search hit its time limit: it is printed, not failed), 1 a checker
failed (the smallest failing sub-history is printed) or the run itself broke
(a client crashed), 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument, LightningError
from .checkers import StreamChecker, Verdict
from .faults import Injector
from .history import Stats, read_events, stream, write_jsonl
from .live import LiveView, Tailer
from .options import join_dashed_values, parse_duration, parse_faults, parse_interval
from .report import format_event, write_html, write_summary
from .target import FAULTS, Target, disk_problem, make_target, node_stats
from .workload import DISTRIBUTIONS, default_distribution, versioned_key, workload_mix

__all__ = ["StressConfig", "StressResult", "add_arguments", "main", "parse_duration", "parse_interval",
           "run_args", "run_stress"]

READY_TIMEOUT_S = 120.0        # every client open, on a loaded 2-core machine
STOP_TIMEOUT_S = 120.0         # clients finish their operation and close after the stop file


@dataclass(frozen=True)
class StressConfig:
    """Every option of a run, with its default. Strings are accepted where
    the command line gives them (durations, intervals, the fault list)."""

    target: str | None = None            # PATH, serve:[PATH], redis://HOST:PORT; None: a fresh temporary directory
    duration: float | str = 60.0
    clients: int = 4
    workload: str = "ycsb-a"             # ycsb-a..f, txn, or a mix like read=50,write=45,delete=5
    keys: int = 200
    distribution: str | None = None      # uniform | zipfian | latest; None: the workload's own (zipfian; latest for ycsb-d)
    faults: tuple[str, ...] | str = ()
    fault_interval: tuple[float, float] | str = "0.2s..3s"
    seed: int | None = None              # None: a random one (reported)
    out: str | None = None
    live: bool | None = None             # None: when stdout is a terminal
    shards: int = 2                      # for a new data directory
    # Operations per second per client (0: as fast as it goes). Bounded by
    # default: the checkers take a few hundred thousand operations a minute,
    # and a client reading from shared memory makes 50,000 a second.
    rate: float = 1000.0
    pause: tuple[float, float] | str = "0.2s..1.5s"     # SIGSTOP (and disk-full) length
    max_ops: int = 4                     # operations per list-append transaction
    rotate: float | str = "5s"           # clients move to fresh keys this often (0: never); see client.py
    check_time_limit: float = 60.0       # seconds of linearizability search per key

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("duration", parse_duration(self.duration))
        if not self.duration > 0:                   # type: ignore[operator]
            raise InvalidArgument(f"duration must be above 0 s (a run with no load checks nothing), "
                                  f"got {self.duration!r}")
        put("rotate", parse_duration(self.rotate))
        put("fault_interval", parse_interval(self.fault_interval))
        put("pause", parse_interval(self.pause))
        put("faults", parse_faults(self.faults))
        for name, minimum in (("clients", 1), ("keys", 1), ("shards", 1), ("max_ops", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                raise InvalidArgument(f"{name} must be an integer >= {minimum}, got {v!r}")
        try:
            workload_mix(self.workload)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if self.distribution is not None and self.distribution not in DISTRIBUTIONS:
            raise InvalidArgument(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}")
        if not isinstance(self.rate, (int, float)) or isinstance(self.rate, bool) or not self.rate >= 0:
            raise InvalidArgument(f"rate must be >= 0 operations per second (0: unlimited), got {self.rate!r}")
        if self.faults and self.fault_interval[1] <= 0:
            raise InvalidArgument("fault interval must allow a wait above 0 s")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise InvalidArgument(f"seed must be an integer, got {self.seed!r}")

    @property
    def transactional(self) -> bool:
        return workload_mix(self.workload) is None

    @property
    def key_distribution(self) -> str:
        return self.distribution or default_distribution(self.workload)


@dataclass
class StressResult:
    """What a run found. ``valid``: no checker failed and the run did not
    break; ``exit_status`` (0 or 1) follows from it."""

    config: StressConfig
    seed: int
    verdicts: list[Verdict]
    faults: list[dict[str, Any]]
    summary: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    out: str | None = None

    @property
    def valid(self) -> bool:
        return not self.problems and all(v.valid is not False for v in self.verdicts)

    @property
    def exit_status(self) -> int:
        return 0 if self.valid else 1

    @property
    def fault_cycles(self) -> int:
        """Faults injected and healed."""
        return sum(1 for f in self.faults if f.get("healed") is not None)

    @property
    def lost_writes(self) -> int:
        """Acknowledged writes (or committed appends) missing at the end."""
        n = 0
        for v in self.verdicts:
            n += int(v.details.get("acknowledged_lost", 0)) + int(v.details.get("lost_appends", 0))
        return n

    def verdict(self, name: str) -> Verdict:
        return next(v for v in self.verdicts if v.name == name)

    def text(self) -> str:
        """The verdicts, and for each failed checker its smallest failing sub-history."""
        s = self.summary
        lines = [f"stress: {s.get('target')}, workload {self.config.workload}, {self.config.clients} clients, "
                 f"seed {self.seed}: {s.get('elapsed_s', 0):.1f}s of load, {s.get('operations', 0):,} operations "
                 f"({s.get('throughput_ops_s', 0):,.0f}/s), latency ms {s.get('latency_ms')}",
                 f"faults: {self.fault_cycles} cycles ({s.get('faults') or 'none'}), "
                 f"restarts {s.get('restarts')}, client reopens {s.get('client_reopens', 0)}"]
        if s.get("phases_s"):
            lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in s["phases_s"].items()))
        for p in self.problems:
            lines.append(f"PROBLEM: {p}")
        for v in self.verdicts:
            tag = {True: "valid", False: "INVALID", None: "UNKNOWN"}[v.valid]
            lines.append(f"{v.name}: {tag}")
            if v.valid is not True:
                lines += ["  " + line for line in v.summary.splitlines()]
            if v.valid is False and v.failing:
                lines.append(f"  smallest failing sub-history ({len(v.failing)} events):")
                lines += ["    " + format_event(ev) for ev in v.failing]
        lines.append("PASSED" if self.valid else "FAILED")
        if self.out:
            lines.append(f"report: {os.path.join(self.out, 'report.html')}")
        return "\n".join(lines)


class _Phases:
    """Seconds spent in each phase of a run (summary.json: where the time went)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 3)
        self._last = now


class _Clients:
    """The client processes of a run (started by the harness, stopped by it)."""

    def __init__(self, config: StressConfig, target: Target, run_dir: str, seed: int, start: float) -> None:
        self.dir = os.path.join(run_dir, "clients")
        shutil.rmtree(self.dir, ignore_errors=True)        # an --out directory used before
        os.makedirs(self.dir)
        self.stop_file = os.path.join(self.dir, "STOP")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.histories = [os.path.join(self.dir, f"history-{i}.jsonl") for i in range(config.clients)]
        mix = workload_mix(config.workload)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(p or os.curdir) for p in sys.path]
                                            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        for i in range(config.clients):
            spec = {"index": i, "clients": config.clients, "seed": seed, "keys": config.keys,
                    "distribution": config.key_distribution, "mix": None if mix is None else list(mix.weights),
                    "max_ops": config.max_ops, "start": start, "rate": config.rate, "rotate_s": config.rotate,
                    "target": target.client_target(), "history": self.histories[i], "stop": self.stop_file,
                    "deadline_s": float(config.duration) + 3600.0}
            path = os.path.join(self.dir, f"client-{i}.json")
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(spec, fh)
            with open(os.path.join(self.dir, f"client-{i}.err"), "wb") as err:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "lightning_db.stress.client", path],
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                                   env=env, start_new_session=True))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def crashed(self) -> list[str]:
        """Clients that ended before being told to stop."""
        out = []
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                out.append(f"client {i} (pid {p.pid}) exited with status {p.returncode}: {self.stderr(i)}")
        return out

    def stderr(self, i: int) -> str:
        try:
            with open(os.path.join(self.dir, f"client-{i}.err"), encoding="utf-8", errors="replace") as fh:
                return fh.read()[-2000:].strip() or "(no output)"
        except OSError:
            return "(no output)"

    def stop(self) -> list[str]:
        """Stop file, wait, then SIGKILL what is left (by pid); reaped. The
        clients that had to be killed."""
        with open(self.stop_file, "w"):
            pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        killed = []
        for i, p in enumerate(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                killed.append(f"client {i} (pid {p.pid}) did not stop within {STOP_TIMEOUT_S:g}s and was killed")
        return killed

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)


def _check_target(config: StressConfig, target: Target) -> None:
    missing = [f for f in config.faults if f not in target.faults]
    if not missing:
        return
    why = []
    for f in missing:
        if f == "disk-full":
            why.append("disk-full needs a data directory the harness creates (no --target PATH, or serve: "
                       "without a path), on a file system it mounts")
        elif f == "drop-connection":
            why.append("drop-connection needs a Redis-protocol target (serve:[PATH] or redis://)")
        else:
            why.append(f"{f} needs a target whose processes the harness owns (a PATH or serve:[PATH], "
                       f"not {target.kind})")
    raise InvalidArgument("; ".join(why))


def _wait_ready(clients: _Clients, tailer: Tailer, n: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        tailer.poll()
        if len(tailer.ready) >= n:
            return
        crashed = clients.crashed()
        if crashed:
            raise RuntimeError("a client failed to start: " + "; ".join(crashed))
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(tailer.ready)} of {n} clients opened the database within "
                               f"{READY_TIMEOUT_S:g}s")
        time.sleep(0.05)


def _final_keys(config: StressConfig, histories: list[str]) -> tuple[list[str], list[str]]:
    """Every key the clients touched (and every key of the first generation):
    all are read back at the end. One pass over the files, keeping only keys."""
    seen: set[str] = set()
    for path in histories:
        for ev in read_events(path):
            if ev.get("type") != "invoke":
                continue
            if "ops" in ev:
                seen.update(op[1] for op in ev["ops"])
            elif "key" in ev:
                seen.add(ev["key"])
    if config.transactional:
        return [], sorted(seen)
    return sorted(seen | {versioned_key(0, i) for i in range(config.keys)}), []


def run_stress(config: StressConfig) -> StressResult:
    """One run (see the module docstring). Raises InvalidArgument for options
    the target cannot honour."""
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    try:
        target = make_target(config.target, config.shards, config.faults)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    _check_target(config, target)
    if "disk-full" in config.faults:
        problem = disk_problem()
        if problem is not None:
            raise InvalidArgument(f"disk-full is not possible here: {problem}")
    run_dir = os.path.abspath(config.out) if config.out else tempfile.mkdtemp(prefix="ldb-stress-")
    os.makedirs(run_dir, exist_ok=True)
    clients: _Clients | None = None
    injector: Injector | None = None
    view: LiveView | None = None
    problems: list[str] = []
    interrupted = False
    try:
        phases = _Phases()
        target.start(run_dir)
        phases.mark("start target")
        epoch = time.monotonic()                   # generation 0 of the keys starts here (client.py)
        clients = _Clients(config, target, run_dir, seed, epoch)
        tailer = Tailer(clients.histories)
        _wait_ready(clients, tailer, config.clients)
        target.clients_started()
        phases.mark("start clients")
        load_start = time.monotonic()
        if config.faults:
            injector = Injector(target, list(config.faults), config.fault_interval, rng,  # type: ignore[arg-type]
                                progress=tailer.completed, clients=clients.pids,
                                pause=config.pause, log_path=os.path.join(run_dir, "faults.jsonl"))  # type: ignore[arg-type]
            injector.start()
        live = config.live if config.live is not None else sys.stdout.isatty()
        if live:
            inj = injector

            seen: dict[Any, int] = {}           # node pid -> worker restarts it reported

            def restarts() -> dict[str, int]:
                stats = node_stats(target.path) if target.path else None
                if stats is not None:
                    seen[stats.get("node_pid")] = sum(s.get("restarts") or 0 for s in stats["shards"])
                return {"workers": sum(seen.values()), "server": target.server_restarts}

            view = LiveView(tailer, inj.counts if inj else dict, restarts, f"stress: {target.describe()}",
                            float(config.duration)).start()  # type: ignore[arg-type]
        try:
            while time.monotonic() - load_start < float(config.duration):  # type: ignore[arg-type]
                crashed = clients.crashed()
                if crashed:
                    problems += crashed
                    break
                if injector is not None and injector.failure is not None:
                    problems.append(f"the fault injector failed: {injector.failure!r}")
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:
            interrupted = True
        if injector is not None:
            phases.mark("load")
            injector.stop()
            if injector.busy():
                problems.append("the fault injector did not finish its last fault in time")
            phases.mark("heal the last faults")
        load_end = time.monotonic()
        phases.mark("load")
        problems += clients.stop()
        phases.mark("stop clients")
        if view is not None:
            view.stop()
            view = None
        keys, list_keys = _final_keys(config, clients.histories)
        phases.mark("collect keys")
        final, lists = target.final_values(keys, list_keys)
        phases.mark("final reads")
        target.stop()
        phases.mark("stop target")
        checked = _check(config, clients.histories, final, lists, run_dir if config.out else None, epoch)
        phases.mark("merge and check")
        faults = [r.to_dict() for r in injector.records] if injector is not None else []
        if not checked.stats.ok_between(float("-inf"), float("inf")) and not interrupted:
            problems.append("no operation completed: see the clients' notes in clients/*.jsonl and clients/*.err")
        summary = _summary(config, seed, target, checked, faults, load_start, load_end, problems, interrupted)
        summary["phases_s"] = phases.seconds
        result = StressResult(config, seed, checked.verdicts, faults, summary, problems, config.out and run_dir)
        if config.out:
            _write_out(run_dir, final, lists, faults, summary, checked, load_start, load_end)
        return result
    finally:
        if view is not None:
            view.stop()
        if injector is not None and injector.busy():
            injector.stop()
        if clients is not None:
            clients.kill()
        target.stop()
        if not config.out:
            shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class _Checked:
    """What one pass over the merged history gave."""

    verdicts: list[Verdict]
    stats: Stats
    meta: list[dict[str, Any]]
    unfinished: int


def _check(config: StressConfig, histories: list[str], final: dict[str, str | None], lists: dict[str, list[Any]],
           out: str | None, start: float) -> _Checked:
    """One pass over the merged history: the checkers (a generation at a
    time), the numbers of the report and, with *out*, history.jsonl and
    transactions.jsonl; nothing holds the whole history."""
    checker = StreamChecker(final, lists, transactional=config.transactional, start=start,
                            rotate=float(config.rotate), time_limit=config.check_time_limit)  # type: ignore[arg-type]
    stats = Stats()
    meta: list[dict[str, Any]] = []
    unfinished = [0]
    with contextlib.ExitStack() as files:
        ops_out = files.enter_context(open(os.path.join(out, "history.jsonl"), "w", encoding="utf-8")) if out else None
        txn_out = (files.enter_context(open(os.path.join(out, "transactions.jsonl"), "w", encoding="utf-8"))
                   if out and config.transactional else None)
        for kind, ev in stream(histories, meta, unfinished):
            if kind == "txn-invoke":
                checker.invoke_txn(ev)
            elif kind == "op":
                if ops_out is not None:
                    ops_out.write(json.dumps(ev, separators=(",", ":")) + "\n")
                stats.add(ev)
                checker.add(ev)
            else:
                if txn_out is not None:
                    txn_out.write(json.dumps(ev, separators=(",", ":")) + "\n")
                stats.add_txn(ev)
                checker.add_txn(ev)
    return _Checked(checker.finish(), stats, meta, unfinished[0])


def _summary(config: StressConfig, seed: int, target: Target, checked: _Checked, faults: list[dict[str, Any]],
             start: float, end: float, problems: list[str], interrupted: bool) -> dict[str, Any]:
    counts = checked.stats.type_counts()
    ops = sum(c.get("ok", 0) + c.get("fail", 0) + c.get("info", 0) for f, c in counts.items()
              if f != "errors_by_class")
    ok = sum(c.get("ok", 0) for f, c in counts.items() if f != "errors_by_class")
    elapsed = max(1e-9, end - start)
    by_fault: dict[str, int] = {}
    for f in faults:
        by_fault[f["fault"]] = by_fault.get(f["fault"], 0) + 1
    reopens = sum(1 for m in checked.meta if m.get("event") == "reopen")
    cfg = dataclasses.asdict(config)
    cfg["seed"] = seed
    cfg["distribution"] = config.key_distribution
    verdicts = checked.verdicts
    return {
        "config": cfg, "target": target.describe(), "elapsed_s": round(elapsed, 3), "interrupted": interrupted,
        "operations": ops, "operations_ok": ok,
        "throughput_ops_s": round(checked.stats.ok_between(start, end) / elapsed, 1),
        "counts": counts, "latency_ms": checked.stats.latency_ms(), "unfinished_ops": checked.unfinished,
        "faults": by_fault, "fault_cycles": sum(1 for f in faults if f.get("healed") is not None),
        "faults_not_healed": sum(1 for f in faults if f.get("healed") is None and not f.get("cut_short")),
        "faults_cut_short": sum(1 for f in faults if f.get("cut_short")),
        "restarts": {"server": target.server_restarts,
                     "workers_killed": by_fault.get("kill-worker", 0)},
        "client_reopens": reopens, "problems": problems,
        "valid": not problems and all(v.valid is not False for v in verdicts),
        "verdicts": [v.to_dict() for v in verdicts],
    }


def _write_out(run_dir: str, final: dict[str, str | None], lists: dict[str, list[Any]],
               faults: list[dict[str, Any]], summary: dict[str, Any], checked: _Checked,
               start: float, end: float) -> None:
    write_jsonl(os.path.join(run_dir, "faults.jsonl"), faults)
    with open(os.path.join(run_dir, "final.json"), "w", encoding="utf-8") as fh:
        json.dump(final or lists, fh, indent=1, sort_keys=True)
    write_summary(os.path.join(run_dir, "summary.json"), summary)
    write_html(os.path.join(run_dir, "report.html"), summary, checked.stats.series(start, end), faults,
               [v.to_dict() for v in checked.verdicts])


# --- the command line ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lightning-db stress``."""
    p.add_argument("--target", default=None, metavar="PATH|URL",
                   help="a data directory (embedded; default: a fresh temporary one), serve:[PATH] (the harness "
                        "runs lightning-db serve on it), or redis://HOST:PORT (a running server)")
    p.add_argument("--duration", default="60s", help="load time, e.g. 60s, 2m, 1h (default 60s)")
    p.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--workload", default="ycsb-a",
                   help="ycsb-a..ycsb-f, txn (list-append transactions), or a mix like read=50,write=45,delete=5 "
                        "(default ycsb-a)")
    p.add_argument("--keys", type=int, default=200, help="keyspace size (default 200)")
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default=None,
                   help="key distribution (default zipfian; latest for ycsb-d)")
    p.add_argument("--faults", default="", metavar="LIST",
                   help=f"comma-separated: {','.join(FAULTS)} (default none)")
    p.add_argument("--fault-interval", default="0.2s..3s", metavar="LOW..HIGH",
                   help="random wait between faults (default 0.2s..3s)")
    p.add_argument("--pause", default="0.2s..1.5s", metavar="LOW..HIGH",
                   help="how long pause stops a worker and disk-full holds (default 0.2s..1.5s)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write history.jsonl, faults.jsonl, summary.json and report.html here")
    p.add_argument("--shards", type=int, default=2, help="shard workers of a new data directory (default 2)")
    p.add_argument("--rate", type=float, default=1000.0,
                   help="operations per second per client (default 1000; 0: unlimited, for short runs: the "
                        "checkers take a few hundred thousand operations a minute)")
    p.add_argument("--rotate", default="5s", metavar="DURATION",
                   help="clients move to fresh keys this often, so that every key's history stays short "
                        "(default 5s; 0: never)")
    live = p.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=None,
                      help="show the live view (default: when stdout is a terminal)")
    live.add_argument("--no-live", dest="live", action="store_false")


def run_args(args: argparse.Namespace) -> int:
    """Run as the parsed *args* say; print the verdicts; the exit status.
    SIGTERM stops the load like Ctrl-C: the run still ends cleanly and the
    checkers still run."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:                                             # not the main thread: leave it
        previous = None
    try:
        return _run_args(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_args(args: argparse.Namespace) -> int:
    try:
        config = StressConfig(target=args.target, duration=args.duration, clients=args.clients,
                              workload=args.workload, keys=args.keys, distribution=args.distribution,
                              faults=args.faults, fault_interval=args.fault_interval, pause=args.pause,
                              seed=args.seed, out=args.out, live=args.live, shards=args.shards, rate=args.rate,
                              rotate=args.rotate)
        result = run_stress(config)
    except InvalidArgument as exc:
        print(f"lightning-db stress: error: {exc}", file=sys.stderr)
        return 2
    except (LightningError, RuntimeError, OSError) as exc:      # the target could not be started or read
        print(f"lightning-db stress: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(result.text(), flush=True)
    return result.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-db stress`` (and ``python -m lightning_db.stress``)."""
    p = argparse.ArgumentParser(prog="lightning-db stress",
                                description="Drive load and faults against Lightning DB and check that nothing "
                                            "acknowledged was lost and every key stayed linearizable.")
    add_arguments(p)
    try:
        args = p.parse_args(join_dashed_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return 0 if exc.code in (0, None) else 2
    return run_args(args)


if __name__ == "__main__":
    sys.exit(main())
