"""Errors raised at the mailbox boundary, and the registry of exception
classes that may be rebuilt from an ERROR envelope (any process).

Each class belongs to one taxonomy class of ``lightning_db.errors``. They live
in ``lightning_db.errors`` with the rest of the taxonomy; their names are part of the wire
format (an ERROR envelope carries the class name), so never rename one.

The registry is what makes ``raise_remote`` safe: a name coming off the wire
is only ever looked up in this table of known classes, never evaluated.
"""

from __future__ import annotations

from .. import errors as _errors
from ..errors import (
    InvalidArgument,
    LightningError,
    MailboxBusy,
    MailboxClosed,
    MailboxError,
    MalformedFrame,
    PeerLost,
    RemoteError,
    Timeout,
)

__all__ = [
    "MalformedFrame",
    "RemoteError",
    "Timeout",
    "PeerLost",
    "MailboxBusy",
    "MailboxError",
    "MailboxClosed",
    "register_error",
    "lookup_error",
]


# --- the registry of rebuildable classes -------------------------------------------------

_REGISTRY: dict[str, type[LightningError]] = {}


def register_error(cls: type[LightningError]) -> type[LightningError]:
    """Allow *cls* to be rebuilt by name from an ERROR envelope. Usable as a
    class decorator. Only Lightning DB exceptions can be registered, and a
    name can only ever mean one class."""
    if not (isinstance(cls, type) and issubclass(cls, LightningError)):
        raise InvalidArgument(f"only LightningError subclasses can be registered, not {cls!r}")
    known = _REGISTRY.get(cls.__name__)
    if known is not None and known is not cls:
        raise InvalidArgument(f"error name {cls.__name__!r} is already registered for {known!r}")
    _REGISTRY[cls.__name__] = cls
    return cls


def lookup_error(name: str) -> type[LightningError] | None:
    """The registered class called *name*, or None."""
    return _REGISTRY.get(name)


for _name in _errors.__all__:
    _obj = getattr(_errors, _name)
    if isinstance(_obj, type) and issubclass(_obj, LightningError):
        register_error(_obj)
register_error(LightningError)
del _name, _obj
