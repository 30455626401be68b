"""The supervisor supervises abstract children: it imports neither zmq nor
storage (nor the layers that sit on it), checked by the same import parser
as tests/test_layers.py. And the package's public names are pinned."""

from __future__ import annotations

import lightning_db.supervisor as supervisor
from tests.test_layers import PACKAGE, PACKAGE_DIR, tree_violations, violations

FORBIDDEN = ("zmq",) + tuple(f"{PACKAGE}.{p}" for p in ("storage", "mailbox", "actors", "shards", "server",
                                                         "client", "db"))


def test_supervisor_imports_no_zmq_storage_or_upper_layers():
    files, found = tree_violations(PACKAGE_DIR, "supervisor", FORBIDDEN)
    assert {"__init__.py", "tree.py", "retry.py", "breaker.py", "taxonomy.py", "quarantine.py"} <= \
        {p.name for p in files}
    assert found == []


def test_the_rule_catches_a_planted_import():
    assert violations("from ..storage.fs import OSFileSystem", "lightning_db.supervisor.quarantine", FORBIDDEN)
    assert violations("import zmq", "lightning_db.supervisor.tree", FORBIDDEN)


def test_public_names():
    assert sorted(supervisor.__all__) == sorted([
        "Alert", "AlertSink", "Backoff", "Child", "ChildInfo", "ChildSpec", "CircuitBreaker", "CircuitOpen",
        "Exit", "Monitor", "PidChild", "ProcessChild", "RestartIntensityExceeded", "Supervisor",
        "SupervisorSpec", "action_for", "list_quarantined", "quarantine", "retry", "spawn_child",
    ])
    for name in supervisor.__all__:
        assert getattr(supervisor, name) is not None
