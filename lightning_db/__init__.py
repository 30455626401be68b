"""Lightning DB: a persistent key-value database for Python.

The public surface is exactly ``__all__``; everything else is private.
"""

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

__version__ = "0.1.0"

__all__ = [
    "open",
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
