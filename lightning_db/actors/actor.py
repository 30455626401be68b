"""The Actor base class and the actor loop (worker process, main thread).

An actor is an object living alone in its worker process. The loop takes
every envelope the mailbox has (``MailboxServer.recv`` drains the socket),
calls the hooks one message at a time, and sends the answers of a batch
together, one multipart message per asker:

    REQUEST  -> on_receive -> REPLY (or ERROR)
    TELL     -> on_receive -> nothing (a failure is counted, never sent)
    CONTROL  -> _ping (heartbeat), _stats (placement and counters),
                _stop (on_stop, answer, leave the loop), others -> on_control

Failures: an exception from ``on_receive`` goes through ``on_failure``,
whose result is what the asker gets (default: the exception itself, which
keeps its taxonomy class across the wire). An exception that is not a
Lightning DB error is a crash; the same message (op + payload) crashing
``poison_limit`` times in a row becomes a poison message, answered with
``PoisonMessage`` without calling ``on_receive`` again. A deliberate
``LightningError`` (a missing key, a corrupt block) is an answer, not a
crash. If ``on_failure`` itself raises, the actor lets it crash: the error
is sent, the loop ends without ``on_stop`` and the process exits with
``EXIT_CRASHED`` for the supervisor to act on.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from collections.abc import Sequence
from typing import Any

import msgpack

from ..errors import InvalidArgument, LightningError
from ..mailbox import Envelope, MailboxServer, MsgKind, Timeout
from ..mailbox.wire import CONTROL_PING, CONTROL_STATS, CONTROL_STOP
from .errors import ActorDead, PoisonMessage
from .placement import placement_report

__all__ = ["Actor", "ActorLoop", "EXIT_OK", "EXIT_CRASHED"]

EXIT_OK = 0
EXIT_CRASHED = 70         # on_failure raised: let it crash (EX_SOFTWARE)
MAX_POISON_RECORDS = 1024  # distinct failing messages remembered


class Actor:
    """Subclass and override the hooks. One instance per worker process;
    every hook runs on the loop's thread, one message at a time, so actor
    state needs no lock. Set by the runtime before ``on_start``: ``name``,
    ``address``."""

    poison_limit: int = 3
    """Crashes in a row of one message after which it is poison."""

    switch_interval: float | None = None
    """The worker process's GIL switch interval (``sys.setswitchinterval``),
    set before ``on_start``; None keeps Python's (5 ms). An actor whose own
    threads run long Python work beside the message loop sets it lower, so
    a message waits less for the GIL."""

    name: str = ""
    address: str = ""

    def on_start(self) -> None:
        """After the mailbox is bound, before the owner hears "ready". An
        exception here fails ``spawn`` with it."""

    def on_receive(self, op: str, payload: Any) -> Any:
        """Handle one REQUEST or TELL; the return value is the REPLY payload
        (ignored for a TELL) and must be msgpack-able."""
        raise InvalidArgument(f"actor {self.name!r} has no op {op!r}")

    def on_stop(self) -> None:
        """On ``_stop``, before the answer and the exit. Not run when the
        process is killed or its owner dies."""

    def on_control(self, op: str, payload: Any) -> Any:
        """Handle a CONTROL op other than the runtime's own (``_ping``,
        ``_stats``, ``_stop``), e.g. a checkpoint request; answered like an
        ask, never counted as a crash nor poisoned."""
        raise InvalidArgument(f"actor {self.name!r} has no control op {op!r}")

    def on_batch(self) -> None:
        """Before the messages of one receive are handled (all of them, then
        their answers go out)."""

    def pending(self) -> int:
        """How much work handlers of this batch left for ``before_replies``
        so far (a count that grows; the loop compares it around each
        message)."""
        return 0

    def before_replies(self) -> BaseException | None:
        """After the batch's messages, before any answer from the first one
        that left work (``pending`` grew) goes out: do that work once for
        all of them (a shard: one fsync for every write that waits for one:
        group commit). An exception returned is the answer of each message
        that left work; the others after it are answered as they were."""
        return None

    def on_failure(self, exc: Exception, op: str, payload: Any) -> BaseException:
        """After ``on_receive`` raised *exc*: return the exception the asker
        receives (default *exc*). Raise to let the process crash."""
        return exc

    def stats(self) -> dict[str, Any]:
        """The actor's own counters for ``_stats`` (plain data, no I/O)."""
        return {}

    def segments(self) -> Sequence[mmap.mmap]:
        """Shared segments whose page size and NUMA binding ``_stats``
        reports (what the kernel actually gave them)."""
        return ()


def _message_key(op: str, payload: Any) -> tuple[str, bytes]:
    packed = msgpack.packb(payload, use_bin_type=True)
    return op, hashlib.blake2b(packed, digest_size=16).digest()


