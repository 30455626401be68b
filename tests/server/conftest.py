"""A RESP server started by the tests: ``python -m lightning_db.server.serve``
as a subprocess (2 shards, 2 front ends) on a free port, one per test module.

Teardown sends SIGTERM and expects a clean exit (status 0) within a
generous deadline; it kills by pid only as a last resort (and then fails).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, data: Path, shards: int | None = 2, frontends: int = 2) -> None:
        self.data, self.port, self.http_port, self.native_port = data, free_port(), free_port(), free_port()
        self.log = data.parent / f"{data.name}-serve.log"
        cmd = [sys.executable, "-m", "lightning_db.server.serve", "--data", str(data), "--port", str(self.port),
               "--frontends", str(frontends), "--workers", "8",
               "--http-port", str(self.http_port), "--native-port", str(self.native_port)]
        cmd += ["--shards", str(shards)] if shards is not None else []      # None: serve's default
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=str(REPO))

    def frontends(self) -> list[psutil.Process]:
        """The live front-end processes."""
        out = []
        for p in psutil.Process(self.proc.pid).children():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and "lightning_db.server.frontend" in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _answers(self) -> bool:
        """Every front end listens (serve printed its line) and PING is answered."""
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output()}")
        if "connect with: redis-cli" not in self.output():
            return False
        try:
            with redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5) as r:
                return bool(r.ping())
        except redis.ConnectionError:
            return False

    def wait_ready(self) -> None:
        wait_until(self._answers, timeout=120, what="the RESP server to answer PING")

    def client(self, protocol: int = 2, **kw) -> redis.Redis:
        return redis.Redis(port=self.port, protocol=protocol, socket_timeout=60, **kw)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()           # the last resort; the test fails below
            self.proc.wait()
            raise AssertionError(f"serve did not stop within 90 s after SIGTERM:\n{self.output()}") from None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("resp") / "db")
    try:
        srv.wait_ready()
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, f"serve exited with {code}:\n{srv.output()}"


@pytest.fixture
def r(server):
    """A RESP2 client on a flushed database."""
    c = server.client(2)
    c.flushdb()
    yield c
    c.close()


@pytest.fixture
def r3(server):
    c = server.client(3)
    yield c
    c.close()
