"""``Dispatcher.plain_get``, the front end's short path for ``GET key``:
the same reply, counters and metrics as the general path, in every case."""

from __future__ import annotations

import pytest

import lightning_db
from lightning_db.server.dispatch import Dispatcher
from lightning_db.server.state import ClientState, ServerState, Settings


class Metrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def command(self, name: str, seconds: float, error: bool) -> None:
        assert seconds >= 0
        self.calls.append((name, error))


@pytest.fixture
def db(tmp_path):
    with lightning_db.open(tmp_path / "db", shards=0) as db:
        db.put(b"here", b"value")
        db.put(b"empty", b"")
        yield db


def _twin(db, resp: int, multi: bool) -> tuple[Dispatcher, ServerState, ClientState, Metrics]:
    server, metrics = ServerState(db, Settings(data_dir="unused")), Metrics()
    client = ClientState(id=1, resp=resp, multi=[] if multi else None)
    return Dispatcher(server, metrics), server, client, metrics


@pytest.mark.parametrize("resp", [2, 3])
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("argv", [[b"GET", b"here"], [b"get", b"here"], [b"GET", b"empty"], [b"GET", b"absent"],
                                  [b"GET", b""], [b"GET", b"k" * 70000]])
def test_plain_get_answers_and_counts_as_the_general_path(db, resp, multi, argv):
    short, s_server, s_client, s_metrics = _twin(db, resp, multi)
    general, g_server, g_client, g_metrics = _twin(db, resp, multi)
    got = short.plain_get(s_client, list(argv))
    assert got == general.execute(g_client, list(argv))
    assert s_server.stats == g_server.stats
    assert (s_client.commands, s_client.last_cmd, s_client.multi) == (g_client.commands, g_client.last_cmd,
                                                                        g_client.multi)
    assert s_metrics.calls == g_metrics.calls == [("get", got.startswith(b"-"))]
    if multi:
        assert got == b"+QUEUED\r\n"
    elif argv[1] == b"here":
        assert got == b"$5\r\nvalue\r\n" and s_server.stats["keyspace_hits"] == 1
    elif argv[1] == b"absent":
        assert got == (b"_\r\n" if resp == 3 else b"$-1\r\n") and s_server.stats["keyspace_misses"] == 1
    elif not argv[1] or len(argv[1]) > 65536:
        assert got.startswith(b"-") and s_server.stats["total_error_replies"] == 1


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("argv", [[b"GET", b"here"], [b"GET", b"absent"], [b"GET", b""], [b"GET", b"k" * 70000]])
def test_get_fast_answers_as_plain_get_or_leaves_it_to_the_general_path(db, multi, argv):
    """``get_fast`` (the front end counts its metrics per run of GETs): the
    same reply and counters as ``plain_get`` where it answers, nothing
    counted where it leaves the request to the general path."""
    fast, f_server, f_client, f_metrics = _twin(db, 2, multi)
    plain, p_server, p_client, _ = _twin(db, 2, multi)
    before = dict(f_server.stats)
    got = fast.get_fast(f_client, list(argv))
    want = plain.plain_get(p_client, list(argv))
    if multi or not argv[1] or len(argv[1]) > 65536:
        assert got is None and f_server.stats == before and f_client.commands == 0
    else:
        assert got == want and f_server.stats == p_server.stats and f_client.commands == p_client.commands == 1
    assert f_metrics.calls == []
