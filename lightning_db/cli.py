"""Command line front ends.

``lightning-db``: the embedded demo workload (``run``), one-shot data
commands (``get``, ``put``, ``del``, ``scan``, ``stats``, ``compact``,
``checkpoint``) and an interactive shell (``repl``, repl.py) against a data
directory; ``serve``, the Redis-protocol server (server/serve.py). ``lightning-admin``: maintenance of
an existing database (``stats``, ``verify``, ``compact``, ``checkpoint``).

Every command opens the database as the directory holds it (``shards=None``:
its recorded shard count, or the in-process engine; a new directory gets one
shard per usable CPU, or ``run --shards N``) and closes it before returning. Keys and values on the command line are UTF-8
text; values are printed back as UTF-8 with undecodable bytes escaped.

Exit status: 0 success; 1 a database error (one line on stderr), a missing
key or database, or failed verification; 2 a usage error or InvalidArgument;
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lightning_db

from .errors import InvalidArgument, LightningError
from .shards.attach import SHARDS_FILE
from .storage.format import CURRENT

if TYPE_CHECKING:
    from .db import Database

__all__ = ["main", "admin_main"]


class _Failure(Exception):
    """A command failed in a way that is not a database error (missing key,
    missing database, failed verification): message and exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _open(path: str, *, create: bool, shards: int | None = None) -> Database:
    # Commands that only read or maintain must not create an empty database
    # by accident (a typo in --data would otherwise "succeed"), nor one in
    # a directory that holds something else.
    if not create and not (os.path.isfile(os.path.join(path, CURRENT))
                           or os.path.isfile(os.path.join(path, SHARDS_FILE))):
        raise _Failure(f"no database at {path!r}" if not os.path.exists(path) else
                       f"no database at {path!r} (neither {CURRENT} nor {SHARDS_FILE} is there)")
    return lightning_db.open(path, shards)


def _where(args: argparse.Namespace) -> str:
    """What the command worked on: the server's URL or the directory."""
    return getattr(args, "url", None) or args.data


def _target(args: argparse.Namespace, *, create: bool) -> Any:
    """The database the command works on: a server (``--url``, the native
    protocol) or the data directory."""
    url = getattr(args, "url", None)
    if url:
        return lightning_db.connect(url, min_size=1, max_size=1)
    return _open(args.data, create=create)


