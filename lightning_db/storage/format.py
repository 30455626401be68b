"""Frozen on-disk format constants shared by every reader and writer.

Never renumber a value here: files written by older builds must stay readable.
Retired values stay as comments. Every file begins with (or, for tables, ends
with) a magic number and a format version.
"""

from __future__ import annotations

import struct
from enum import IntEnum

FORMAT_VERSION = 1


class Kind(IntEnum):
    """Kind of an internal record. Part of the file format (WAL, memtable,
    tables): never renumber."""

    DELETE = 0
    VALUE = 1
    VALUE_TTL = 2      # value = expiry (ms since the Unix epoch, u64 big-endian) + the user's value (ttl.py)
    # 3 reserved. (Two-phase commit lives in the WAL's record types.)


# An internal record's sequence number and kind travel packed in one integer:
# (seq << 8) | kind. Sequence numbers are per shard and start at 1.
KIND_BITS = 8
MAX_SEQUENCE = (1 << 56) - 1


def pack_seqkind(seq: int, kind: int) -> int:
    return (seq << KIND_BITS) | kind


# --- log files (WAL and MANIFEST share the framing) --------------------------
#
# frame := header_crc:u32 length:u32 payload_crc:u32 payload[length]
# header_crc covers the length field, so a damaged length is told apart from a
# torn write (a torn write leaves a correct header and a short file).
# crc values are masked as in LevelDB so that crc-of-crc does not collide.
LOG_FRAME = struct.Struct("<III")
LOG_MAX_RECORD = 1 << 31

WAL_MAGIC = b"LDBWAL01"
MANIFEST_MAGIC = b"LDBMAN01"
LOG_FILE_HEADER = struct.Struct("<8sI")   # magic, format version


class WalOp(IntEnum):
    """First element of a WAL record payload. Never renumber."""

    BATCH = 1     # (BATCH, first_seq, [(kind, key, value), ...][, txid[, remember]])
                  #   with txid: the commit of that prepared transaction; with
                  #   remember=1 this shard also keeps the decision (the primary)
    PREPARE = 2   # (PREPARE, 0, [(kind, key, value), ...], txid[, [reads, ranges]]): durable,
                  #   not applied; a serializable transaction's read intents on this shard
                  #   (keys read, [lo, hi] ranges scanned, None unbounded) ride along, so
                  #   that a restarted shard holds them again until the commit or abort
    ABORT = 3     # (ABORT, 0, [], txid): the prepared transaction is dropped
    DECISION = 4  # (DECISION, 0, [], txid): txid committed; kept until FORGET
    FORGET = 5    # (FORGET, 0, [], txid): every participant has the decision
    TOKENED = 6   # (TOKENED, first_seq, ops, writer, n, lo): a BATCH with its write token
    TOKENS = 7    # (TOKENS, 0, [], state): every write token still kept (dedupe.py)
    COMMIT = 8    # (COMMIT, first_seq, [], txid[, remember]): the commit of that prepared
                  #   transaction, whose ops are its PREPARE's, earlier in the same WAL
                  #   (a transaction still prepared is logged again into every new WAL)


# --- memtable segments -------------------------------------------------------
#
# A segment is one mmap'd file written by the shard alone and readable by any
# process without the writer's help.
#
#   header (SEGMENT_HEADER, 64 bytes):
#     magic:8s version:u32 flags:u32 capacity:u64 slots:u64
#     arena_used:u64 count:u64 generation:u64 pad
#   slots: u64[slots]    0 = empty, otherwise 1 + arena offset of the newest
#                        record of the key that hashed there (linear probing)
#   arena: records, each 8-byte aligned:
#     record := klen:u32 vlen:u32 seqkind:u64 prev:u64 key[klen] value[vlen]
#     prev is 1 + arena offset of the previous version of the same key, 0 = none.
#
# Publication order (writer): record bytes, then slot, then arena_used/count.
# A reader that sees a slot therefore sees the complete record it points to.
SEGMENT_MAGIC = b"LDBSEG01"
SEGMENT_HEADER = struct.Struct("<8sIIQQQQQ")
SEGMENT_HEADER_SIZE = 64
SEGMENT_RECORD = struct.Struct("<IIQQ")
SEGMENT_FLAG_IMMUTABLE = 1
SEGMENT_OFF_FLAGS = 12                 # byte offsets of header fields
SEGMENT_OFF_USED = 32                  # arena_used, then count

