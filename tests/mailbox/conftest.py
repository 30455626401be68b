"""Fixtures of the mailbox tests: a MailboxServer served by a thread of
the test process, and a client connected to it."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest
import zmq

from lightning_db import errors
from lightning_db.mailbox import MailboxClient, MailboxServer, MsgKind

_names = itertools.count()


def silent_router(address: str) -> zmq.Socket:
    """A raw ROUTER bound to *address* that the test reads itself (and
    never answers from): a peer that takes requests and goes away."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 30_000)
    router.bind(address)
    return router


def next_name() -> int:
    """A number for a socket path unique in this test process."""
    return next(_names)


class ServedMailbox:
    """A MailboxServer answered by one thread of this process.

    ops: echo -> payload; block -> waits for `release`, then True;
    hold -> answers nothing until `payload` requests arrived, then all in
    reverse order; raise [name, message] -> that lightning_db.errors class.
    TELLs are recorded in `tells`."""

    def __init__(self, address: str) -> None:
        self.server = MailboxServer(address)
        self.address = self.server.address
        self.release = threading.Event()
        self.stopping = threading.Event()
        self.tells: list[object] = []
        self.batch_sizes: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        server, held = self.server, []
        while not self.stopping.is_set():
            batch = server.recv(0.05)
            if batch:
                self.batch_sizes.append(len(batch))
            for identity, env in batch:
                if env.kind is MsgKind.TELL:
                    self.tells.append(env.payload)
                elif env.op == "echo":
                    server.reply(identity, env.reply(env.payload))
                elif env.op == "block":
                    self.release.wait(60)
                    server.reply(identity, env.reply(True))
                elif env.op == "hold":
                    held.append((identity, env))
                    if len(held) == env.payload:
                        for who, e in reversed(held):
                            server.reply(who, e.reply(e.id))
                        held.clear()
                elif env.op == "raise":
                    server.reply_error(identity, env, getattr(errors, env.payload[0])(env.payload[1]))
        server.close()

    def stop(self) -> None:
        self.release.set()
        self.stopping.set()
        self.thread.join(30)


@pytest.fixture
def served(runtime_dir) -> Iterator[ServedMailbox]:
    box = ServedMailbox(f"ipc://{runtime_dir}/s{next_name()}.sock")
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture
def client(served) -> Iterator[MailboxClient]:
    c = MailboxClient(served.address)
    try:
        yield c
    finally:
        c.close()
