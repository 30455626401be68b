"""``Dispatcher.get_run``, the front end's short path for runs of ``GET
key``: the same replies and counters as the general path, in every case,
or nothing answered and nothing counted where the general path must
answer."""

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


_BAD = ([b"GET", b""], [b"GET", b"k" * 70000])       # reads that fail: the general path answers them


def _general(db, resp: int, multi: bool, cmds: list[list[bytes]]) -> tuple[list[bytes], ServerState, ClientState]:
    general, server, client, _ = _twin(db, resp, multi)
    return [general.execute(client, list(argv)) for argv in cmds], server, client


@pytest.mark.parametrize("resp", [2, 3])
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("argv", [[b"GET", b"here"], [b"get", b"here"], [b"GET", b"empty"], [b"GET", b"absent"],
                                  *_BAD])
def test_a_get_answers_and_counts_as_the_general_path_or_not_at_all(db, resp, multi, argv):
    short, s_server, s_client, s_metrics = _twin(db, resp, multi)
    before = dict(s_server.stats)
    got, size, j = short.get_run(s_client, [list(argv)], 0, 1 << 20)
    (want,), g_server, g_client = _general(db, resp, multi, [argv])
    assert s_metrics.calls == []                         # the caller counts the run
    if multi or argv in _BAD:
        assert (got, size, j) == ([], 0, 0)
        assert s_server.stats == before and s_client.commands == 0 and s_client.last_cmd != "get"
        return
    assert got == [want] and size == len(want) and j == 1
    assert s_server.stats == g_server.stats
    assert (s_client.commands, s_client.last_cmd) == (g_client.commands, g_client.last_cmd) == (1, "get")
    if argv[1] == b"here":
        assert want == b"$5\r\nvalue\r\n" and s_server.stats["keyspace_hits"] == 1
    elif argv[1] == b"absent":
        assert want == (b"_\r\n" if resp == 3 else b"$-1\r\n") and s_server.stats["keyspace_misses"] == 1


@pytest.mark.parametrize("resp", [2, 3])
@pytest.mark.parametrize("cmds, stop", [
    ([[b"GET", b"here"], [b"get", b"absent"], [b"GET", b"empty"], [b"SET", b"x", b"1"], [b"GET", b"here"]], 3),
    ([[b"GET", b"here"], [b"GET", b""], [b"GET", b"here"]], 1),
    ([[b"GET", b"absent"], [b"GET", b"here", b"extra"]], 1),
    ([[b"PING"], [b"GET", b"here"]], 0),
    ([[b"GET", b"here"]] * 5, 5),
])
def test_a_run_stops_before_the_first_request_it_does_not_answer(db, resp, cmds, stop):
    short, s_server, s_client, _ = _twin(db, resp, False)
    got, size, j = short.get_run(s_client, [list(a) for a in cmds], 0, 1 << 20)
    want, g_server, g_client = _general(db, resp, False, cmds[:stop])
    assert (got, size, j) == (want, sum(map(len, want)), stop)
    assert s_server.stats == g_server.stats and s_client.commands == g_client.commands == stop


def test_a_run_ends_once_its_replies_reach_the_budget(db):
    short, _, client, _ = _twin(db, 2, False)
    cmds = [[b"GET", b"here"]] * 10                      # 11 bytes a reply
    assert short.get_run(client, cmds, 2, 30)[1:] == (33, 5)
    assert short.get_run(client, cmds, 9, 1)[1:] == (11, 10)
    assert short.get_run(client, cmds, 10, 1 << 20) == ([], 0, 10)
    assert client.commands == 4
