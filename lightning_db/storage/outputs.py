"""The tables one flush or compaction writes, one after another.

``TableOutputs`` opens the next table when a record needs one (``writer``),
finishes the open one at a cut (``cut``) and at the end (``close``: the
files and the counters), and on a failure (``fail``, or leaving its ``with``
block by an exception) abandons the open one and, for a LightningError (a
full disk), removes the finished ones too: the manifest never named them,
they only hold space. Used by both merges of ``compaction.py`` (record by record)
and ``merge_bulk.py`` (a chunk at a time).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from ..errors import LightningError
from .format import table_name
from .table_builder import TableWriter
from .version import FileMeta

__all__ = ["TableOutputs", "discard", "finish"]


class TableOutputs:
    def __init__(self, fs: Any, dirname: str, config: Any, new_number: Callable[[], int]) -> None:
        self.fs, self.dirname, self.config, self.new_number = fs, dirname, config, new_number
        self.files: list[FileMeta] = []
        self.open: TableWriter | None = None
        self._number = 0
        self.counts = {"read": 0, "dropped": 0, "written": 0, "bytes_written": 0, "expired": 0, "expiring": 0}

    def __enter__(self) -> "TableOutputs":
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.fail(exc)

    def writer(self) -> TableWriter:
        """The open table, a new one when none is."""
        if self.open is None:
            self._number = self.new_number()
            self.open = TableWriter(self.fs, os.path.join(self.dirname, table_name(self._number)), self.config)
        return self.open

    def cut(self) -> None:
        """Finish the open table (if any): it joins ``files``."""
        if self.open is not None:
            self.files.append(finish(self.open, self._number))
            self.open = None                    # only once finished: a failed finish is abandoned by ``fail``

    def close(self) -> tuple[list[FileMeta], dict[str, int]]:
        """Finish the open table: every table written, and the counters
        (``bytes_written`` filled in)."""
        self.cut()
        self.counts["bytes_written"] = sum(f.file_size for f in self.files)
        return self.files, self.counts

    def fail(self, exc: BaseException) -> None:
        if self.open is not None:
            w, self.open = self.open, None
            w.abandon()
        if isinstance(exc, LightningError):
            discard(self.fs, self.dirname, self.files)


def discard(fs: Any, dirname: str, outputs: list[FileMeta]) -> None:
    """Remove tables written for a flush or compaction that failed before
    the manifest named them (they only hold space)."""
    for f in outputs:
        if f.reader is not None:
            with contextlib.suppress(Exception):
                f.reader.close()
            f.reader = None
        with contextlib.suppress(OSError, LightningError):
            fs.remove(os.path.join(dirname, table_name(f.number)))


def finish(writer: TableWriter, number: int) -> FileMeta:
    m = writer.finish()
    return FileMeta(number, m.file_size, m.smallest, m.largest, m.min_seq, m.max_seq,
                    m.entries, m.tombstones)
