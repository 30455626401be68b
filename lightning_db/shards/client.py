"""``ShardedDatabase``: ``open(path, shards>=1)`` in the caller's process.

Runs in any caller process: attaches to the node that serves the directory
(starting it if none runs, see attach.py), builds ``ActorRef``s for the shard
workers' addresses and serves the Database API through ``ShardRouter``. On
attach it settles transactions a dead coordinator left in doubt
(``resolve_in_doubt``); ``close`` releases this caller's snapshots and
detaches, and the node exits once the last caller is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import psutil

from ..actors import ActorRef
from ..config import Config
from ..errors import DatabaseShutdown, InvalidArgument, LightningError, PeerLost, Timeout, TransientError
from ..storage.format import CURRENT
from .attach import SHARDS_FILE, attach
from .gate import CommitGate
from .node import published_path, read_node_file
from .ring import HashRing
from .resolve import DEFAULT_TIMEOUT, settle_gone
from .router import ShardRouter, _quiet_call, txid_pid

__all__ = ["ShardedDatabase", "check_layout"]


_WORKER_FIELDS = ("pid", "state", "restarts", "missed_heartbeats", "hang_kills", "last_exit")


def check_layout(path: str, shards: int) -> None:
    """An in-process database (``shards=0``: engine files at the top of the
    directory) and a sharded one (``SHARDS`` and ``shard-NNN/``) never share a
    directory: opening one as the other is refused before anything is written."""
    in_process = os.path.exists(os.path.join(path, CURRENT))
    sharded = os.path.exists(os.path.join(path, SHARDS_FILE))
    if shards and in_process:
        raise InvalidArgument(f"{path} holds an in-process database (opened with shards=0); "
                              f"open it with shards=0, not shards={shards}")
    if not shards and sharded:
        raise InvalidArgument(f"{path} holds a sharded database (see {SHARDS_FILE}); "
                              "open it with shards=None or its shard count, not shards=0")


def _coordinator_gone(txid: bytes) -> bool:
    pid = txid_pid(txid)
    return pid is None or not psutil.pid_exists(pid)


class ShardedDatabase(ShardRouter):
    """The Database API over the shard workers of a node. Any number of
    processes may hold one on the same path at once."""

    def __init__(self, path: str, shards: int | None, config: Config, timeout: float = 60.0) -> None:
        self._path = os.path.abspath(path)
        # The whole config goes to the node when this call starts it (its
        # restart and heartbeat settings, and the engine settings of the shards).
        self._session = attach(self._path, shards, config.to_dict(), timeout)
        try:
            # A caller that joins a running node shares the node's settings
            # (its limits and sync policy included), whatever it passed.
            if self._session.config is not None:
                known = {f.name for f in dataclasses.fields(Config)}
                config = Config.from_dict({k: v for k, v in self._session.config.items() if k in known})
            # fail_fast: an ask to a worker that is down fails at once (PeerLost)
            # and is retried with backoff; _on_retry asks the node why it is down.
            refs = [ActorRef(f"shard-{i}", addr, 0, fail_fast=True)
                    for i, addr in enumerate(self._session.addresses)]
            super().__init__(refs, HashRing(self._session.shards), config,
                             published=[published_path(self._session.runtime_dir, i) for i in range(len(refs))],
                             gate=CommitGate(self._session.runtime_dir))
            # Settle what callers that are gone left in doubt; a transaction
            # whose coordinator still runs is its own to finish (aborting it
            # here would fail a batch that did nothing wrong).
            # The decisions they left kept go too (resolve.py); the node does
            # the same for callers that die while it runs.
            settle_gone(refs, DEFAULT_TIMEOUT, _coordinator_gone, self.gate)
        except BaseException:
            self._session.detach()
            raise

    @property
    def path(self) -> str:
        return self._path

    def _on_retry(self, calls: int, exc: TransientError, delay: float) -> None:
        """A worker is down: fine while the node restarts it, final when the
        node shut down (restart intensity exceeded) or is gone."""
        super()._on_retry(calls, exc, delay)
        if isinstance(exc, PeerLost):
            self._node_gone(exc)
            try:
                self._session.request("ping")  # DatabaseShutdown (fatal) ends the retry here
            except TransientError:
                pass                           # a busy node: the retry goes on

    def _node_gone(self, exc: LightningError) -> None:
        """Raise DatabaseShutdown (fatal: reopen) for a lost connection or a
        call with no answer whose node is gone, or shut down (node.json says
        so: restart intensity exceeded): nothing restarts its workers, so the
        error would not pass by itself, as a transient one should."""
        if not isinstance(exc, (PeerLost, Timeout)):
            return
        if not psutil.pid_exists(self._session.node_pid):
            raise DatabaseShutdown(f"the node of {self._path} (pid {self._session.node_pid}) exited; "
                                   "open the database again") from exc
        info = read_node_file(self._path)
        if info is not None and info.get("pid") == self._session.node_pid and info.get("status") == "shutdown":
            raise DatabaseShutdown(f"the database at {self._path} shut down: {info.get('reason')}") from exc

    def _gave_up(self, exc: LightningError) -> None:
        self._node_gone(exc)

    def _node_request(self, op: str, timeout: float | None = None) -> Any:
        """A request to the node; a node that is gone or shut down is DatabaseShutdown."""
        try:
            return self._session.request(op) if timeout is None else self._session.request(op, timeout=timeout)
        except (PeerLost, Timeout) as exc:
            self._node_gone(exc)
            raise

    @contextlib.contextmanager
    def _unless_node_gone(self) -> Iterator[None]:
        """The steps that are not retried (two-phase commit, transaction
        commits) say DatabaseShutdown too when the node is gone."""
        try:
            yield
        except (PeerLost, Timeout) as exc:
            self._node_gone(exc)
            raise

    def _ask(self, shard: int, op: str, payload: Any = None) -> Any:
        with self._unless_node_gone():
            return super()._ask(shard, op, payload)

    def _two_phase(self, parts: dict[int, list[Any]]) -> None:
        with self._unless_node_gone():
            super()._two_phase(parts)

    def _tx_commit(self, *args: Any) -> None:
        with self._unless_node_gone():
            super()._tx_commit(*args)

    def checkpoint(self, path: str | os.PathLike[str], shards_file: bytes | None = None) -> dict[str, Any]:
        """Every shard into ``path/shard-NNN`` plus this directory's SHARDS
        description, so the copy opens as the same sharded database."""
        if shards_file is None:
            with open(os.path.join(self._path, SHARDS_FILE), "rb") as f:
                shards_file = f.read()
        return super().checkpoint(path, shards_file)

    def stats(self) -> dict[str, Any]:
        """The router's totals and per-shard engine stats, with each shard's
        worker added: pid, restarts, missed heartbeats, the placement it
        actually obtained (CPU, NUMA node, page size, with fallback reasons),
        and this caller's breaker for the shard. A shard that did not answer
        has its ``error`` instead of engine stats, and its worker and
        breaker all the same (the node answers for its workers)."""
        s = super().stats()
        node = self._node_request("stats")
        s["node"] = node
        s["shard_count"] = self._session.shards
        workers = self._workers(node)
        placements = [None if "error" in shard else _quiet_call(lambda ref=ref: ref.stats(self.timeout).result())
                      for ref, shard in zip(self.refs, s["shards"])]
        for i, shard in enumerate(s["shards"]):
            shard["worker"] = workers[i]
            p = placements[i]
            shard["placement"] = p.get("placement") if isinstance(p, dict) else None
            shard["breaker"] = dataclasses.asdict(self.breakers[i].stats())
        return s

    def _workers(self, node: dict[str, Any] | None = None, timeout: float | None = None) -> list[dict[str, Any]]:
        """The node's view of each shard's worker, in shard order (pid,
        state, restarts, missed heartbeats, hang kills, last exit): the
        node answers for them without asking the workers. *node*: its
        ``stats`` answer, where the caller has one; *timeout*: how long the
        node may take to answer (Timeout past it)."""
        node = self._node_request("stats", timeout) if node is None else node
        by_id = {w.get("id"): w for w in node.get("shards", [])}
        return [{k: by_id.get(f"shard-{i:03d}", {}).get(k) for k in _WORKER_FIELDS}
                for i in range(self._session.shards)]

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._session.detach()

    def __repr__(self) -> str:
        return f"<lightning_db.ShardedDatabase {self._path!r} shards={self._session.shards}>"
