"""The node (supervisor process) and attaching to it from many processes.

Processes: this test process attaches (``attach`` starts the node with
Popen); caller subprocesses run ``tests.shards.node_helpers``; the node runs
``EchoShard`` workers. A node whose starter was killed is reparented, so every
test also collects the pids it must see gone and checks them explicitly.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from lightning_db.errors import ActorStartError, DatabaseShutdown, InvalidArgument
from lightning_db.mailbox import MailboxClient
from lightning_db.shards import attach as attach_mod
from lightning_db.shards.attach import Session, attach
from lightning_db.shards.node import NODE_FILE, read_node_file, runtime_dir_for
from tests.waiting import wait_until

from .node_helpers import ACTOR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = {"heartbeat_interval": 0.2, "heartbeat_misses": 3}


def gone(pid: int) -> bool:
    """Not running (a zombie nobody reaps counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], what: str) -> None:
    for pid in pids:
        wait_until(lambda pid=pid: gone(pid), 60, f"{what} (pid {pid}) to exit")


def ask(address: str, op: str, payload: Any = None) -> Any:
    with MailboxClient(address) as client:
        return client.request(op, payload, 30).result(40)


class Tracker:
    """Sessions to detach and pids to kill when a test ends, pass or fail."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.pids: set[int] = set()
        self.procs: list[subprocess.Popen] = []

    def attach(self, path: str, shards: int | None = 2, config: dict | None = None, **kw: Any) -> Session:
        session = attach(path, shards, FAST if config is None else config, timeout=120, actor=ACTOR, **kw)
        self.sessions.append(session)
        self.watch(session)
        return session

    def watch(self, session: Session) -> list[int]:
        """Remember the node and its current workers; returns the worker pids."""
        self.pids.add(session.node_pid)
        workers = [s["pid"] for s in session.request("stats", timeout=30)["shards"]]
        self.pids.update(workers)
        return workers

    def caller(self, path: str, shards: int = 2) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "tests.shards.node_helpers", path, str(shards),
                                 json.dumps(FAST)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for session in self.sessions:
            session.detach()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(60)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                stream.close()
        deadline = time.monotonic() + 30          # a detached node exits by itself: let it clean up
        while time.monotonic() < deadline and not all(gone(pid) for pid in self.pids):
            time.sleep(0.05)
        for pid in self.pids:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        wait_gone(sorted(self.pids), "a process of the test")
        attach_mod._reap_started()


@pytest.fixture
def track():
    tracker = Tracker()
    try:
        yield tracker
    finally:
        tracker.close()


def read_line(proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            return proc.stdout.readline()
        if proc.poll() is not None:
            raise AssertionError(f"caller exited with {proc.returncode}: {proc.stderr.read()}")
    raise AssertionError(f"caller said nothing within {timeout}s")


def shard(session: Session, i: int) -> dict:
    return session.request("stats", timeout=30)["shards"][i]


def test_attach_starts_a_node_whose_shards_answer_and_the_last_detach_ends_it(tmp_path, track):
    data = str(tmp_path / "db")
    s1 = track.attach(data, 2, {**FAST, "tag": "x"})
    workers = track.watch(s1)
    info = read_node_file(data)
    assert info["status"] == "running" and info["pid"] == s1.node_pid and info["shards"] == s1.addresses
    assert s1.shards == 2 and s1.request("ping")["pid"] == s1.node_pid
    for i, address in enumerate(s1.addresses):
        who = ask(address, "whoami")
        assert who["shard_id"] == i and who["pid"] == workers[i] and who["config"] == {"tag": "x"}
        assert who["shard_dir"] == os.path.join(data, f"shard-{i:03d}")
    assert len(os.path.dirname(s1.addresses[0])) < 100
    s2 = track.attach(data, None)            # same process, second session, recorded count
    assert s2.node_pid == s1.node_pid and s2.shards == 2 and s2.session != s1.session
    assert s1.request("stats")["sessions"] == 2
    s1.detach()
    s1.detach()                               # idempotent
    assert s2.request("ping")["pid"] == s1.node_pid
    s2.detach()
    wait_gone([s1.node_pid, *workers], "the node and its workers after the last detach")
    assert not os.path.exists(os.path.join(data, NODE_FILE))
    assert not os.path.exists(runtime_dir_for(data))
    with open(os.path.join(data, "stops")) as f:
        assert f.read().split() == ["1", "0"]        # on_stop ran, in reverse order


def test_two_processes_attaching_at_once_share_one_node(tmp_path, track):
    data = str(tmp_path / "db")
    a, b = track.caller(data), track.caller(data)
    ra, rb = json.loads(read_line(a)), json.loads(read_line(b))
    track.pids.update([ra["node_pid"], *ra["shard_pids"]])
    assert ra["node_pid"] == rb["node_pid"] and ra["shard_pids"] == rb["shard_pids"]
    assert ra["session"] != rb["session"]
    control = read_node_file(data)["control"]
    a.stdin.write("detach\n")
    a.stdin.flush()
    assert read_line(a).strip() == "detached"
    assert ask(control, "stats")["sessions"] == 1
    b.stdin.write("detach\n")
    b.stdin.flush()
    assert read_line(b).strip() == "detached"
    wait_gone([ra["node_pid"], *ra["shard_pids"]], "the node after both callers detached")


def test_kill_9_of_a_caller_ends_the_node_without_orphans(tmp_path, track):
    data = str(tmp_path / "db")
    caller = track.caller(data)
    r = json.loads(read_line(caller))
    track.pids.update([r["node_pid"], *r["shard_pids"]])
    caller.kill()
    caller.wait(60)
    wait_gone([r["node_pid"], *r["shard_pids"]], "the node after its only caller was killed")
    assert read_node_file(data) is None


def test_kill_9_of_a_worker_restarts_it_at_the_same_address(tmp_path, track):
    data = str(tmp_path / "db")
    s = track.attach(data, 2)
    old = shard(s, 0)["pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: shard(s, 0)["pid"] not in (old, None) and shard(s, 0)["state"] == "running", 60,
               "shard 0 to be restarted")
    track.watch(s)
    now = shard(s, 0)
    assert now["restarts"] == 1 and shard(s, 1)["restarts"] == 0
    assert ask(s.addresses[0], "whoami")["pid"] == now["pid"]
    with open(os.path.join(data, "shard-000", "opens")) as f:
        assert f.read().split() == [str(old), str(now["pid"])]      # reopened its directory


def test_a_sigstopped_worker_misses_heartbeats_and_is_replaced(tmp_path, track):
    data = str(tmp_path / "db")
    s = track.attach(data, 2)
    old = shard(s, 1)["pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        wait_until(lambda: shard(s, 1)["pid"] not in (old, None) and shard(s, 1)["state"] == "running", 60,
                   "the hung shard 1 to be replaced")
    finally:
        if not gone(old):
            os.kill(old, signal.SIGCONT)
    track.watch(s)
    assert shard(s, 1)["hang_kills"] == 1 and gone(old)
    assert ask(s.addresses[1], "whoami")["shard_id"] == 1


def test_kill_9_of_the_node_takes_its_workers_and_a_new_attach_starts_a_fresh_node(tmp_path, track):
    data = str(tmp_path / "db")
    s = track.attach(data, 2)
    workers = track.watch(s)
    os.kill(s.node_pid, signal.SIGKILL)
    wait_gone([s.node_pid, *workers], "the killed node and its workers")
    s.detach()                                # the node is gone: returns at once
    assert read_node_file(data)["pid"] == s.node_pid   # stale; the next attach must see through it
    s2 = track.attach(data, None)
    assert s2.node_pid != s.node_pid and ask(s2.addresses[0], "whoami")["shard_id"] == 0


def test_exceeding_the_restart_intensity_shuts_the_database_down(tmp_path, track):
    data = str(tmp_path / "db")
    s = track.attach(data, 2, {**FAST, "restart_intensity": 1, "restart_period": 600})
    workers = track.watch(s)
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: shard(s, 0)["restarts"] == 1 and shard(s, 0)["state"] == "running", 60, "a restart")
    second = track.watch(s)[0]
    os.kill(second, signal.SIGKILL)
    wait_until(lambda: (read_node_file(data) or {}).get("status") == "shutdown", 60, "node.json to say shutdown")
    assert "restart" in read_node_file(data)["reason"]
    with open(os.path.join(data, "node.log")) as f:
        assert "alert from node supervisor" in f.read()
    with pytest.raises(DatabaseShutdown):
        s.request("ping")
    with pytest.raises(DatabaseShutdown):
        attach(data, None, FAST, timeout=60, actor=ACTOR)
    wait_gone([*workers, second], "every shard after the fatal error")
    node = [p for p in attach_mod._started if p.pid == s.node_pid]    # this process started it
    s.detach()
    wait_gone([s.node_pid], "the node after the fatal error")
    assert [p.wait(60) for p in node] == [4]                           # EXIT_FATAL


def test_sigterm_stops_the_node_gracefully(tmp_path, track):
    data = str(tmp_path / "db")
    s = track.attach(data, 2)
    workers = track.watch(s)
    os.kill(s.node_pid, signal.SIGTERM)
    wait_gone([s.node_pid, *workers], "the node and its workers after SIGTERM")
    assert read_node_file(data) is None
    with open(os.path.join(data, "stops")) as f:
        assert f.read().split() == ["1", "0"]


def test_an_explicit_shard_count_must_match_the_recorded_one(tmp_path, track):
    data = str(tmp_path / "db")
    track.attach(data, 2).detach()
    with open(os.path.join(data, "SHARDS")) as f:
        assert json.load(f)["shards"] == 2
    with pytest.raises(InvalidArgument, match=r"2 shard.*shards=3"):
        attach(data, 3, FAST, actor=ACTOR)
    with pytest.raises(InvalidArgument):
        attach(data, 0, FAST, actor=ACTOR)


def test_a_node_that_fails_to_start_is_reported_with_its_log(tmp_path, track):
    data = str(tmp_path / "db")
    with pytest.raises(ActorStartError, match="cannot load actor") as err:
        attach(data, 1, FAST, timeout=60, actor="tests.shards.node_helpers:Missing")
    assert "exited during start with code 1" in str(err.value)


def test_the_node_lock_and_the_startup_grace(tmp_path):
    data = str(tmp_path / "db")
    cmd = [sys.executable, "-m", "lightning_db.shards.node", "--data", data, "--shards", "1", "--actor", ACTOR,
           "--grace", "1.5"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (read_node_file(data) or {}).get("status") == "running" or first.poll() is not None,
                   60, "the first node to run")
        second = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 3 and "already served by another node" in second.stderr
        assert first.wait(60) == 0, first.stderr.read()      # nobody attached within the grace
        assert read_node_file(data) is None
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(60)
        first.stderr.close()
