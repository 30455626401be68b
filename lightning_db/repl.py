"""``lightning-db repl``: an interactive shell over a database handle.

Runs in the caller's process over any handle with the Database API (an
open data directory, or a server connection). Commands mirror the API;
keys and values are UTF-8 text (``\\xNN`` escapes for other bytes), values
are printed the same way. Line editing, history (``~/.lightning_db_history``)
and tab completion of command names and of keys (a prefix scan) come from
``readline`` where the platform has it. A database error is printed as one
line and the shell goes on; ``quit`` (or end of input) leaves.
"""

from __future__ import annotations

import cmd
import os
import shlex
import sys
from typing import IO, Any

from .errors import InvalidArgument, LightningError

__all__ = ["Repl", "decode_arg", "show"]

HISTORY = os.path.expanduser("~/.lightning_db_history")
COMPLETE_KEYS = 50


def decode_arg(text: str) -> bytes:
    """Command-line text to bytes: UTF-8, with ``\\xNN`` escapes for any byte."""
    return text.encode("utf-8").decode("unicode_escape").encode("latin-1") if "\\x" in text \
        else text.encode("utf-8")


def show(b: Any) -> str:
    return bytes(b).decode("utf-8", "backslashreplace")


class Repl(cmd.Cmd):
    intro = "Lightning DB shell: 'help' lists the commands, 'quit' leaves."
    prompt = "ldb> "

    def __init__(self, db: Any, name: str = "", stdin: IO[str] | None = None,
                 stdout: IO[str] | None = None) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.db = db
        if name:
            self.prompt = f"ldb {name}> "
        if stdin is not None:
            self.use_rawinput = False
            self.intro = None
            self.prompt = ""

    # --- plumbing ---------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def onecmd(self, line: str) -> bool:
        try:
            return super().onecmd(line)
        except (LightningError, ValueError) as exc:
            kind = "bad argument" if isinstance(exc, (InvalidArgument, ValueError)) else type(exc).__name__
            self._say(f"({kind}) {exc}")
            return False

    def _args(self, line: str, least: int, most: int, usage: str) -> list[str]:
        lex = shlex.shlex(line, posix=True)
        lex.whitespace_split, lex.escape = True, ""     # quotes group words; backslashes stay (\xNN)
        args = list(lex)
        if not least <= len(args) <= most:
            raise ValueError(f"usage: {usage}")
        return args

    def emptyline(self) -> bool:
        return False

    def default(self, line: str) -> None:
        self._say(f"unknown command {line.split()[0]!r}: 'help' lists the commands")

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return [n for n in super().completenames(text, *ignored) if n != "EOF"]

    def _complete_key(self, text: str, *ignored: Any) -> list[str]:
        try:
            return [show(k) for k, _ in self.db.scan(prefix=decode_arg(text) or None, limit=COMPLETE_KEYS)]
        except LightningError:
            return []

    complete_get = complete_del = complete_put = complete_ttl = _complete_key

    # --- commands -----------------------------------------------------------------------------------
    def do_get(self, line: str) -> None:
        """get KEY: the value, or (absent)."""
        (key,) = self._args(line, 1, 1, "get KEY")
        v = self.db.get(decode_arg(key))
        self._say("(absent)" if v is None else show(v))

    def do_put(self, line: str) -> None:
        """put KEY VALUE [TTL_SECONDS]: store VALUE (expiring after TTL seconds if given)."""
        args = self._args(line, 2, 3, "put KEY VALUE [TTL_SECONDS]")
        ttl = float(args[2]) if len(args) == 3 else None
        self.db.put(decode_arg(args[0]), decode_arg(args[1]), ttl=ttl)
        self._say("OK")

    def do_del(self, line: str) -> None:
        """del KEY [KEY...]: delete keys (absent ones are not an error)."""
        args = self._args(line, 1, 1 << 20, "del KEY [KEY...]")
        for k in args:
            self.db.delete(decode_arg(k))
        self._say("OK")

    def do_mget(self, line: str) -> None:
        """mget KEY [KEY...]: the values, one per line."""
        args = self._args(line, 1, 1 << 20, "mget KEY [KEY...]")
        for k, v in zip(args, self.db.get_many([decode_arg(a) for a in args])):
            self._say(f"{k}: {'(absent)' if v is None else show(v)}")

    def do_ttl(self, line: str) -> None:
        """ttl KEY: seconds until KEY expires, (no expiry), or (absent)."""
        (key,) = self._args(line, 1, 1, "ttl KEY")
        import time
        e = self.db.get_with_expiry(decode_arg(key))
        self._say("(absent)" if e is None else "(no expiry)" if e[1] is None else f"{e[1] - time.time():.3f}")

    def do_scan(self, line: str) -> None:
        """scan [PREFIX] [LIMIT]: pairs in key order (LIMIT default 20)."""
        args = self._args(line, 0, 2, "scan [PREFIX] [LIMIT]")
        prefix = decode_arg(args[0]) if args and args[0] else None
        limit = int(args[1]) if len(args) == 2 else 20
        n = 0
        for k, v in self.db.scan(prefix=prefix, limit=limit):
            self._say(f"{show(k)}: {show(v)}")
            n += 1
        self._say(f"({n} shown)")

    def do_count(self, line: str) -> None:
        """count [PREFIX]: how many keys (a full scan)."""
        args = self._args(line, 0, 1, "count [PREFIX]")
        prefix = decode_arg(args[0]) if args and args[0] else None
        self._say(str(sum(1 for _ in self.db.scan(prefix=prefix))))

    def do_stats(self, line: str) -> None:
        """stats: the database's statistics (top-level numbers)."""
        for name, value in sorted(self.db.stats().items()):
            if isinstance(value, (int, float, str)):
                self._say(f"{name}: {value}")

    def do_flush(self, line: str) -> None:
        """flush: write the memtables to tables."""
        self.db.flush()
        self._say("OK")

    def do_compact(self, line: str) -> None:
        """compact: full compaction."""
        self.db.compact()
        self._say("OK")

    def do_quit(self, line: str) -> bool:
        """quit: leave the shell."""
        return True

    do_exit = do_quit

    def do_EOF(self, line: str) -> bool:
        if self.use_rawinput:
            self._say("")
        return True

    # --- history ----------------------------------------------------------------------------------
    def cmdloop(self, intro: Any = None) -> None:
        rl = None
        if self.use_rawinput:
            try:
                import readline as rl
                rl.set_completer_delims(" \t\n")
                if os.path.exists(HISTORY):
                    rl.read_history_file(HISTORY)
            except (ImportError, OSError):
                rl = None
        try:
            super().cmdloop(intro)
        except KeyboardInterrupt:
            self._say("")
        finally:
            if rl is not None:
                try:
                    rl.set_history_length(1000)
                    rl.write_history_file(HISTORY)
                except OSError:
                    pass


def run(db: Any, name: str = "") -> int:
    """The interactive loop on the terminal (stdin/stdout)."""
    Repl(db, name, None if sys.stdin.isatty() else sys.stdin).cmdloop()
    return 0
