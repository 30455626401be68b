"""``lightning-db serve --native-port``: ``lightning_db.connect`` and the
command line's ``--url`` reach the same data as the Redis port."""

from __future__ import annotations

import subprocess
import sys

import lightning_db as ldb
from tests.server.conftest import REPO


def test_connect_and_cli_url_see_what_redis_clients_wrote(server, r):
    r.set("shared", "from-redis")
    url = f"tcp://127.0.0.1:{server.native_port}"
    with ldb.connect(url) as db:
        assert db.get(b"shared") == b"from-redis"
        db.put(b"native", b"v")
        with db.transaction() as tx:
            tx.put(b"n", b"%d" % (int(tx.get(b"n") or b"0") + 1))
    assert r.get("native") == b"v" and r.get("n") == b"1"
    cli = [sys.executable, "-m", "lightning_db.cli"]
    out = subprocess.run([*cli, "get", "--url", url, "shared"], capture_output=True, text=True, timeout=120,
                         cwd=str(REPO))
    assert (out.returncode, out.stdout.strip()) == (0, "from-redis"), out.stderr
    assert subprocess.run([*cli, "put", "--url", url, "cli-key", "cli-value"], capture_output=True, text=True,
                          timeout=120, cwd=str(REPO)).returncode == 0
    assert r.get("cli-key") == b"cli-value"
