"""The error taxonomy: every exception Lightning DB raises belongs to one class.

The supervisor (and any caller) acts on the class alone, never on message text:

    TransientError    retry with exponential backoff and full jitter
    RecoverableError  circuit breaker per shard; fail fast while open
    CriticalError     restore the shard from its checkpoint; quarantine bad files
    FatalError        shut the database down; callers get DatabaseShutdown

Mistakes by the caller are not faults: ``InvalidArgument`` is raised before
anything is written, and retrying the same call never helps.

OS errors are wrapped at the storage boundary (``IOFault``/``DiskFull``);
nothing above the storage layer sees a bare ``OSError`` from the engine.
"""

from __future__ import annotations

__all__ = [
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
    "CircuitOpen",
    "RestartIntensityExceeded",
    "TransactionConflict",
    "classify",
]


class LightningError(Exception):
    """Base of every exception raised by Lightning DB."""


# --- the four fault classes -------------------------------------------------


class TransientError(LightningError):
    """A fault that is expected to pass by itself; retrying the call helps."""


class RecoverableError(LightningError):
    """A fault that persists for a while (a failing shard, a full disk).

    Retrying at once does not help; a circuit breaker fails fast until the
    condition clears. Reads usually keep working when writes cannot.
    """


class CriticalError(LightningError):
    """Data or a process is damaged: the shard must be restored from its last
    checkpoint plus WAL replay. Retrying without a restore never helps."""


class FatalError(LightningError):
    """The database cannot go on (manifest unreadable, data directory gone,
    restart intensity exceeded): the whole tree shuts down."""


# --- the caller's mistakes ---------------------------------------------------


class InvalidArgument(LightningError, ValueError, TypeError):
    """Wrong type, empty or oversized key or value, or a bad option.

    Raised before anything is written; the message names the problem and the
    limit. It subclasses both ValueError and TypeError so that ordinary Python
    handlers catch it. Retrying the same call never helps.
    """


# --- concrete faults ---------------------------------------------------------


class DatabaseLocked(RecoverableError):
    """Another process (or another open handle in this process) holds the
    directory's lock file. Retrying helps only after that holder closes."""


class DatabaseClosed(FatalError):
    """The handle was closed by its owner; every later call gets this."""


class DatabaseShutdown(FatalError):
    """The database shut down after a fatal fault; every caller gets this.
    Reopen once the cause (logged with the alert) is fixed."""


class IOFault(RecoverableError):
    """The OS reported an I/O error (EIO and friends). The operation that met
    it was not acknowledged. After a failed fsync the engine refuses further
    writes until it is reopened (a failed fsync is never retried: the kernel
    may already have dropped the dirty pages); reads keep working."""


class DiskFull(IOFault):
    """ENOSPC or EDQUOT: the write was not acknowledged. Free space and retry;
    the breaker keeps callers from hammering a full disk."""


class WriteStalled(TransientError):
    """Writes waited longer than the configured stall timeout for background
    flushes or compactions to catch up. Retrying later helps."""


class CorruptionError(CriticalError):
    """A checksum, magic number or format version did not match. Never
    returned as data: the read fails instead. The damaged file is named."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message if path is None else f"{message} (file {path})")
        self.path = path


class BackgroundError(CriticalError):
    """A background flush or compaction failed for a reason that is not an
    I/O fault or corruption (those keep their own class). Writes are refused
    until the database is reopened; reads keep working."""


class CircuitOpen(RecoverableError):
    """Raised instead of making a call while a breaker is open (or half-open
    with all its probe calls in flight). Nothing was sent. ``retry_after``
    is how long until the breaker lets a probe through (0 when half-open);
    retrying before then fails the same way."""

    def __init__(self, message: str, *, breaker: str = "", retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.breaker = breaker
        self.retry_after = retry_after


class RestartIntensityExceeded(FatalError):
    """A supervisor saw more than ``intensity`` restarts within ``period``
    seconds, stopped all its children and gave up. Raised (or passed to
    ``on_escalate``) at the root of the tree; the database shuts down.
    Retrying never helps: the cause is in the last exit reason it names."""

    def __init__(self, message: str, *, supervisor: str = "", child: str = "",
                 reason: object = None) -> None:
        super().__init__(message)
        self.supervisor = supervisor
        self.child = child
        self.reason = reason


class TransactionConflict(TransientError):
    """An optimistic transaction lost a conflict; nothing was written.
    Retrying the whole transaction helps."""


_CLASSES = (InvalidArgument, TransientError, RecoverableError, CriticalError, FatalError)


def classify(exc: BaseException) -> type[LightningError] | None:
    """Return the taxonomy class of *exc* (one of the four fault classes or
    InvalidArgument), or None for an exception that is not ours."""
    for cls in _CLASSES:
        if isinstance(exc, cls):
            return cls
    return None
