"""How many shards ``lightning-db serve`` gives a directory when ``--shards``
is not given: ``default_shards()`` for a new one, the recorded count for one
that exists."""

from __future__ import annotations

import json
import re

import lightning_db
from lightning_db.server import serve as serve_mod
from lightning_db.shards.attach import SHARDS_FILE

from .conftest import ServerProcess


def test_default_shards_are_half_the_default_front_ends(monkeypatch):
    seen = {}
    for cpus, frontends, shards in ((1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 4, 2), (8, 8, 4), (16, 8, 4), (64, 8, 4)):
        monkeypatch.setattr(serve_mod.os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        seen[cpus] = (serve_mod.default_frontends(), serve_mod.default_shards())
        assert seen[cpus] == (frontends, shards), seen


def _serving_line(srv: ServerProcess) -> tuple[int, int]:
    m = re.search(r"\((\d+) front ends?, (\d+) shards?\)", srv.output())
    assert m, srv.output()
    return int(m.group(1)), int(m.group(2))


def _recorded(data) -> int:
    return json.loads((data / SHARDS_FILE).read_text())["shards"]


def test_a_new_directory_gets_the_default_and_an_existing_one_keeps_its_count(tmp_path):
    new = tmp_path / "new"
    srv = ServerProcess(new, shards=None, frontends=1)
    try:
        srv.wait_ready()
        with srv.client() as c:
            assert c.set("k", "v") is True and c.get("k") == b"v"
        assert _serving_line(srv) == (1, serve_mod.default_shards())
        assert _recorded(new) == serve_mod.default_shards()
    finally:
        assert srv.stop() == 0, srv.output()

    old = tmp_path / "old"
    count = serve_mod.default_shards() + 1          # not what serve would choose
    with lightning_db.open(old, shards=count) as db:
        db.put(b"k", b"kept")
    srv = ServerProcess(old, shards=None, frontends=1)
    try:
        srv.wait_ready()
        with srv.client() as c:
            assert c.get("k") == b"kept"
        assert _serving_line(srv) == (1, count)
        assert _recorded(old) == count
    finally:
        assert srv.stop() == 0, srv.output()


def test_option_values_past_their_limits_are_usage_errors_that_start_nothing(tmp_path, capsys):
    """Each names the option and its range, exits 2, and creates nothing
    (a front-end count without a limit once started thousands of processes)."""
    data = tmp_path / "data"
    for args, says in ((["--frontends", "10000"], "frontends must be from 1 to 256"),
                       (["--frontends", "0"], "frontends must be from 1 to 256"),
                       (["--workers", "0"], "workers must be from 1 to 1024"),
                       (["--workers", "5000"], "workers must be from 1 to 1024"),
                       (["--shards", "2000"], "shards from 1 to 1024"),
                       (["--port", "70000"], "port must be 1..65535"),
                       (["--http-port", "-1"], "http port must be 0 (none) or 1..65535"),
                       (["--port", "38001", "--http-port", "38001"], "the port and the http port are both 38001"),
                       (["--native-port", "1"], "the port and the native port are both 1"),
                       (["--host", "999.1.1.1"], "host '999.1.1.1' is not an address")):
        assert serve_mod.main(["--data", str(data), "--port", "1", "--http-port", "0", "--native-port", "0",
                               *args]) == 2, args
        assert says in capsys.readouterr().err, args
        assert not data.exists(), args


def test_counter_directories_of_serve_processes_that_are_gone_are_swept(tmp_path, monkeypatch):
    """A serve killed with -9 leaves its front ends' counter directory; the
    next serve removes it (and leaves those of live processes alone)."""
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = tmp_path / f"{serve_mod.METRICS_PREFIX}999999999-abc"
    mine = tmp_path / f"{serve_mod.METRICS_PREFIX}{os.getpid()}-xyz"
    other = tmp_path / "ldb-metrics-notapid"
    for d in (gone, mine, other):
        d.mkdir()
    serve_mod._sweep_metrics_dirs()
    assert not gone.exists() and mine.exists() and other.exists()