def _text(b: bytes) -> str:
    return bytes(b).decode("utf-8", "backslashreplace")


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts and lists of dicts as dotted (name, scalar) pairs."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _print_dict(title: str, data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("name")
    table.add_column("value", justify="right")
    for name, v in _flatten(data):
        table.add_row(name, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    Console().print(table)


# --- lightning-db run: the embedded demo workload ---------------------------

_STATS_HINTS = ("key", "memtable", "table", "level", "amplification", "cache", "bytes", "sequence")


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    n, batch = args.keys, 1000
    if n < 1 or args.value_size < 0 or args.gets < 0:
        raise _Failure("--keys must be >= 1, --value-size and --gets >= 0", 2)
    console = Console()
    rng = random.Random(args.seed)
    keys = [b"%016x" % x for x in rng.sample(range(1 << 62), n)]
    # Printable (hex) values so that `lightning-db scan` afterwards reads well.
    values = [rng.randbytes(args.value_size // 2 + 1).hex().encode()[:args.value_size] for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    timings: list[tuple[str, int, float]] = []
    mismatches = 0
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())

    gets = order[:min(n, args.gets)]
    with _open(args.data, create=True, shards=args.shards) as db, Progress(*columns, console=console) as progress:
        task = progress.add_task(f"put_many x{batch}", total=n)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            db.put_many(zip(keys[i:i + batch], values[i:i + batch]))
            progress.advance(task, min(batch, n - i))
        timings.append(("put_many", n, time.perf_counter() - t0))

        task = progress.add_task("get (random order)", total=len(gets))
        t0 = time.perf_counter()
        for j, i in enumerate(gets, 1):
            if db.get(keys[i]) != values[i]:
                mismatches += 1
            if j % batch == 0 or j == len(gets):
                progress.update(task, completed=j)
        timings.append(("get", len(gets), time.perf_counter() - t0))

        task = progress.add_task(f"get_many x{batch}", total=n)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            got = db.get_many(keys[i:i + batch])
            mismatches += sum(g != v for g, v in zip(got, values[i:i + batch]))
            progress.advance(task, min(batch, n - i))
        timings.append(("get_many", n, time.perf_counter() - t0))

        task = progress.add_task("scan (all keys)", total=None)
        t0 = time.perf_counter()
        scanned = 0
        for _ in db.scan():
            scanned += 1
            if scanned % 10_000 == 0:
                progress.update(task, completed=scanned)
        progress.update(task, completed=scanned, total=scanned)
        timings.append(("scan", scanned, time.perf_counter() - t0))
        stats = db.stats()

    table = Table(title=f"demo: {n:,} keys, {args.value_size}-byte values")
    for col, justify in (("operation", "left"), ("count", "right"), ("seconds", "right"), ("ops/s", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for op, count, secs in timings:
        table.add_row(op, f"{count:,}", f"{secs:.3f}", f"{count / secs:,.0f}" if secs > 0 else "-")
    console.print(table)
    flat = [(k, v) for k, v in _flatten(stats) if "[" not in k]  # per-level rows are summarised below
    for name, v in ([(k, v) for k, v in flat if any(h in k.lower() for h in _STATS_HINTS)] or flat)[:10]:
        console.print(f"  {name}: {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"  {name}: {v}")
    levels = stats.get("levels")
    if isinstance(levels, list) and all(isinstance(lv, dict) for lv in levels):
        console.print("  table files per level: " + ", ".join(f"L{i} {lv.get('files', '?')}" for i, lv in enumerate(levels)))
    if scanned < n:
        raise _Failure(f"scan returned {scanned:,} keys, fewer than the {n:,} just written")
    if mismatches:
        raise _Failure(f"{mismatches:,} reads returned a wrong or missing value")
    console.print(f"[green]verified:[/green] every value read back by get and get_many matched ({n:,} keys)")
    return 0


# --- one-shot commands ------------------------------------------------------


def _cmd_get(args: argparse.Namespace) -> int:
    with _target(args, create=False) as db:
        value = db.get(args.key.encode())
    if value is None:
        raise _Failure(f"key not found: {args.key!r}")
    print(_text(value))
    return 0


def _cmd_put(args: argparse.Namespace) -> int:
    with _target(args, create=True) as db:
        db.put(args.key.encode(), args.value.encode())
    return 0


def _cmd_del(args: argparse.Namespace) -> int:
    with _target(args, create=False) as db:
        db.delete(args.key.encode())
    return 0


def _cmd_scan(args: argparse.Namespace) -> int:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    with _target(args, create=False) as db:
        for key, value in db.scan(start=enc(args.start), end=enc(args.end), prefix=enc(args.prefix),
                                  reverse=args.reverse, limit=args.limit):
            print(f"{_text(key)}\t{_text(value)}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    with _target(args, create=False) as db:
        stats = db.stats()
    _print_dict(f"stats of {_where(args)}", stats, args.json)
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    with _target(args, create=False) as db:
        t0 = time.perf_counter()
        db.compact()
        print(f"compacted {_where(args)} in {time.perf_counter() - t0:.2f} s")
    return 0


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    with _open(args.data, create=False) as db:
        db.checkpoint(args.dir)
    print(f"checkpoint of {args.data} written to {args.dir}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    with _open(args.data, create=False) as db:
        report = db.verify()
    _print_dict(f"verify {args.data}", report, args.json)
    errors = report.get("errors") or report.get("corrupt") or report.get("corruptions")
    if report.get("ok") is False or errors:
        raise _Failure(f"verification failed for {args.data}")
    return 0


# --- parsers and dispatch ---------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server.serve import run_args
    return run_args(args)


def _cmd_stress(args: argparse.Namespace) -> int:
    from .stress.run import run_args
    return run_args(args)


def _cmd_repl(args: argparse.Namespace) -> int:
    from .repl import run
    db = _target(args, create=False)
    try:
        return run(db, args.url or os.path.basename(os.path.abspath(args.data)))
    finally:
        db.close()


def _dispatch(prog: str, args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except _Failure as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.status
    except LightningError as e:
        detail = " ".join(str(e).split())  # one line, whatever the message holds
        print(f"{prog}: error: {type(e).__name__}: {detail}", file=sys.stderr)
        return 2 if isinstance(e, InvalidArgument) else 1
    except BrokenPipeError:  # `... | head`: the reader is gone; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _add(sub: Any, name: str, func: Any, help: str, data: bool = True, url: bool = False) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    if data:
        p.add_argument("--data", default="./data", metavar="DIR", help="data directory (default ./data)")
    if url:
        p.add_argument("--url", default=None, metavar="URL",
                       help="a server instead of --data: tcp://HOST:PORT (lightning-db serve --native-port)")
    p.set_defaults(func=func)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-db``."""
    parser = argparse.ArgumentParser(prog="lightning-db", description="Lightning DB command line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "run", _cmd_run, "run the embedded demo workload: load keys, read them back, scan")
    p.add_argument("--keys", type=int, default=1_000_000, help="number of keys (default 1000000)")
    p.add_argument("--value-size", type=int, default=100, help="value size in bytes (default 100)")
    p.add_argument("--seed", type=int, default=42, help="random seed for keys and values (default 42)")
    p.add_argument("--gets", type=int, default=100_000,
                   help="single-key gets, random keys (default 100000; get_many and scan read every key)")
    p.add_argument("--shards", type=int, default=None,
                   help="for a new directory: worker processes (default one per usable CPU; 0 in-process)")

    _add(sub, "get", _cmd_get, "print the value of KEY (exit 1 if absent)", url=True).add_argument("key")
    p = _add(sub, "put", _cmd_put, "set KEY to VALUE", url=True)
    p.add_argument("key")
    p.add_argument("value")
    _add(sub, "del", _cmd_del, "delete KEY (not an error if absent)", url=True).add_argument("key")

    p = _add(sub, "scan", _cmd_scan, "print key<TAB>value lines in key order", url=True)
    p.add_argument("--prefix", help="only keys starting with P")
    p.add_argument("--start", help="first key (inclusive)")
    p.add_argument("--end", help="last key (exclusive)")
    p.add_argument("--reverse", action="store_true", help="descending key order")
    p.add_argument("--limit", type=int, help="at most N pairs")

    _add(sub, "stats", _cmd_stats, "print db.stats()", url=True).add_argument("--json", action="store_true")
    _add(sub, "compact", _cmd_compact, "run a full compaction and wait for it", url=True)
    _add(sub, "checkpoint", _cmd_checkpoint, "write a consistent copy of the database to DIR").add_argument("dir")
    _add(sub, "repl", _cmd_repl, "an interactive shell (history, help, tab completion of commands and keys)",
         url=True)
    from .server.serve import add_arguments as _serve_arguments
    p = sub.add_parser("serve", help="serve the database over the Redis protocol (RESP2/RESP3)",
                       description="Serve the database over the Redis protocol (RESP2/RESP3) until SIGINT or "
                                   "SIGTERM; redis-cli, redis-py and other Redis clients connect to --port.")
    _serve_arguments(p)
    p.set_defaults(func=_cmd_serve)
    from .stress.run import add_arguments as _stress_arguments
    p = sub.add_parser("stress", help="drive load and faults, then check the history (linearizability, "
                                      "durability, transactions)",
                       description="Drive load and faults against Lightning DB and check that nothing "
                                   "acknowledged was lost and every key stayed linearizable; exit 1 when a "
                                   "checker fails.")
    _stress_arguments(p)
    p.set_defaults(func=_cmd_stress)

    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["stress"]:             # its durations may be negative: named by its own parser
        from .stress.options import join_dashed_values
        words = ["stress", *join_dashed_values(words[1:])]
    args = parser.parse_args(words)
    return _dispatch(parser.prog, args)


def admin_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-admin``."""
    parser = argparse.ArgumentParser(prog="lightning-admin", description="Lightning DB maintenance.")
    parser.add_argument("--db", dest="data", required=True, metavar="PATH", help="data directory")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add(sub, "stats", _cmd_stats, "print db.stats()", data=False).add_argument("--json", action="store_true")
    _add(sub, "verify", _cmd_verify, "check every block checksum (exit 1 on damage)",
         data=False).add_argument("--json", action="store_true")
    _add(sub, "compact", _cmd_compact, "run a full compaction and wait for it", data=False)
    _add(sub, "checkpoint", _cmd_checkpoint, "write a consistent copy of the database to DIR",
         data=False).add_argument("dir")
    args = parser.parse_args(argv)
    return _dispatch(parser.prog, args)


if __name__ == "__main__":
    sys.exit(main())
