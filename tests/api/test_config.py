"""The public contract: configuration options, files and their errors."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import lightning_db as ldb
from lightning_db import Config, InvalidArgument

from tests.api.support import KiB, open_db


# --- configuration -----------------------------------------------------------------------------------


def test_unknown_option_is_named(tmp_path):
    with pytest.raises(InvalidArgument, match="no_such_option"):
        open_db(tmp_path / "db", no_such_option=1)
    with pytest.raises(InvalidArgument, match="no_such_option"):
        Config().replace(no_such_option=1)
    with pytest.raises(InvalidArgument, match="no_such_option"):
        Config.from_dict({"no_such_option": 1})
    assert not (tmp_path / "db").exists()


def test_bad_sync_policy_is_named(tmp_path):
    with pytest.raises(InvalidArgument, match="sync") as info:
        open_db(tmp_path / "db", sync="bogus")
    assert "bogus" in str(info.value)
    with pytest.raises(InvalidArgument, match="sync"):
        Config(sync="bogus")


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)
INT_OPTIONS = sorted(n for n, t in _HINTS.items() if t is int)
STR_OPTIONS = sorted(n for n, t in _HINTS.items() if t is str)


def test_option_lists_are_not_empty():
    assert {"memtable_size", "block_size", "max_key_size", "max_value_size", "zstd_level"} <= set(INT_OPTIONS)
    assert {"sync", "compression", "block_cache_policy"} <= set(STR_OPTIONS)


@pytest.mark.parametrize("name", INT_OPTIONS)
@pytest.mark.parametrize("bad", ["8", None, 1.5, True, [1]], ids=["str", "None", "float", "bool", "list"])
def test_int_option_of_wrong_type_is_named(tmp_path, name, bad):
    with pytest.raises(InvalidArgument) as info:
        open_db(tmp_path / "db", **{name: bad})
    assert name in str(info.value)


@pytest.mark.parametrize("name", INT_OPTIONS)
def test_negative_int_option_is_named(tmp_path, name):
    with pytest.raises(InvalidArgument) as info:
        open_db(tmp_path / "db", **{name: -1})
    assert name in str(info.value)


@pytest.mark.parametrize("name", STR_OPTIONS)
@pytest.mark.parametrize("bad", [1, None, b"none", "bogus"])
def test_str_option_of_wrong_value_is_named(tmp_path, name, bad):
    with pytest.raises(InvalidArgument) as info:
        open_db(tmp_path / "db", **{name: bad})
    assert name in str(info.value)


@pytest.mark.parametrize("bad", ["1", None, -1, 0, True])
def test_write_stall_timeout_of_wrong_value_is_named(tmp_path, bad):
    with pytest.raises(InvalidArgument, match="write_stall_timeout_s"):
        open_db(tmp_path / "db", write_stall_timeout_s=bad)


@pytest.mark.parametrize("bad", ["1", -1, 1.5, True])
def test_shards_option_of_wrong_value_is_named(bad):
    with pytest.raises(InvalidArgument, match="shards"):
        Config(shards=bad)


def test_config_is_frozen_and_replace_derives_a_copy():
    c = Config()
    d = c.replace(memtable_size=128 * KiB)
    assert c.memtable_size != d.memtable_size == 128 * KiB
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.memtable_size = 1  # type: ignore[misc]


def test_config_from_yaml(tmp_path):
    f = tmp_path / "ldb.yaml"
    f.write_text("memtable_size: 131072\nsync: never\ncompression: zstd\nblock_size: 4096\n")
    c = Config.from_file(f)
    assert (c.memtable_size, c.sync, c.compression, c.block_size) == (131072, "never", "zstd", 4096)
    assert c.max_key_size == Config().max_key_size  # the rest keeps its defaults
    g = tmp_path / "section.yml"
    g.write_text("storage:\n  sync: always\n  max_value_size: 2048\nserver:\n  port: 1\n")
    c = Config.from_file(str(g))
    assert (c.sync, c.max_value_size) == ("always", 2048)
    with open_db(tmp_path / "db", config=c) as db:
        assert db.config == c
        with pytest.raises(InvalidArgument, match="2048"):
            db.put(b"k", b"x" * 2049)


def test_config_from_toml(tmp_path):
    f = tmp_path / "ldb.toml"
    f.write_text('memtable_size = 131072\nsync = "never"\nwrite_stall_timeout_s = 5.5\n')
    c = Config.from_file(f)
    assert (c.memtable_size, c.sync, c.write_stall_timeout_s) == (131072, "never", 5.5)
    g = tmp_path / "section.toml"
    g.write_text('[storage]\nblock_cache_size = 0\ncompression = "zstd"\n')
    c = Config.from_file(g)
    assert (c.block_cache_size, c.compression) == (0, "zstd")
    # options given to open() override the config object
    with open_db(tmp_path / "db", config=c, compression="none") as db:
        assert db.config.compression == "none"
        assert db.config.block_cache_size == 0


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "memtable_sise: 131072\n"),
    (".toml", "memtable_sise = 131072\n"),
    (".yaml", "sync: sometimes\n"),
    (".toml", 'memtable_size = "big"\n'),
])
def test_config_file_with_bad_option_is_named(tmp_path, suffix, text):
    f = tmp_path / ("bad" + suffix)
    f.write_text(text)
    with pytest.raises(InvalidArgument) as info:
        Config.from_file(f)
    name = text.split("=")[0].split(":")[0].strip()
    assert name in str(info.value)


def test_open_rejects_non_config(tmp_path):
    with pytest.raises(InvalidArgument, match="config"):
        ldb.open(tmp_path / "db", shards=0, config={"sync": "never"})


def test_config_file_errors_name_the_file(tmp_path):
    cases = {"broken.yaml": "a: [1,\n", "broken.toml": "x = \n", "both.yaml": "sync: always\nstorage:\n  sync: never\n",
             "section.yaml": "storage: 5\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    for name, says in (("broken.yaml", "is not valid YAML"), ("broken.toml", "is not valid TOML"),
                       ("both.yaml", "sync given both at the top level and under storage"),
                       ("section.yaml", "storage must be a mapping"), ("missing.yaml", "No such file"),
                       (".", "Is a directory")):
        with pytest.raises(InvalidArgument, match=says):
            Config.from_file(tmp_path / name)
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("sync: always\nstorage:\n  memtable_size: 131072\nserver:\n  port: 1\n")
    c = Config.from_file(mixed)                # top-level options and the section together
    assert (c.sync, c.memtable_size) == ("always", 131072)


@pytest.mark.parametrize("option, value, says", [
    ("memtable_size", 2**63, "from 65536 to"), ("num_levels", 10**6, "from 2 to 64"),
    ("block_size", 2**64, "from 1 to"), ("bloom_bits_per_key", 2**40, "from 0 to 64"),
    ("max_value_size", 2**40, "from 1 to"), ("write_stall_timeout_s", float("nan"), "finite number of seconds"),
    ("write_stall_timeout_s", float("inf"), "finite number of seconds"),
])
def test_options_past_their_maximum_are_refused_before_anything_is_made(tmp_path, option, value, says):
    with pytest.raises(InvalidArgument, match=f"config {option} must be .*{says}"):
        open_db(tmp_path / "db", **{option: value})
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("shards", [0, 2], ids=["in-process", "two-shards"])
def test_reopening_with_fewer_levels_than_hold_files_is_invalid_argument(tmp_path, shards):
    """Not a damaged manifest (CorruptionError, and with shards a restore):
    the caller's setting, refused, with the files left as they are."""
    path = tmp_path / "db"
    small = dict(max_bytes_for_level_base=4096, target_file_size=4096, level_size_multiplier=2,
                 memtable_size=65536)
    with ldb.open(path, shards=shards, **small) as db:
        for r in range(4):
            db.put_many({b"k%05d-%d" % (i, r): b"v" * 30 for i in range(1500)})
            db.flush()
        db.compact()
    with pytest.raises(InvalidArgument, match="open it with num_levels > "):
        ldb.open(path, shards=shards, num_levels=2)
    assert not (path / "quarantine").exists()
    with ldb.open(path, shards=shards) as db:
        assert len(list(db.scan())) == 6000
