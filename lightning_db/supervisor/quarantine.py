"""Quarantine: move a corrupt file aside, never delete it.

Which process runs what: the process that restores a shard (its worker, or
the supervisor process for a shard that cannot start) calls ``quarantine``
after the engine that used the file is closed, before the restore.

A quarantined file is renamed into ``<data dir>/quarantine/`` under a UTC
timestamped name (``20240501T120000.123456Z-000042.ldb``), so its bytes stay
for post-mortems and nothing is copied. Beside it goes a small JSON note
(``<name>.note.json``) saying where it came from and why. Both directories
are fsynced afterwards, so after a crash the file is in exactly one of the
two places and a note written is a note kept.

This module uses ``os`` directly rather than the storage layer's filesystem
seam: the supervisor must not import ``storage`` (DESIGN.md §1), and a
rename plus two fsyncs is all it needs.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InvalidArgument, IOFault

QUARANTINE_DIR = "quarantine"      # the folder's name inside a data directory
NOTE_SUFFIX = ".note.json"
_TMP_SUFFIX = ".tmp"


class Quarantined(NamedTuple):
    path: Path
    note: dict[str, Any] | None     # None when the note is missing or unreadable


def quarantine(path: str | os.PathLike[str], quarantine_dir: str | os.PathLike[str], reason: object,
               *, clock: Callable[[], float] = time.time) -> Path:
    """Move the file at *path* into *quarantine_dir* (created if missing; it
    must be on the same filesystem) and write its note; return the new path.
    *reason* is a string or the exception that condemned the file.

    Raises InvalidArgument when *path* is not a regular file or the folder is
    on another filesystem, IOFault when the OS fails the rename or a sync.
    """
    src, qdir = Path(path), Path(quarantine_dir)
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise InvalidArgument(f"cannot quarantine {src}: no such file") from None
    except OSError as exc:
        raise IOFault(f"cannot quarantine {src}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"cannot quarantine {src}: not a regular file")
    now = clock()
    try:
        _make_dirs(qdir)
        dst = _free_name(qdir, _stamp(now) + "-" + src.name)
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise InvalidArgument(f"cannot quarantine {src}: {qdir} is on another filesystem") from exc
        raise IOFault(f"cannot quarantine {src} into {qdir}: {exc}") from exc
    note = {
        "original_path": os.fspath(src.resolve().parent / src.name),
        "quarantined_path": os.fspath(dst),
        "reason": str(reason),
        "reason_type": type(reason).__name__ if isinstance(reason, BaseException) else None,
        "time": _stamp(now),
        "unix_time": now,
        "size": st.st_size,
        "pid": os.getpid(),
    }
    try:
        _write_note(dst.with_name(dst.name + NOTE_SUFFIX), note)
        _fsync_dir(qdir)             # the new name (and the note) first,
        _fsync_dir(src.parent)       # then the old name's removal
    except OSError as exc:
        raise IOFault(f"quarantined {src} as {dst}, but syncing failed: {exc}") from exc
    return dst


def list_quarantined(quarantine_dir: str | os.PathLike[str]) -> list[Quarantined]:
    """Every quarantined file in *quarantine_dir*, oldest first, with its
    note. A missing folder holds none."""
    qdir = Path(quarantine_dir)
    try:
        names = sorted(os.listdir(qdir))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.endswith((NOTE_SUFFIX, _TMP_SUFFIX)):
            continue
        note_path = qdir / (name + NOTE_SUFFIX)
        try:
            note = json.loads(note_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            note = None
        out.append(Quarantined(qdir / name, note))
    return out


def _stamp(t: float) -> str:
    micros = round(t * 1_000_000)
    secs, frac = divmod(micros, 1_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs)) + f".{frac:06d}Z"


def _free_name(qdir: Path, name: str) -> Path:
    """*name*, or ``<stamp>.<n>-<rest>`` when taken (same file, same
    microsecond; it sorts after the first); nothing is ever overwritten."""
    candidate, n = qdir / name, 0
    stamp, _, rest = name.partition("-")
    while os.path.lexists(candidate) or os.path.lexists(f"{candidate}{NOTE_SUFFIX}"):
        n += 1
        candidate = qdir / f"{stamp}.{n:03d}-{rest}"
    return candidate


def _make_dirs(qdir: Path) -> None:
    """Create *qdir* (and missing parents), fsyncing each new entry's parent."""
    if qdir.is_dir():
        return
    _make_dirs(qdir.parent)
    try:
        os.mkdir(qdir)
    except FileExistsError:
        return
    _fsync_dir(qdir.parent)


def _write_note(path: Path, note: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    data = (json.dumps(note, indent=2, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
