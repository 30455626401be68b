"""Lightning DB: a persistent key-value database for Python.

The public surface is exactly ``__all__``; everything else is private.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .config import Config
from .db import Batch, Database, Snapshot, open
from .errors import (
    BackgroundError,
    CorruptionError,
    CriticalError,
    DatabaseClosed,
    DatabaseLocked,
    DatabaseShutdown,
    DiskFull,
    FatalError,
    InvalidArgument,
    IOFault,
    LightningError,
    RecoverableError,
    TransactionConflict,
    TransactionExpired,
    TransientError,
    WriteStalled,
)

if TYPE_CHECKING:
    from .remote import AsyncRemoteDatabase, RemoteDatabase

__version__ = "0.1.0"


def connect(url_or_urls: "str | Sequence[str]", **pool_options: Any) -> "RemoteDatabase":
    """A database served by native server(s) at *url_or_urls* ("tcp://HOST:PORT"
    or a list), with the methods of Database, over a connection pool (see
    lightning_db.remote; zmq is loaded on first use)."""
    from .remote import connect as _connect
    return _connect(url_or_urls, **pool_options)


async def connect_async(url_or_urls: "str | Sequence[str]", **pool_options: Any) -> "AsyncRemoteDatabase":
    """The asyncio variant of ``connect``."""
    from .remote import connect_async as _connect_async
    return await _connect_async(url_or_urls, **pool_options)


__all__ = [
    "open",
    "connect",
    "connect_async",
    "Database",
    "Batch",
    "Snapshot",
    "Config",
    "LightningError",
    "TransientError",
    "RecoverableError",
    "CriticalError",
    "FatalError",
    "InvalidArgument",
    "DatabaseLocked",
    "DatabaseClosed",
    "DatabaseShutdown",
    "IOFault",
    "DiskFull",
    "WriteStalled",
    "CorruptionError",
    "BackgroundError",
    "TransactionConflict",
    "TransactionExpired",
]
