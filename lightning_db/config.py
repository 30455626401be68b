"""Every default in one table: the frozen ``Config`` dataclass.

``Config.from_file`` loads YAML or TOML; ``Config.replace`` derives a copy.
Validation happens here, once, so the engine can trust its settings.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument

KiB = 1024
MiB = 1024 * KiB

SYNC_POLICIES = ("always", "interval", "never")
COMPRESSIONS = ("none", "zstd")
CACHE_POLICIES = ("clock", "lru")


MAX_LEVELS = 64         # num_levels at most (a manifest with a file deeper than this is damaged)

# The largest value each integer option takes: past these the engine's
# formats, the messages between processes or the memory of the machine give
# out (or a setting is surely a mistake), and the option is refused at open.
_MAXIMA = {
    "max_key_size": 16 * MiB,
    "max_value_size": 256 * MiB,          # a message between processes holds one, with room to spare
    "sync_interval_ms": 3_600_000,        # an hour
    "memtable_size": 16 * 1024 * MiB,
    "max_immutable_memtables": 64,
    "block_size": 256 * MiB,
    "bloom_bits_per_key": 64,
    "zstd_level": 22,
    "target_file_size": 1 << 40,
    "num_levels": MAX_LEVELS,
    "l0_compaction_trigger": 10_000,
    "l0_stop_writes_trigger": 10_000,
    "max_bytes_for_level_base": 1 << 50,
    "level_size_multiplier": 1_000,
    "block_cache_size": 1 << 44,
    "max_manifest_size": 1 << 40,
    "restart_intensity": 1_000_000,
    "heartbeat_misses": 1_000_000,
    "transaction_max_keys": 1 << 32,
}


@dataclass(frozen=True)
class Config:
    # --- limits (DESIGN §6) ---
    max_key_size: int = 64 * KiB
    max_value_size: int = 64 * MiB

    # --- write-ahead log ---
    sync: str = "interval"             # always | interval | never
    sync_interval_ms: int = 100        # for sync="interval": longest time unsynced data waits

    # --- memtable ---
    memtable_size: int = 32 * MiB      # arena bytes before the memtable becomes immutable
    max_immutable_memtables: int = 2   # writes stall beyond this many waiting for flush

    # --- tables ---
    block_size: int = 16 * KiB         # uncompressed target size of a data block
    bloom_bits_per_key: int = 10       # ~1% false positives
    compression: str = "none"          # none | zstd
    zstd_level: int = 3
    target_file_size: int = 32 * MiB   # compaction output files are cut at this size
    point_index: bool = True           # per-table hash index for point reads (uncompressed tables)

    # --- leveled compaction ---
    num_levels: int = 7
    l0_compaction_trigger: int = 4     # L0 files that start an L0 -> L1 compaction
    l0_stop_writes_trigger: int = 12   # L0 files at which writes wait for compaction
    max_bytes_for_level_base: int = 128 * MiB
    level_size_multiplier: int = 10
    write_stall_timeout_s: float = 60.0

    # --- block cache ---
    block_cache_size: int = 256 * MiB
    block_cache_policy: str = "clock"  # clock | lru

    # --- manifest ---
    max_manifest_size: int = 4 * MiB   # a new manifest (full snapshot) is written past this

    # --- expiring values (storage/ttl.py) ---
    ttl_sweep_interval: float = 60.0       # seconds between sweeps that delete expired values

    # --- transactions (storage/txn.py) ---
    transaction_max_age: float = 60.0      # seconds a transaction may stay open before it expires
    transaction_max_keys: int = 250_000    # keys written meanwhile that a shard tracks for open transactions

    # --- sharding (shards=0: everything in the calling process) ---
    shards: int | None = 0

    # --- the node process (shards >= 1; used when an open starts the node) ---
    restart_intensity: int = 10        # more worker restarts than this within restart_period: shut down
    restart_period: float = 60.0
    heartbeat_interval: float = 1.0    # seconds between pings of each worker
    heartbeat_misses: int = 5          # missed pings before a worker counts as hung and is restarted
    shard_stop_timeout: float = 10.0   # graceful stop of a worker before it is killed
    restore_interval: float = 600.0    # seconds between a shard's restore points (0: none kept)

    def __post_init__(self) -> None:
        def positive(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            top = _MAXIMA[name]
            if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v <= top:
                raise InvalidArgument(f"config {name} must be an integer from {minimum} to {top}, got {v!r:.40}")

        for name in ("max_key_size", "max_value_size", "sync_interval_ms", "block_size",
                     "target_file_size", "max_bytes_for_level_base", "max_manifest_size",
                     "max_immutable_memtables", "l0_stop_writes_trigger", "zstd_level"):
            positive(name)
        positive("memtable_size", 64 * KiB)
        positive("num_levels", 2)
        positive("l0_compaction_trigger", 1)
        positive("level_size_multiplier", 2)
        positive("bloom_bits_per_key", 0)
        positive("block_cache_size", 0)
        if self.l0_stop_writes_trigger < self.l0_compaction_trigger:
            raise InvalidArgument("config l0_stop_writes_trigger must be >= l0_compaction_trigger, "
                                  f"got {self.l0_stop_writes_trigger} < {self.l0_compaction_trigger}")
        positive("restart_intensity")
        positive("heartbeat_misses")
        positive("transaction_max_keys")
        for name in ("restart_period", "heartbeat_interval", "shard_stop_timeout", "transaction_max_age",
                     "ttl_sweep_interval", "write_stall_timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < float("inf"):
                raise InvalidArgument(f"config {name} must be a finite number of seconds > 0, got {v!r}")
        ri = self.restore_interval
        if not isinstance(ri, (int, float)) or isinstance(ri, bool) or not 0 <= ri < float("inf"):
            raise InvalidArgument(f"config restore_interval must be a number of seconds >= 0, got {ri!r}")
        if not isinstance(self.point_index, bool):
            raise InvalidArgument(f"config point_index must be a bool, got {self.point_index!r}")
        if self.sync not in SYNC_POLICIES:
            raise InvalidArgument(f"config sync must be one of {SYNC_POLICIES}, got {self.sync!r}")
        if self.compression not in COMPRESSIONS:
            raise InvalidArgument(f"config compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if self.block_cache_policy not in CACHE_POLICIES:
            raise InvalidArgument(f"config block_cache_policy must be one of {CACHE_POLICIES}, "
                                  f"got {self.block_cache_policy!r}")
        if self.shards is not None and (not isinstance(self.shards, int) or isinstance(self.shards, bool)
                                        or self.shards < 0):
            raise InvalidArgument(f"config shards must be None or an integer >= 0, got {self.shards!r}")

    def replace(self, **changes: Any) -> "Config":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InvalidArgument(f"unknown config option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        if not isinstance(data, dict):
            raise InvalidArgument(f"config must be a mapping, got {type(data).__name__}")
        return cls().replace(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Config":
        """Load a YAML (.yaml/.yml) or TOML (.toml) file. Only the keys present
        override the defaults; they may stand at the top level or in a
        ``storage`` section (not both for one key; beside a ``storage``
        section, top-level keys that name no option are other programs'
        sections). A file that cannot be read or parsed is InvalidArgument
        naming it."""
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgument(f"config file must be a str or path, got {type(path).__name__}")
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise InvalidArgument(f"config file {path}: {exc.strerror or exc}") from None
        try:
            if path.endswith(".toml"):
                import tomllib
                data = tomllib.loads(raw.decode())
            else:
                import yaml
                data = yaml.safe_load(raw) or {}
        except Exception as exc:      # noqa: BLE001 - the parsers' own errors (and a bad encoding)
            raise InvalidArgument(f"config file {path} is not valid {'TOML' if path.endswith('.toml') else 'YAML'}: "
                                  f"{exc}") from None
        if isinstance(data, dict) and "storage" in data:
            section = data["storage"]
            if not isinstance(section, dict):
                raise InvalidArgument(f"config file {path}: storage must be a mapping of options, "
                                      f"got {type(section).__name__}")
            names = {f.name for f in dataclasses.fields(cls)}
            top = {k: v for k, v in data.items() if k in names}      # other sections are other programs'
            both = sorted(set(top) & set(section))
            if both:
                raise InvalidArgument(f"config file {path}: {', '.join(map(str, both))} given both at the top "
                                      "level and under storage")
            data = {**top, **section}
        return cls.from_dict(data)