# --- published versions (storage/published.py) --------------------------------
#
# superblock file (4096 bytes, mapped by the shard and by readers):
#   magic:8s version:u32 flags:u32 seq:u64 incarnation:u64 generation:u64 visible:u64
# seq is the seqlock: odd while the shard writes the three fields after it;
# incarnation 0 = not serving (the shard is opening or closed); generation
# names the version file "<superblock>.<generation>" (msgpack [shard_dir,
# segment numbers newest first, [[FileMeta.encode(), ...] per level]]);
# visible = the highest sequence number whose write is complete.
PUBLISHED_MAGIC = b"LDBPUB01"
PUBLISHED_HEADER = struct.Struct("<8sIIQQQQ")
PUBLISHED_SIZE = 4096

# --- tables -------------------------------------------------------------------
#
# table := data_block* filter_block [point_index_block] props_block index_block footer
# block := payload compression:u8 crc32c(payload + compression):u32
# data block payload (after decompression): msgpack [kvs, seqkinds] where
#   kvs = [key0, value0, key1, value1, ...] (so a record's key and value are
#   adjacent bytes in the file) sorted by (key asc, seq desc); all versions of
#   one user key are in one block.
# point index (uncompressed tables only; its size is props["pindex_size"]):
#   open addressing, linear probing, power-of-two slot count, load <= 0.75;
#   slot := A:u64 B:u64, A = 0 for an empty slot, else
#   A = file offset of the record's msgpack key header (40 bits)
#       | kind << 40 | (xxh3_64(key) >> 41) << 41,
#   B = span (bytes from the key header to the end of the value) | crc32c(span) << 32.
#   It locates the newest version of each key; readers use it when their
#   snapshot covers the table's max_seq.
# index payload: msgpack [last_keys, offsets, sizes]
# filter payload: bloom bit array (see bloom.py), hashes xxh3_64 of user keys
# props payload: msgpack dict (see table.py)
# footer := index_off:u64 index_size:u64 filter_off:u64 filter_size:u64
#           props_off:u64 props_size:u64 version:u32 footer_crc:u32 magic:8s
TABLE_MAGIC = b"LDBTBL01"
TABLE_FOOTER = struct.Struct("<QQQQQQII8s")
BLOCK_TRAILER = struct.Struct("<BI")


class Compression(IntEnum):
    """Block compression codes. Never renumber."""

    NONE = 0
    ZSTD = 1


# --- file names ----------------------------------------------------------------
CURRENT = "CURRENT"
LOCK = "LOCK"


def wal_name(number: int) -> str:
    return f"{number:06d}.log"


def table_name(number: int) -> str:
    return f"{number:06d}.ldb"


def manifest_name(number: int) -> str:
    return f"MANIFEST-{number:06d}"


def segment_name(number: int) -> str:
    return f"{number:06d}.seg"


def parse_name(name: str) -> tuple[str, int] | None:
    """('wal'|'table'|'segment'|'manifest', number) for a file of ours, else None."""
    if name.startswith("MANIFEST-"):
        digits = name[9:]
        return ("manifest", int(digits)) if digits.isdigit() else None
    stem, dot, ext = name.partition(".")
    if not dot or not stem.isdigit():
        return None
    kind = {"log": "wal", "ldb": "table", "seg": "segment"}.get(ext)
    return (kind, int(stem)) if kind else None


def mask_crc(crc: int) -> int:
    """LevelDB's crc mask: rotate right by 15 bits and add a constant."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
