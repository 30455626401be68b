"""Options of the stress harness: durations, intervals, fault lists, the
config's defaults and checks, and the usage errors of ``main`` (exit 2)."""

from __future__ import annotations

import pytest

from lightning_db.errors import InvalidArgument
from lightning_db.stress import StressConfig, main
from lightning_db.stress.run import parse_duration, parse_faults, parse_interval

pytestmark = pytest.mark.stress


@pytest.mark.parametrize("text, seconds", [
    ("60s", 60.0), ("2m", 120.0), ("1h", 3600.0), ("500ms", 0.5), ("1h30m", 5400.0), ("1.5", 1.5),
    ("0.2s", 0.2), (" 3s ", 3.0), ("1m 30s", 90.0), (".5s", 0.5), ("0", 0.0), (7, 7.0), (2.5, 2.5),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-1s", "5x", "1s2", "s", "1.2.3s", float("nan"), -3, None, True])
def test_bad_durations(text):
    with pytest.raises(InvalidArgument):
        parse_duration(text)


def test_intervals():
    assert parse_interval("0.2s..3s") == (0.2, 3.0)
    assert parse_interval("100ms..400ms") == pytest.approx((0.1, 0.4))
    assert parse_interval("1s") == (1.0, 1.0)
    assert parse_interval((0.1, 0.4)) == (0.1, 0.4)
    for bad in ("3s..1s", "..1s", "1s..x", "-1s..2s"):
        with pytest.raises(InvalidArgument):
            parse_interval(bad)


def test_fault_lists():
    assert parse_faults("kill-worker,pause") == ("kill-worker", "pause")
    assert parse_faults(" kill-worker , kill-worker ,pause") == ("kill-worker", "pause")
    assert parse_faults("none") == parse_faults("") == parse_faults(None) == ()
    assert parse_faults(["corrupt"]) == ("corrupt",)
    with pytest.raises(InvalidArgument, match="explode"):
        parse_faults("kill-worker,explode")


def test_config_defaults():
    c = StressConfig()
    assert c.target is None
    assert c.duration == 60.0
    assert c.clients == 4
    assert c.workload == "ycsb-a"
    assert c.keys == 200
    assert c.key_distribution == "zipfian"
    assert c.faults == ()
    assert c.fault_interval == (0.2, 3.0)
    assert c.pause == (0.2, 1.5)
    assert c.seed is None
    assert c.rate == 1000.0 and c.rotate == 5.0
    assert not c.transactional
    assert StressConfig(workload="ycsb-d").key_distribution == "latest"
    assert StressConfig(workload="ycsb-d", distribution="uniform").key_distribution == "uniform"
    assert StressConfig(workload="txn").transactional
    assert StressConfig(duration="1h", faults="kill-worker,pause", fault_interval="0.1s..0.4s").duration == 3600.0


@pytest.mark.parametrize("kwargs", [
    {"clients": 0}, {"keys": 0}, {"shards": 0}, {"workload": "ycsb-z"}, {"workload": "read=0"},
    {"distribution": "gaussian"}, {"rate": -1}, {"rate": "fast"}, {"rotate": "often"}, {"duration": "soon"}, {"faults": "meteor"}, {"seed": "x"},
    {"clients": True},
])
def test_config_rejects(kwargs):
    with pytest.raises(InvalidArgument):
        StressConfig(**kwargs)


@pytest.mark.parametrize("argv", [
    ["--workload", "bogus"],
    ["--faults", "explode"],
    ["--duration", "soon"],
    ["--clients", "0"],
    ["--distribution", "normal"],
    ["--no-such-option"],
    # the faults a target cannot take are refused before anything starts
    ["--target", "redis://127.0.0.1:1", "--faults", "kill-worker"],
    ["--target", "redis://127.0.0.1:1", "--faults", "disk-full"],
    ["--target", "ftp://somewhere"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv + ["--no-live"]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--duration", "-5s"], "bad duration '-5s'"),
    (["--duration", "0s"], "duration must be above 0 s"),
    (["--pause", "-1s..2s"], "bad duration '-1s'"),
    (["--fault-interval", "-.5s"], "bad duration '-.5s'"),
])
def test_negative_and_zero_durations_are_named(argv, message, capsys):
    """A value that starts with a dash reaches the duration parser (argparse
    alone would take it for an option), and a run of no load is refused."""
    assert main(argv + ["--no-live"]) == 2
    assert message in capsys.readouterr().err
    from lightning_db.cli import main as cli_main
    assert cli_main(["stress"] + argv + ["--no-live"]) == 2
    assert message in capsys.readouterr().err


def test_drop_connection_needs_a_redis_target(tmp_path, capsys):
    assert main(["--target", str(tmp_path / "db"), "--faults", "drop-connection", "--no-live"]) == 2
    assert "drop-connection needs a Redis-protocol target" in capsys.readouterr().err


def test_a_target_that_holds_data_is_refused(tmp_path, capsys):
    """The checkers take every value read for one the run wrote: data from
    before would read as values never written, a false failure."""
    import lightning_db as ldb

    from tests.stress.fake_server import FakeServer
    path = tmp_path / "db"
    with ldb.open(path, shards=2) as db:
        db.put(b"g0:k000002", b"0-1613")
    assert main(["--target", str(path), "--duration", "1s", "--clients", "1", "--no-live"]) == 2
    assert "holds data already" in capsys.readouterr().err
    with FakeServer(drop_every=0) as server:
        assert main(["--target", server.url, "--duration", "1s", "--clients", "1", "--no-live"]) == 0
        assert main(["--target", server.url, "--duration", "1s", "--clients", "1", "--no-live"]) == 2
        assert "holds data already" in capsys.readouterr().err


def test_disk_full_needs_a_directory_the_harness_makes(tmp_path, capsys):
    assert main(["--target", str(tmp_path / "db"), "--faults", "disk-full", "--no-live"]) == 2
    err = capsys.readouterr().err
    assert "disk-full" in err
