"""The actor loop's group commit (actors/actor.py): the messages of one
receive are handled, the work they left is done once (``before_replies``),
and no answer from the first message that left work goes out before it."""

from __future__ import annotations

from typing import Any

from lightning_db.actors.actor import Actor, ActorLoop
from lightning_db.errors import IOFault
from lightning_db.mailbox.envelope import Envelope, MsgKind


class _Server:
    """One receive of *batch*, then the loop stops; records what goes out."""

    def __init__(self, batch: list[tuple[bytes, Envelope]], log: list[Any]) -> None:
        self.batch, self.log = batch, log
        self.loop: ActorLoop | None = None

    def recv(self, timeout: float | None) -> list[tuple[bytes, Envelope]]:
        batch, self.batch = self.batch, []
        if not batch:
            assert self.loop is not None
            self.loop.stopping = True
        return batch

    def reply_many(self, identity: bytes, envs: list[Envelope]) -> None:
        self.log.extend((identity, e.id, e.kind) for e in envs)


class _Durable(Actor):
    """"durable" leaves work for before_replies; "plain" does not."""

    def __init__(self, log: list[Any], fail: BaseException | None = None) -> None:
        self.log, self.fail, self.work = log, fail, 0
        self.name = "durable"

    def on_receive(self, op: str, payload: Any) -> Any:
        if op == "durable":
            self.work += 1
        return op

    def pending(self) -> int:
        return self.work

    def before_replies(self) -> BaseException | None:
        self.log.append(("done", self.work))
        self.work = 0
        return self.fail


def _run(ops: list[tuple[bytes, str]], fail: BaseException | None = None) -> list[Any]:
    log: list[Any] = []
    batch = [(who, Envelope(i, MsgKind.REQUEST, op, 0.0, None, None)) for i, (who, op) in enumerate(ops)]
    server = _Server(batch, log)
    loop = ActorLoop(_Durable(log, fail), server)      # type: ignore[arg-type]
    server.loop = loop
    loop.run()
    return log


def test_answers_from_the_first_message_that_left_work_wait_for_it_once():
    log = _run([(b"a", "plain"), (b"b", "plain"), (b"a", "durable"), (b"b", "plain"), (b"a", "durable")])
    done = log.index(("done", 2))                      # one call for both messages' work
    assert sorted(log[:done]) == [(b"a", 0, MsgKind.REPLY), (b"b", 1, MsgKind.REPLY)]
    assert sorted(log[done + 1:]) == [(b"a", 2, MsgKind.REPLY), (b"a", 4, MsgKind.REPLY), (b"b", 3, MsgKind.REPLY)]


def test_no_work_left_no_call():
    log = _run([(b"a", "plain"), (b"a", "plain")])
    assert log == [(b"a", 0, MsgKind.REPLY), (b"a", 1, MsgKind.REPLY)]


def test_failed_work_is_the_answer_of_the_messages_that_left_it():
    log = _run([(b"a", "plain"), (b"a", "durable"), (b"a", "plain"), (b"b", "durable")], fail=IOFault("fsync failed"))
    assert log[0] == (b"a", 0, MsgKind.REPLY) and log[1] == ("done", 2)
    assert sorted(log[2:]) == [(b"a", 1, MsgKind.ERROR), (b"a", 2, MsgKind.REPLY), (b"b", 3, MsgKind.ERROR)]
