"""What an operation's exception means for the history and the live view.

Runs in the client processes (``outcome``, ``taxonomy``) and in the harness
(``taxonomy`` names only).

The rule the checkers depend on: an operation is recorded "fail" only when
it certainly had no effect; otherwise "info" (unknown). So:

- a read that raised is "fail" (reads have no effect);
- a write or delete that raised ``TransactionConflict`` or ``InvalidArgument``
  (nothing was written), or a Redis ``WATCH`` abort, is "fail" (but not
  redis-py's WatchError for a connection lost inside the WATCH block: its
  EXEC may have run);
- a write that raised anything else (``Timeout``, ``PeerLost``,
  ``DatabaseShutdown``, a dropped connection, a ``TRYAGAIN`` reply: the
  request may have reached the shard) is "info".

Errors are counted by taxonomy class (``lightning_db.errors.classify``):
TransientError, RecoverableError, CriticalError, FatalError, InvalidArgument.
Redis error replies carry the class name (``TRYAGAIN PeerLost: ...``,
``ERR CircuitOpen: ...``; server/dispatch.py), which is mapped back; an
error that is not the database's (a dropped connection, an OSError) counts
as ``connection`` or ``other``.
"""

from __future__ import annotations

from .. import errors as _errors
from ..errors import InvalidArgument, TransactionConflict, classify

__all__ = ["TAXONOMY", "outcome", "reopen_needed", "taxonomy"]

TAXONOMY = ("TransientError", "RecoverableError", "CriticalError", "FatalError", "InvalidArgument",
            "connection", "other")
_BASES = (_errors.InvalidArgument, _errors.TransientError, _errors.RecoverableError,
          _errors.CriticalError, _errors.FatalError)


def _redis_exceptions() -> tuple[type, type, type, type]:
    """(ConnectionError, TimeoutError, ResponseError, WatchError) of redis-py,
    or placeholders when it is not installed (embedded runs need none)."""
    try:
        from redis import exceptions as rx
        return rx.ConnectionError, rx.TimeoutError, rx.ResponseError, rx.WatchError
    except ImportError:                      # pragma: no cover - redis is a test dependency
        class _Never(Exception):
            pass
        return _Never, _Never, _Never, _Never


def _named(word: str) -> type | None:
    """The taxonomy base of the Lightning DB exception class *word* names."""
    cls = getattr(_errors, word.rstrip(":"), None)
    if isinstance(cls, type) and issubclass(cls, _errors.LightningError):
        for base in _BASES:
            if issubclass(cls, base):
                return base
    return None


def _reply_class(exc: BaseException) -> type | None:
    """The taxonomy class of a Redis error reply of the server. redis-py
    keeps the error code in the text (``ERR CircuitOpen: ...``) except for
    the codes it has classes for (``TRYAGAIN``: TryAgainError, whose text
    starts with the class name)."""
    words = str(exc).split()
    kind = type(exc).__name__
    if kind == "TryAgainError":
        return (_named(words[0]) if words else None) or _errors.TransientError
    if not words:
        return None
    if len(words) > 1 and (found := _named(words[1])) is not None:
        return found
    if words[0] == "TRYAGAIN":
        return _errors.TransientError
    if words[0] in ("ERR", "WRONGTYPE"):
        return _errors.InvalidArgument     # a plain ERR is the caller's mistake (dispatch.db_error)
    return None


def _usage_reply(exc: BaseException) -> bool:
    """A reply saying the command did not run: a plain ``ERR``/``WRONGTYPE``
    (bad arguments, InvalidArgument), not ``ERR <Class>: ...`` (a fault
    while running it), or EXECABORT (a transaction discarded before EXEC)."""
    if type(exc).__name__ == "ExecAbortError":
        return True
    words = str(exc).split()
    if not words or words[0] not in ("ERR", "WRONGTYPE"):
        return False
    return words[0] == "WRONGTYPE" or len(words) < 2 or not words[1].endswith(":") or \
        _reply_class(exc) is _errors.InvalidArgument


def _lost_watch(exc: BaseException) -> bool:
    """redis-py's WatchError for a connection that died inside a WATCH
    block ("A ConnectionError occurred while watching ..."): not a refused
    EXEC; the EXEC may have run."""
    return "occurred while watching" in str(exc)


def taxonomy(exc: BaseException) -> str:
    """The name of *exc*'s taxonomy class, ``connection`` or ``other``."""
    cls = classify(exc)
    if cls is not None:
        return cls.__name__
    conn, timeout, response, watch = _redis_exceptions()
    if isinstance(exc, watch):
        # a lost optimistic race, like TransactionConflict, or a dropped connection
        return "connection" if _lost_watch(exc) else "TransientError"
    if isinstance(exc, response):
        found = _reply_class(exc)
        return found.__name__ if found is not None else "other"
    if isinstance(exc, (conn, timeout, ConnectionError, TimeoutError, EOFError)):
        return "connection"
    return "other"


def outcome(f: str, exc: BaseException) -> str:
    """"fail" or "info" for operation *f* ("read", "write", "delete", "txn")
    that raised *exc* (see the module docstring)."""
    if f == "read":
        return "fail"
    if isinstance(exc, (TransactionConflict, InvalidArgument)):
        return "fail"
    _, _, response, watch = _redis_exceptions()
    if isinstance(exc, watch):
        return "info" if _lost_watch(exc) else "fail"
    if isinstance(exc, response) and _usage_reply(exc):
        return "fail"                      # the command was refused before it ran
    return "info"


def reopen_needed(exc: BaseException) -> bool:
    """Whether the client's handle or connection is broken for good after
    *exc*: a fatal error (the database shut down, the handle closed), a
    dropped connection, or an exception that is not the database's."""
    cls = classify(exc)
    if cls is not None:
        return cls is _errors.FatalError
    _, _, response, watch = _redis_exceptions()
    if isinstance(exc, watch):
        return _lost_watch(exc)
    return not isinstance(exc, response)
