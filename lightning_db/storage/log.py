"""Framed, checksummed append-only logs: the WAL and the MANIFEST share this.

Runs in the shard process: ``LogWriter`` under the engine's write lock (WAL)
or its state mutex (manifest); ``read_log`` during recovery only.

Layout (format.py): a file header (magic, format version), then frames
``header_crc:u32 length:u32 payload_crc:u32 payload``. The header crc covers
the length, so recovery can tell a torn write (correct header, file ends
early) from damage (a header or payload that fails its crc with more data
behind it). A torn tail is cut off and never replayed; damage anywhere else
is a ``CorruptionError``: the log is never replayed past a bad record. A
file allocated ahead of its records (the WAL: fs.WritableFile) that a crash
left longer ends in zeros: the records end where they start, and a frame
torn by the crash is followed by zeros alone.
"""

from __future__ import annotations

import contextlib

from crc32c import crc32c

from ..errors import CorruptionError, IOFault, LightningError
from .format import FORMAT_VERSION, LOG_FILE_HEADER, LOG_FRAME, mask_crc
from .fs import OSFileSystem, WritableFile

_FRAME = LOG_FRAME.size
_pack_frame = LOG_FRAME.pack


_HEADER_CRCS: dict[int, int] = {}      # frame length -> its masked crc (lengths repeat: a put's)
_HEADER_CRCS_MAX = 4096


def encode_frame(payload: bytes) -> bytes:
    n = len(payload)
    head = _HEADER_CRCS.get(n)
    if head is None:
        head = mask_crc(crc32c(n.to_bytes(4, "little")))
        if len(_HEADER_CRCS) < _HEADER_CRCS_MAX:
            _HEADER_CRCS[n] = head
    return _pack_frame(head, n, mask_crc(crc32c(payload))) + payload


class LogWriter:
    """Appends framed records to one log file. ``add`` hands the frame to the
    OS in one write call, so a killed process loses nothing it wrote."""

    __slots__ = ("file", "synced_size", "closed", "torn")

    def __init__(self, fs: OSFileSystem, path: str, magic: bytes, reserve: int = 0) -> None:
        self.file: WritableFile = fs.create(path, reserve)
        self.synced_size = 0
        self.closed = False
        self.torn = False        # a failed add could not be cut back: no more adds
        try:
            self.file.write(LOG_FILE_HEADER.pack(magic, FORMAT_VERSION))
        except BaseException:
            self.file.close()
            with contextlib.suppress(OSError, LightningError):
                fs.remove(path)
            raise

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def size(self) -> int:
        return self.file.size

    def add(self, payload: bytes, *more: bytes) -> None:
        """Append one frame (or one per payload, in one write call). A write
        that fails (a full disk) is cut back off the file, so the log stays
        whole and later adds may succeed; when even that fails, ``torn`` is
        set and the caller must stop adding."""
        if self.torn:
            raise IOFault(f"log {self.file.path} holds a partial frame; it takes no more records")
        f = self.file
        size = f.size
        try:
            f.write(encode_frame(payload) if not more else b"".join(map(encode_frame, (payload, *more))))
        except LightningError:
            try:
                f.rollback(size)
            except LightningError:
                self.torn = True
            raise

    def sync(self) -> None:
        size = self.file.size
        self.file.sync()
        self.synced_size = size

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.file.close()


class LogContents:
    __slots__ = ("records", "good_size", "file_size", "torn")

    def __init__(self, records: list[bytes], good_size: int, file_size: int) -> None:
        self.records = records
        self.good_size = good_size      # bytes up to the end of the last good record
        self.file_size = file_size
        self.torn = good_size < file_size


def _zeros(buf: memoryview | bytes, start: int) -> bool:
    tail = bytes(buf[start:])
    return tail.count(0) == len(tail)


def read_log(fs: OSFileSystem, path: str, magic: bytes) -> LogContents:
    """Read every intact record of a log. A torn tail is reported through
    ``good_size`` (the caller truncates); damage before the tail raises
    ``CorruptionError`` naming the file and offset."""
    data = fs.read_file(path)
    size = len(data)
    hdr = LOG_FILE_HEADER.size
    if size < hdr:
        # The header itself was torn: the file was created and never synced.
        if not _zeros(data, 0) and data[:size] != LOG_FILE_HEADER.pack(magic, FORMAT_VERSION)[:size]:
            raise CorruptionError("log header damaged", path)
        return LogContents([], 0, size)
    file_magic, version = LOG_FILE_HEADER.unpack_from(data, 0)
    if file_magic != magic:
        if _zeros(data, 0):
            return LogContents([], 0, size)
        raise CorruptionError(f"bad log magic {file_magic!r}, expected {magic!r}", path)
    if version != FORMAT_VERSION:
        raise CorruptionError(f"unsupported log format version {version} (this build reads {FORMAT_VERSION})",
                              path)
    records: list[bytes] = []
    pos = hdr
    view = memoryview(data)
    while pos < size:
        if size - pos < _FRAME:
            break                                          # torn frame header
        hcrc, length, pcrc = LOG_FRAME.unpack_from(data, pos)
        if mask_crc(crc32c(length.to_bytes(4, "little"))) != hcrc:
            if _zeros(view, pos + _FRAME):
                break                                      # zero-filled tail, or a header torn before it
            raise CorruptionError(f"log frame header checksum mismatch at offset {pos}", path)
        end = pos + _FRAME + length
        if end > size:
            break                                          # torn payload
        payload = bytes(view[pos + _FRAME:end])
        if mask_crc(crc32c(payload)) != pcrc:
            if end == size or _zeros(view, end):
                break                                      # the last record was torn
            raise CorruptionError(f"log record checksum mismatch at offset {pos}", path)
        records.append(payload)
        pos = end
    return LogContents(records, pos, size)
