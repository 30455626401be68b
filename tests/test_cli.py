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


def test_commands_on_a_directory_that_holds_no_database_create_none(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"not a database")
    for args, admin in ((("get", "--data", str(other), "k"), False), (("scan", "--data", str(other)), False),
                        (("stats", "--data", str(other)), False), (("--db", str(other), "verify"), True),
                        (("--db", str(other), "stats"), True)):
        r = run(*args, admin=admin)
        assert r.returncode == 1 and "no database" in r.stderr and len(r.stderr.splitlines()) == 1, (args, r.stderr)
    assert sorted(p.name for p in other.iterdir()) == ["cat.jpg"]


def test_admin_stats_and_checkpoint_targets(tmp_path):
    data = str(tmp_path / "data")
    assert run("put", "--data", data, "k", "v").returncode == 0
    r = run("--db", data, "stats", admin=True)          # the table
    assert r.returncode == 0 and "stats of" in r.stdout, r.stderr[-2000:]
    f = tmp_path / "file"
    f.write_bytes(b"x")
    r = run("--db", data, "checkpoint", str(f), admin=True)
    assert r.returncode == 2 and "is not a directory" in r.stderr, r.stderr
    assert f.read_bytes() == b"x"


def test_repl_runs_commands_and_survives_errors(tmp_path):
    """The shell over piped input: every command, a bad one, an error, quit."""
    import io

    import lightning_db as ldb
    from lightning_db.repl import Repl
    with ldb.open(tmp_path / "db", shards=0) as db:
        script = "\n".join([
            "put a 1", "put b\\xff 2", "put t v 3600", "get a", "get nope", "mget a nope", "ttl t", "ttl a",
            "ttl nope", "scan", "scan b 1", "count", "del a", "get a", "put", "frobnicate", "put k v -1",
            "flush", "compact", "stats", "help get", "quit", "get b\\xff",
        ]) + "\n"
        out = io.StringIO()
        Repl(db, stdin=io.StringIO(script), stdout=out).cmdloop()
        lines = out.getvalue().splitlines()
    assert lines[:7] == ["OK", "OK", "OK", "1", "(absent)", "a: 1", "nope: (absent)"]
    assert 3500 < float(lines[7]) <= 3600 and lines[8:10] == ["(no expiry)", "(absent)"]
    assert lines[10:14] == ["a: 1", "b\\xff: 2", "t: v", "(3 shown)"]
    assert lines[14:16] == ["b\\xff: 2", "(1 shown)"] and lines[16] == "3"
    assert lines[17:19] == ["OK", "(absent)"]
    assert lines[19].startswith("(bad argument) usage: put KEY VALUE")
    assert lines[20].startswith("unknown command 'frobnicate'")
    assert lines[21].startswith("(bad argument) ttl must be a number of seconds > 0")
    assert lines[22:24] == ["OK", "OK"] and any(line.startswith("sequence:") for line in lines)
    assert lines[-1].startswith("get KEY")          # help get; nothing runs after quit


def test_repl_command_reads_piped_input(tmp_path):
    import lightning_db as ldb
    data = tmp_path / "db"
    with ldb.open(data, shards=0) as db:
        db.put(b"k", b"v")
    r = subprocess.run([*CLI, "repl", "--data", str(data)], input="get k\nquit\n", capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "v", (r.stdout, r.stderr)
