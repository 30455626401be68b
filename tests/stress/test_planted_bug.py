"""A test that cannot fail is worse than none: the harness must catch a
database that loses acknowledged writes.

The "database" is a deliberately broken fake (fake_server.py): a Redis-protocol
store that answers +OK to every SET but drops every 10th one. A run against
it must end with exit status 1, report lost writes and a linearizability
violation, and print the smallest failing sub-history. The same fake without
the bug passes, so the failure is the bug's.
"""

from __future__ import annotations

import json

import pytest

from lightning_db.stress import StressConfig, main, run_stress
from tests.stress.fake_server import FakeServer

pytestmark = pytest.mark.stress

# 100 keys, uniform: a dropped SET is the last write of some key (so the
# final reads show it) all but certainly (0.9 ** 100).
ARGS = ["--duration", "3s", "--clients", "2", "--keys", "100", "--distribution", "uniform",
        "--workload", "read=50,write=45,delete=5", "--no-live", "--seed", "11", "--faults", "drop-connection",
        "--fault-interval", "0.2s..0.5s"]


def test_lost_writes_fail_the_run_with_exit_status_1(tmp_path, capsys):
    with FakeServer(drop_every=10) as fake:
        status = main(["--target", fake.url, "--out", str(tmp_path / "out")] + ARGS)
        dropped = fake.dropped
    out = capsys.readouterr().out
    assert dropped > 0
    assert status == 1, out
    assert "linearizability: INVALID" in out and "durability: INVALID" in out and "FAILED" in out
    assert "smallest failing sub-history" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["valid"] is False
    durability = next(v for v in summary["verdicts"] if v["name"] == "durability")
    assert durability["details"]["lost_writes"] > 0 and durability["failing"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "INVALID" in report and "the smallest failing sub-history" in report


def test_the_same_fake_without_the_bug_passes():
    with FakeServer(drop_every=0) as fake:
        result = run_stress(StressConfig(target=fake.url, duration=3, clients=2, keys=100, distribution="uniform",
                                         workload="read=50,write=45,delete=5", live=False, seed=11,
                                         faults="drop-connection", fault_interval="0.2s..0.5s"))
    assert result.exit_status == 0, result.text()
    assert [v.valid for v in result.verdicts] == [True, True]
    assert result.fault_cycles > 0 and result.summary["client_reopens"] > 0
