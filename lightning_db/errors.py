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
    "OutOfOrder",
    "CorruptionError",
    "BackgroundError",
    "CircuitOpen",
    "RestartIntensityExceeded",
    "MalformedFrame",
    "RemoteError",
    "Timeout",
    "PeerLost",
    "MailboxBusy",
    "MailboxError",
    "MailboxClosed",
    "ActorStartError",
    "ActorDead",
    "PoisonMessage",
    "PlacementRefused",
    "TransactionConflict",
    "TransactionExpired",
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


class OutOfOrder(TransientError):
    """A pipelined write reached its shard before the write sent just ahead
    of it was applied (that one was lost on the way: a worker restart), so
    it was not applied: the sender sends it again once the one ahead is
    settled. Never seen by callers of the public API."""


class CorruptionError(CriticalError):
    """A checksum, magic number or format version did not match. Never
    returned as data: the read fails instead. The damaged file is named."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message if path is None else f"{message} (file {path})")
        self.path = path


class BackgroundError(CriticalError):
    """Background work failed for a reason that is not an I/O fault or
    corruption (those keep their own class): a flush or compaction (writes
    are refused until the database is reopened; reads keep working), or a
    caller's pipelined-write sender (raised at the next barrier)."""


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


class MalformedFrame(InvalidArgument):
    """A frame that is not a valid envelope (wrong version byte, not msgpack,
    wrong shape or types, too large), or a message that cannot be framed
    (a payload msgpack cannot encode). Raised by ``decode``/``encode``; a
    server answers such a frame with an ERROR envelope and keeps serving.
    Resending the same bytes never helps.

    ``envelope_id`` is the id of the damaged envelope when it could still be
    read (so the asker's future fails at once instead of timing out), else 0.
    """

    def __init__(self, message: str, envelope_id: int = 0) -> None:
        super().__init__(message)
        self.envelope_id = envelope_id


class RemoteError(CriticalError):
    """The other side raised an exception this process does not know (not a
    registered Lightning DB class): usually a bug in an actor's handler, whose
    state may now be inconsistent, hence critical. ``remote_name`` is the
    remote class name; the message is ``"<remote name>: <remote message>"``."""

    def __init__(self, message: str, remote_name: str | None = None) -> None:
        super().__init__(message)
        self.remote_name = remote_name


class Timeout(TransientError):
    """A request's deadline passed before its reply arrived (the peer was busy
    or gone). A reply arriving later is dropped. Retrying with backoff helps
    while the peer is merely busy; the supervisor's heartbeats tell a dead
    peer apart."""


class PeerLost(TransientError):
    """The connection to the peer dropped (its process died or closed the
    socket) while this request waited for its answer; the request may or may
    not have been handled. Requests sent afterwards are queued until the peer
    (a restarted one at the same address) is back. Retrying an idempotent
    request with backoff helps."""


class MailboxBusy(TransientError):
    """zmq would have blocked (EAGAIN: a queue at its high-water mark) or a
    call was interrupted (EINTR). Nothing was sent; retrying helps."""


class MailboxError(RecoverableError):
    """Any other zmq failure (cannot bind or connect, address in use, socket
    in a bad state). ``errno`` is zmq's error number. Retrying at once rarely
    helps; the breaker backs off."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class MailboxClosed(FatalError):
    """The client or server was closed by its owner (or belongs to the process
    this one was forked from); every later call gets this and requests still
    in flight fail with it. Open a new one."""


class ActorStartError(CriticalError):
    """An actor's process died, hung or failed (with an error that has no
    taxonomy class of its own) before it was ready. Raised by ``spawn`` in
    the owner; ``exitcode`` is the child's exit status (negative: killed by
    that signal; None: it had to be killed after the start deadline)."""

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class ActorDead(CriticalError):
    """The actor's process is gone or stopping: asks on a ref that was
    stopped or killed raise it, requests in flight at that moment fail with
    it, and an actor answers with it what arrives after ``_stop``. The
    supervisor restarts the actor; retrying the same ref never helps."""


class PoisonMessage(RecoverableError):
    """The same message (same op and payload) made ``on_receive`` raise an
    unexpected exception ``Actor.poison_limit`` times in a row; the actor now
    answers it with this error without running it again (as Thespian returns
    a poison message). The actor itself is healthy and keeps serving other
    messages, so this is not critical; retrying the same message never
    helps."""


class PlacementRefused(RecoverableError):
    """The OS refused to pin the process to a CPU it allows in principle (a
    cpuset changed under us, or no permission). Raised by ``placement.pin``;
    a worker at start catches it and runs unpinned, and its placement report
    says so."""


class TransactionConflict(TransientError):
    """An optimistic transaction lost a conflict; nothing was written.
    Retrying the whole transaction helps."""


class TransactionExpired(TransactionConflict):
    """The transaction stayed open past ``transaction_max_age`` seconds (or
    more than ``transaction_max_keys`` keys were written meanwhile), so the
    shards stopped tracking its snapshot; nothing was written. Retrying the
    whole transaction helps."""


_CLASSES = (InvalidArgument, TransientError, RecoverableError, CriticalError, FatalError)


def classify(exc: BaseException) -> type[LightningError] | None:
    """Return the taxonomy class of *exc* (one of the four fault classes or
    InvalidArgument), or None for an exception that is not ours."""
    for cls in _CLASSES:
        if isinstance(exc, cls):
            return cls
    return None