class ActorLoop:
    """Runs *actor* on *server* until ``_stop`` (worker process, main thread).
    ``run`` returns the process exit code."""

    def __init__(self, actor: Actor, server: MailboxServer, *, requested_cpu: int | None = None,
                 placement_notes: dict[str, str] | None = None, poll_interval: float = 1.0) -> None:
        self.actor = actor
        self.server = server
        self.requested_cpu = requested_cpu
        self.placement_notes = placement_notes or {}
        self.poll_interval = poll_interval
        self.stopping = False
        self.exit_code = EXIT_OK
        self.beats = self.handled = self.failed = self.poisoned = self.expired = self.unexpected = 0
        self._failures: dict[tuple[str, bytes], int] = {}   # message key -> crashes in a row
        self._failing_ops: dict[str, int] = {}               # op -> keys of it in _failures

    def run(self) -> int:
        server, handle, actor = self.server, self._handle, self.actor
        while not self.stopping:
            batch = server.recv(self.poll_interval)
            if not batch:
                continue
            actor.on_batch()
            # (identity, request, answer, left work) in order; from *held*
            # on, answers wait for before_replies (they may tell of work
            # not done yet: a decision not yet durable).
            answers: list[tuple[bytes, Envelope, Envelope, bool]] = []
            held = None
            for identity, env in batch:
                before = actor.pending()
                if self.stopping:
                    answer = (env.error(ActorDead(f"actor {actor.name!r} is stopping"))
                              if env.kind in (MsgKind.REQUEST, MsgKind.CONTROL) else None)
                else:
                    answer = handle(env)
                left = actor.pending() != before
                if left and held is None:
                    held = len(answers)
                if answer is not None:
                    answers.append((identity, env, answer, left))
            if held is None:
                self._reply(answers)
                continue
            self._reply(answers[:held])
            failed = actor.before_replies()
            rest = answers[held:]
            if failed is not None:
                rest = [(i, env, env.error(failed) if left else a, left) for i, env, a, left in rest]
            self._reply(rest)
        return self.exit_code

    def _reply(self, answers: list[tuple[bytes, Envelope, Envelope, bool]]) -> None:
        """Send *answers*, each peer's in one go, in order."""
        per: dict[bytes, list[Envelope]] = {}
        for identity, _, answer, _ in answers:
            per.setdefault(identity, []).append(answer)
        for identity, envs in per.items():
            self.server.reply_many(identity, envs)

    def _handle(self, env: Envelope) -> Envelope | None:
        kind = env.kind
        if kind is MsgKind.CONTROL:
            return self._control(env)
        ask = kind is MsgKind.REQUEST
        if not ask and kind is not MsgKind.TELL:
            self.unexpected += 1        # a stray REPLY/ERROR: answering it could ping-pong
            return None
        if ask and env.deadline and env.deadline < time.time():
            self.expired += 1
            return env.error(Timeout(f"deadline of {env.op!r} passed before actor {self.actor.name!r} got to it"))
        op, payload = env.op, env.payload
        # Messages are only fingerprinted for ops that have crashed before, so
        # the hot path pays nothing. (A handler that mutates its payload before
        # crashing changes the first fingerprint; the message is then merely
        # run once more than poison_limit, never wrongly refused.)
        key = None
        if op in self._failing_ops:
            key = _message_key(op, payload)
            if self._failures.get(key, 0) >= self.actor.poison_limit:
                self.poisoned += 1
                return env.error(PoisonMessage(
                    f"{op!r} with this payload made actor {self.actor.name!r} fail "
                    f"{self.actor.poison_limit} times in a row; it is not run again")) if ask else None
        try:
            result = self.actor.on_receive(op, payload)
        except Exception as exc:
            self.failed += 1
            if not isinstance(exc, LightningError):
                self._count_crash(key or _message_key(op, payload))
            try:
                answer = self.actor.on_failure(exc, op, payload)
            except Exception as crash:  # let it crash
                answer, self.stopping, self.exit_code = crash, True, EXIT_CRASHED
            return env.error(answer) if ask else None
        self.handled += 1
        if key is not None and key in self._failures:
            self._forget(key)
        return env.reply(result) if ask else None

    def _count_crash(self, key: tuple[str, bytes]) -> None:
        if key not in self._failures:
            if len(self._failures) >= MAX_POISON_RECORDS:
                self._forget(next(iter(self._failures)))
            self._failing_ops[key[0]] = self._failing_ops.get(key[0], 0) + 1
            self._failures[key] = 0
        self._failures[key] += 1

    def _forget(self, key: tuple[str, bytes]) -> None:
        del self._failures[key]
        left = self._failing_ops[key[0]] - 1
        if left:
            self._failing_ops[key[0]] = left
        else:
            del self._failing_ops[key[0]]

    def _control(self, env: Envelope) -> Envelope:
        op = env.op
        try:
            if op == CONTROL_PING:
                self.beats += 1
                return env.reply({"pid": os.getpid(), "beat": self.beats, "handled": self.handled})
            if op == CONTROL_STATS:
                return env.reply(self.stats())
            if op == CONTROL_STOP:
                self.stopping = True
                self.actor.on_stop()
                return env.reply(True)
            return env.reply(self.actor.on_control(op, env.payload))
        except Exception as exc:
            return env.error(exc)

    def stats(self) -> dict[str, Any]:
        """Placement actually obtained, loop and mailbox counters, and the
        actor's own stats."""
        placement = placement_report(self.requested_cpu, self.actor.segments())
        for field, note in self.placement_notes.items():
            placement[field] = note if placement.get(field) is None else f"{note}; {placement[field]}"
        return {
            "name": self.actor.name,
            "address": self.actor.address,
            "pid": os.getpid(),
            "placement": placement,
            "counters": {"beats": self.beats, "handled": self.handled, "failed": self.failed,
                         "poisoned": self.poisoned, "expired": self.expired, "unexpected": self.unexpected},
            "mailbox": self.server.stats(),
            "actor": self.actor.stats(),
        }
