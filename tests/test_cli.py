"""The command line: ``lightning-db`` and ``lightning-admin`` as a user runs
them (separate processes), against a new directory (one shard per usable CPU
by default) and an in-process one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-c", "import sys; from lightning_db.cli import main; sys.exit(main())"]
ADMIN = [sys.executable, "-c", "import sys; from lightning_db.cli import admin_main; sys.exit(admin_main())"]


def run(*args: str, admin: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([*(ADMIN if admin else CLI), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("shards", [None, 0])
def test_demo_and_data_commands(tmp_path, shards):
    data = str(tmp_path / "data")
    extra = [] if shards is None else ["--shards", str(shards)]
    r = run("run", "--data", data, "--keys", "3000", "--gets", "200", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "put_many" in r.stdout and "scan" in r.stdout
    assert run("put", "--data", data, "greeting", "hello").returncode == 0
    r = run("get", "--data", data, "greeting")
    assert (r.returncode, r.stdout.strip()) == (0, "hello")
    r = run("get", "--data", data, "absent")
    assert r.returncode == 1
    assert run("del", "--data", data, "greeting").returncode == 0
    assert run("get", "--data", data, "greeting").returncode == 1
    r = run("scan", "--data", data, "--limit", "5")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 5
    r = run("--db", data, "stats", "--json", admin=True)
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads(r.stdout)
    assert (len(stats["shards"]) >= 1) if shards is None else ("levels" in stats)
    r = run("--db", data, "verify", admin=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_bad_input_is_a_usage_error_and_writes_nothing(tmp_path):
    data = str(tmp_path / "data")
    r = run("run", "--data", data, "--keys", "0")
    assert r.returncode == 2 and "--keys" in r.stderr
    r = run("get", "--data", str(tmp_path / "missing"), "k")
    assert r.returncode == 1 and "no database" in r.stderr
    assert not (tmp_path / "missing").exists()
