"""The layers of DESIGN.md §1 are enforced by parsing imports, not hoped for.

- ``storage`` imports neither zmq nor anything of ``actors``, ``mailbox``,
  ``shards``, ``supervisor``, ``server``, ``client``;
- ``mailbox`` imports no ``storage``;
- ``actors`` knows nothing of keys or storage (no ``storage``, no ``shards``).

Every ``import``/``from ... import`` anywhere in a module counts (function
bodies and ``TYPE_CHECKING`` blocks too), relative imports are resolved
against the module's package, and ``importlib.import_module("...")`` /
``__import__("...")`` with a literal name count as imports as well.
The checker itself is tested on planted sources, so this test can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_db

PACKAGE_DIR = Path(lightning_db.__file__).resolve().parent
PACKAGE = "lightning_db"

ACTOR_SIDE = ("actors", "mailbox", "shards", "supervisor", "server", "client")

# subpackage -> module prefixes it must not import
RULES: dict[str, tuple[str, ...]] = {
    "storage": ("zmq",) + tuple(f"{PACKAGE}.{p}" for p in ACTOR_SIDE),
    "mailbox": (f"{PACKAGE}.storage",),
    "actors": (f"{PACKAGE}.storage", f"{PACKAGE}.shards"),
}


def module_name(path: Path, root: Path, package: str = PACKAGE) -> tuple[str, bool]:
    """Dotted name of the module at *path* inside the package rooted at *root*,
    and whether it is a package (an ``__init__.py``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join([package, *parts]), is_package


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every module name *source* imports, as (line, absolute dotted name).
    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a module)."""
    tree = ast.parse(source)
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                keep = len(package_parts) - (node.level - 1)
                if keep <= 0:
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond the top package")
                base = ".".join(package_parts[:keep])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
    return found


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(source: str, module: str, forbidden: tuple[str, ...], is_package: bool = False) -> list[str]:
    out = []
    for line, name in imported_names(source, module, is_package):
        for prefix in forbidden:
            if _matches(name, prefix):
                out.append(f"{module}:{line} imports {name} (forbidden: {prefix})")
    return sorted(set(out))


def tree_violations(root: Path, subpackage: str, forbidden: tuple[str, ...],
                    package: str = PACKAGE) -> tuple[list[Path], list[str]]:
    """Check every .py file under ``root/subpackage``; return the files seen
    and the violations found."""
    files = sorted((root / subpackage).rglob("*.py"))
    found: list[str] = []
    for path in files:
        module, is_package = module_name(path, root, package)
        found.extend(violations(path.read_text(encoding="utf-8"), module, forbidden, is_package))
    return files, found


# --- the real package ----------------------------------------------------------------------


def test_storage_imports_nothing_from_the_actor_side():
    files, found = tree_violations(PACKAGE_DIR, "storage", RULES["storage"])
    names = {p.name for p in files}
    assert {"__init__.py", "engine.py", "wal.py", "table.py", "memtable.py"} <= names, names
    assert found == []


@pytest.mark.parametrize("subpackage", ["mailbox", "actors"])
def test_mailbox_and_actors_import_no_storage(subpackage):
    # These packages may not exist yet; when they do, every module is checked.
    files, found = tree_violations(PACKAGE_DIR, subpackage, RULES[subpackage])
    assert (PACKAGE_DIR / subpackage).is_dir() == bool(files)
    assert found == []


def test_every_storage_module_parses_and_has_imports():
    """The checker sees real imports in the real files (it is not reading
    empty or unparsable text)."""
    files, _ = tree_violations(PACKAGE_DIR, "storage", ())
    engine = PACKAGE_DIR / "storage" / "engine.py"
    names = {n for _, n in imported_names(engine.read_text(), "lightning_db.storage.engine")}
    assert "lightning_db.config" in names  # from ..config import Config
    assert "lightning_db.storage.wal" in names  # from .wal import ...
    for path in files:
        module, is_package = module_name(path, PACKAGE_DIR)
        imported_names(path.read_text(encoding="utf-8"), module, is_package)


# --- the checker itself ----------------------------------------------------------------------

STORAGE_MODULE = "lightning_db.storage.engine"

BAD_STORAGE_SOURCES = [
    "import zmq",
    "import zmq.asyncio",
    "import zmq as z",
    "from zmq import Context",
    "from zmq.asyncio import Socket",
    "import lightning_db.actors",
    "import lightning_db.shards.router as r",
    "from lightning_db.mailbox import Envelope",
    "from lightning_db import supervisor",
    "from lightning_db.server.resp import serve",
    "from ..client import Client",
    "from ..actors.runtime import spawn",
    "from .. import shards",
    "from .. import errors, mailbox",
    "def f():\n    from ..supervisor import Supervisor\n    return Supervisor",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..shards import ShardActor",
    "import importlib\nm = importlib.import_module('zmq')",
    "m = __import__('lightning_db.actors')",
    "try:\n    import zmq\nexcept ImportError:\n    zmq = None",
]

GOOD_STORAGE_SOURCES = [
    "",
    "import os\nimport threading",
    "from ..errors import CorruptionError",
    "from ..config import Config",
    "from . import format",
    "from .wal import Wal",
    "from .shards_util import x",       # lightning_db.storage.shards_util: a storage module
    "from .actors import x",            # lightning_db.storage.actors: still storage
    "import zmqlike",
    "from lightning_db.serverless import x",
    "from lightning_db.storage.table import TableReader",
    "x = 'import zmq'  # a string, not an import",
]


@pytest.mark.parametrize("source", BAD_STORAGE_SOURCES)
def test_checker_flags_planted_violations(source):
    found = violations(source, STORAGE_MODULE, RULES["storage"])
    assert found, source
    assert all(f.startswith(STORAGE_MODULE + ":") for f in found)


@pytest.mark.parametrize("source", GOOD_STORAGE_SOURCES)
def test_checker_accepts_allowed_imports(source):
    assert violations(source, STORAGE_MODULE, RULES["storage"]) == []


def test_checker_resolves_relative_imports_in_packages():
    # In storage/__init__.py, "." is lightning_db.storage and ".." is lightning_db.
    assert violations("from ..actors import x", "lightning_db.storage", RULES["storage"], is_package=True)
    assert violations("from .actors import x", "lightning_db.storage", RULES["storage"], is_package=True) == []
    # In a nested module, ".." is still inside storage.
    assert violations("from ..shards import x", "lightning_db.storage.sub.mod", RULES["storage"]) == []
    assert violations("from ...shards import x", "lightning_db.storage.sub.mod", RULES["storage"])
    # mailbox must not reach storage, relatively or not.
    assert violations("from ..storage.wal import Wal", "lightning_db.mailbox.frames", RULES["mailbox"])
    assert violations("from .. import storage", "lightning_db.mailbox.frames", RULES["mailbox"])
    assert violations("import lightning_db.storage", "lightning_db.mailbox", RULES["mailbox"], is_package=True)
    assert violations("import zmq", "lightning_db.mailbox.frames", RULES["mailbox"]) == []


def test_checker_reports_line_numbers():
    found = violations("import os\n\nimport zmq\n", STORAGE_MODULE, RULES["storage"])
    assert found == [f"{STORAGE_MODULE}:3 imports zmq (forbidden: zmq)"]


def test_tree_walker_finds_a_planted_file(tmp_path):
    """A violation in a file on disk, nested and in an __init__, is found."""
    root = tmp_path / "pkg"
    (root / "storage" / "nested").mkdir(parents=True)
    (root / "storage" / "__init__.py").write_text("from .. import mailbox\n")
    (root / "storage" / "ok.py").write_text("from ..errors import X\nfrom .nested import y\n")
    (root / "storage" / "nested" / "__init__.py").write_text("")
    (root / "storage" / "nested" / "deep.py").write_text("import os\n\ndef f():\n    import zmq\n")
    files, found = tree_violations(root, "storage", RULES["storage"])
    assert len(files) == 4
    assert sorted(found) == [
        "lightning_db.storage.nested.deep:4 imports zmq (forbidden: zmq)",
        "lightning_db.storage:1 imports lightning_db.mailbox (forbidden: lightning_db.mailbox)",
    ]
    # and the mailbox rule on a planted mailbox package
    (root / "mailbox").mkdir()
    (root / "mailbox" / "__init__.py").write_text("from ..storage import format\n")
    _, found = tree_violations(root, "mailbox", RULES["mailbox"])
    assert found and all("lightning_db.storage" in f for f in found)
