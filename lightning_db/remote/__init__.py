"""The native protocol: ``connect(url)`` to a ``NativeServer``.

``connect`` returns a ``RemoteDatabase`` with the methods and semantics of
``Database``, over a connection ``Pool`` to one or more servers;
``connect_async`` returns its asyncio variant. ``NativeServer`` serves any
database handle; ``python -m lightning_db.remote.server --data DIR`` runs
one standalone. The wire ops are in ``protocol.py``; zmq stays inside the
mailbox package.
"""

from __future__ import annotations

from typing import Any

from .aio import AsyncPool, AsyncRemoteDatabase, connect_async
from .client import RemoteBatch, RemoteDatabase, connect
from .pool import STRATEGIES, Pool
from .protocol import DEFAULT_ADDRESS, DEFAULT_PORT
from .views import RemoteSnapshot, RemoteTransaction

__all__ = [
    "connect",
    "connect_async",
    "RemoteDatabase",
    "RemoteBatch",
    "RemoteSnapshot",
    "RemoteTransaction",
    "AsyncRemoteDatabase",
    "Pool",
    "AsyncPool",
    "STRATEGIES",
    "NativeServer",
    "DEFAULT_ADDRESS",
    "DEFAULT_PORT",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: ``python -m lightning_db.remote.server`` runs
    # that module as __main__, and importing it here first would load it twice.
    if name == "NativeServer":
        from .server import NativeServer
        return NativeServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
