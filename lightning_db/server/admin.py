"""Connection and server commands: PING, HELLO, CLIENT, INFO, CONFIG, COMMAND, ...

Which process runs what: a front-end process (see commands.py). What these
report is the front end's own view: CLIENT LIST and INFO's clients and
stats sections cover the connections of the front end that answers (the
port is shared by several), and CONFIG SET changes that front end only.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import __version__
from .commands import (
    COMMANDS,
    Context,
    command,
    err_arity,
    err_syntax,
    lookup,
    parse_int,
)
from .pattern import matcher
from .resp import OK, PONG, ReplyError, Status, Verbatim
from .state import ClientState, ServerState

__all__ = ["REDIS_VERSION", "client_line", "info_text"]

REDIS_VERSION = "7.2.0"          # the Redis version whose commands and replies we follow


def _unknown_sub(argv: list[bytes]) -> ReplyError:
    return ReplyError(f"ERR unknown subcommand '{argv[1].decode('utf-8', 'replace')[:128]}'. "
                      f"Try {argv[0].decode('utf-8', 'replace').upper()} HELP.")


def _help(name: str, lines: list[str]) -> list[Status]:
    return [Status(s) for s in [f"{name} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:", *lines,
                                "HELP", "    Print this help."]]


# --- connection -------------------------------------------------------------------------------


@command("ping", -1, "fast", group="connection", inline=True, summary="Returns the server's liveliness response.")
def ping(ctx: Context, argv: list[bytes]) -> Any:
    if len(argv) > 2:
        raise err_arity("ping")
    return argv[1] if len(argv) == 2 else PONG


@command("echo", 2, "fast", group="connection", inline=True, summary="Returns the given string.")
def echo(ctx: Context, argv: list[bytes]) -> Any:
    return argv[1]


@command("select", 2, "loading stale fast", group="connection", inline=True,
         summary="Changes the selected database.")
def select(ctx: Context, argv: list[bytes]) -> Any:
    if parse_int(argv[1]) != 0:
        raise ReplyError("ERR DB index is out of range")
    return OK


@command("quit", -1, "noscript loading stale fast no-auth allow-busy", group="connection", inline=True,
         summary="Closes the connection.")
def quit_(ctx: Context, argv: list[bytes]) -> Any:
    ctx.client.closing = True
    return OK


def _auth(user: bytes) -> None:
    if user != b"default":
        raise ReplyError("WRONGPASS invalid username-password pair or user is disabled.")


@command("auth", -2, "noscript loading stale fast no-auth allow-busy", group="connection", inline=True,
         since="1.0.0", summary="Authenticates the connection.")
def auth(ctx: Context, argv: list[bytes]) -> Any:
    if len(argv) > 3:
        raise err_syntax()
    if len(argv) == 2:
        raise ReplyError("ERR AUTH <password> called without any password configured for the default user. "
                         "Are you sure your configuration is correct?")
    _auth(argv[1])
    return OK


@command("hello", -1, "noscript loading stale fast no-auth allow-busy", group="connection", inline=True,
         since="6.0.0", summary="Handshakes with the Redis server.")
def hello(ctx: Context, argv: list[bytes]) -> Any:
    c = ctx.client
    proto = c.resp
    if len(argv) >= 2:
        proto = parse_int(argv[1], lambda: ReplyError("ERR Protocol version is not an integer or out of range"))
        if proto not in (2, 3):
            raise ReplyError("NOPROTO unsupported protocol version")
    name = None
    i = 2
    while i < len(argv):
        opt, more = argv[i].upper(), len(argv) - i - 1
        if opt == b"AUTH" and more >= 2:
            _auth(argv[i + 1])
            i += 3
        elif opt == b"SETNAME" and more >= 1:
            name = _check_name(argv[i + 1])
            i += 2
        else:
            raise ReplyError(f"ERR Syntax error in HELLO option '{argv[i].decode('utf-8', 'replace')}'")
    if name is not None:
        c.name = name or None
    c.resp = proto
    return {b"server": b"redis", b"version": REDIS_VERSION.encode(), b"proto": proto, b"id": c.id,
            b"mode": b"standalone", b"role": b"master", b"modules": []}


@command("reset", 1, "noscript loading stale fast no-auth allow-busy", group="connection", inline=True,
         since="6.2.0", summary="Resets the connection.")
def reset(ctx: Context, argv: list[bytes]) -> Any:
    c = ctx.client
    c.reset_multi()
    c.resp = 2
    c.name = None
    c.cursors.clear()
    return Status("RESET")


@command("time", 1, "loading stale fast", group="server", inline=True, since="2.6.0",
         summary="Returns the server time.")
def time_(ctx: Context, argv: list[bytes]) -> Any:
    us = time.time_ns() // 1000
    return [b"%d" % (us // 1_000_000), b"%d" % (us % 1_000_000)]


# --- CLIENT -----------------------------------------------------------------------------------


def _check_name(name: bytes, what: str = "Client names") -> bytes:
    if any(b < 0x21 or b > 0x7E for b in name):
        raise ReplyError(f"ERR {what} cannot contain spaces, newlines or special characters.")
    return name


def client_line(c: ClientState, now: float, cmd: str | None = None) -> str:
    """One line of CLIENT LIST / CLIENT INFO (Redis 7.2 fields)."""
    name = (c.name or b"").decode("utf-8", "replace")
    return (f"id={c.id} addr={c.addr} laddr={c.laddr} fd={c.fd} name={name} age={int(now - c.created)} "
            f"idle={int(now - c.last_active)} flags={c.flags()} db=0 sub=0 psub=0 ssub=0 "
            f"multi={-1 if c.multi is None else len(c.multi)} qbuf={c.qbuf} qbuf-free=0 argv-mem=0 "
            f"multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={cmd or c.last_cmd} "
            f"user=default redir=-1 resp={c.resp} lib-name={c.lib_name.decode('utf-8', 'replace')} "
            f"lib-ver={c.lib_ver.decode('utf-8', 'replace')}\n")


@command("client", -2, "sentinel", group="connection", summary="A container for client connection commands.",
         since="2.4.0", inline=True)
def client(ctx: Context, argv: list[bytes]) -> Any:
    raise _unknown_sub(argv)


@command("client|id", 2, "noscript loading stale", group="connection", since="5.0.0", inline=True,
         summary="Returns the unique client ID of the connection.")
def client_id(ctx: Context, argv: list[bytes]) -> Any:
    return ctx.client.id


@command("client|setname", 3, "noscript loading stale", group="connection", since="2.6.9", inline=True,
         summary="Sets the connection name.")
def client_setname(ctx: Context, argv: list[bytes]) -> Any:
    ctx.client.name = _check_name(argv[2]) or None
    return OK


@command("client|getname", 2, "noscript loading stale", group="connection", since="2.6.9", inline=True,
         summary="Returns the name of the connection.")
def client_getname(ctx: Context, argv: list[bytes]) -> Any:
    return ctx.client.name


@command("client|setinfo", 4, "noscript loading stale", group="connection", since="7.2.0", inline=True,
         summary="Sets information specific to the client or connection.")
def client_setinfo(ctx: Context, argv: list[bytes]) -> Any:
    attr = argv[2].lower()
    if attr == b"lib-name":
        ctx.client.lib_name = _check_name(argv[3], "lib-name")
    elif attr == b"lib-ver":
        ctx.client.lib_ver = _check_name(argv[3], "lib-ver")
    else:
        raise ReplyError(f"ERR Unrecognized option '{argv[2].decode('utf-8', 'replace')}'")
    return OK


@command("client|list", -2, "admin noscript loading stale", group="connection", since="2.4.0", inline=True,
         complexity="O(N)", summary="Lists open connections.")
def client_list(ctx: Context, argv: list[bytes]) -> Any:
    clients = list(ctx.server.clients.values())
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"TYPE" and i + 1 < len(argv):
            kind = argv[i + 1].lower()
            if kind not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
                raise ReplyError(f"ERR Unknown client type '{argv[i + 1].decode('utf-8', 'replace')}'")
            if kind != b"normal":
                clients = []
            i += 2
        elif opt == b"ID" and i + 1 < len(argv):
            ids = {parse_int(a, lambda: ReplyError("ERR Invalid client ID")) for a in argv[i + 1:]}
            clients = [c for c in clients if c.id in ids]
            break
        else:
            raise err_syntax()
    now = time.time()
    me = ctx.client
    return Verbatim("".join(client_line(c, now, "client|list" if c is me else None)
                            for c in sorted(clients, key=lambda c: c.id)))


@command("client|info", 2, "noscript loading stale", group="connection", since="6.2.0", inline=True,
         summary="Returns information about the connection.")
def client_info(ctx: Context, argv: list[bytes]) -> Any:
    return Verbatim(client_line(ctx.client, time.time(), "client|info"))


@command("client|no-evict", 3, "admin noscript loading stale", group="connection", since="7.0.0", inline=True,
         summary="Sets the client eviction mode of the connection.")
def client_no_evict(ctx: Context, argv: list[bytes]) -> Any:
    if argv[2].lower() not in (b"on", b"off"):
        raise err_syntax()
    return OK


@command("client|help", 2, "loading stale", group="connection", since="5.0.0", inline=True,
         summary="Returns helpful text about the different subcommands.")
def client_help(ctx: Context, argv: list[bytes]) -> Any:
    return _help("CLIENT", ["ID", "SETNAME <name>", "GETNAME", "SETINFO <LIB-NAME|LIB-VER> <value>",
                            "LIST [TYPE NORMAL] [ID <id> [<id> ...]]", "INFO", "NO-EVICT <ON|OFF>"])


# --- INFO -------------------------------------------------------------------------------------

_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication", "keyspace")


def _rss() -> int:
    try:
        import psutil
        return int(psutil.Process().memory_info().rss)
    except Exception:          # noqa: BLE001 - INFO must answer anyway
        return 0


def info_text(server: ServerState, sections: list[str], count_keys: Callable[[], int]) -> str:
    """INFO's text for *sections* (Redis layout: ``# Name`` then ``field:value``)."""
    s, now = server.settings, time.time()
    up = int(now - server.started)
    out: list[str] = []
    for name in sections:
        if name == "server":
            fields = {"redis_version": REDIS_VERSION, "lightning_db_version": __version__,
                      "redis_mode": "standalone", "os": f"{platform.system()} {platform.release()} "
                      f"{platform.machine()}", "arch_bits": 64, "multiplexing_api": server.loop_api,
                      "loop_sched": server.loop_sched,
                      "python_version": platform.python_version(), "process_id": server.pid,
                      "frontend_index": s.index, "frontends": s.frontends, "tcp_port": s.port,
                      "server_time_usec": time.time_ns() // 1000, "uptime_in_seconds": up,
                      "uptime_in_days": up // 86400, "executable": sys.executable, "config_file": "",
                      "data_dir": s.data_dir}
        elif name == "clients":
            fields = {"connected_clients": len(server.clients), "maxclients": s.maxclients,
                      "blocked_clients": 0}
        elif name == "memory":
            rss = _rss()
            fields = {"used_memory": rss, "used_memory_human": f"{rss / 1048576:.2f}M", "used_memory_rss": rss,
                      "maxmemory": 0, "maxmemory_policy": "noeviction"}
        elif name == "persistence":
            fields = {"loading": 0, "async_loading": 0, "rdb_bgsave_in_progress": 0, "aof_enabled": 0}
        elif name == "stats":
            fields = dict(server.stats)
            if server.set_writer is not None:
                fields.update({f"setwriter_{k}": v for k, v in server.set_writer.stats().items()})
        elif name == "replication":
            fields = {"role": "master", "connected_slaves": 0}
        elif name == "keyspace":
            n = count_keys()
            fields = {"db0": f"keys={n}"} if n else {}
        else:
            continue
        out.append(f"# {name.capitalize()}\r\n" + "".join(f"{k}:{v}\r\n" for k, v in fields.items()))
    return "\r\n".join(out)


@command("info", -1, "loading stale", group="server", complexity="O(N) for the keyspace section",
         summary="Returns information and statistics about the server.")
def info(ctx: Context, argv: list[bytes]) -> Any:
    asked = [a.decode("utf-8", "replace").lower() for a in argv[1:]]
    if not asked or any(a in ("default", "all", "everything") for a in asked):
        sections = list(_SECTIONS)
    else:
        sections = [s for s in _SECTIONS if s in asked]
    return Verbatim(info_text(ctx.server, sections, lambda: sum(1 for _ in ctx.store.scan())))


# --- CONFIG -----------------------------------------------------------------------------------


def _params(server: ServerState) -> dict[str, str]:
    s = server.settings
    db = server.db
    shards = len(getattr(db, "refs", ())) or 0
    return {"bind": s.host, "port": str(s.port), "databases": "1", "maxclients": str(s.maxclients),
            "timeout": str(s.timeout), "save": "", "appendonly": "no", "maxmemory": "0",
            "maxmemory-policy": "noeviction", "proto-max-bulk-len": str(s.max_bulk),
            "client-query-buffer-limit": str(s.max_buffer), "dir": s.data_dir, "io-threads": "1",
            "notify-keyspace-events": "", "cluster-enabled": "no", "shards": str(shards),
            "frontends": str(s.frontends), "sync": str(db.config.sync),
            "max-key-size": str(db.config.max_key_size), "max-value-size": str(db.config.max_value_size)}


_MUTABLE = {"timeout": 0, "maxclients": 1}     # name -> smallest value


@command("config", -2, "", group="server", since="2.0.0", summary="A container for server configuration commands.",
         inline=True)
def config(ctx: Context, argv: list[bytes]) -> Any:
    raise _unknown_sub(argv)


@command("config|get", -3, "admin noscript loading stale", group="server", since="2.0.0", inline=True,
         complexity="O(N) when N is the number of configuration parameters provided",
         summary="Returns the effective values of configuration parameters.")
def config_get(ctx: Context, argv: list[bytes]) -> Any:
    params = _params(ctx.server)
    out: dict[bytes, bytes] = {}
    for pattern in argv[2:]:
        match = matcher(pattern.lower())
        for k, v in params.items():
            if match(k.encode()):
                out[k.encode()] = v.encode()
    return out


@command("config|set", -4, "admin noscript loading stale", group="server", since="2.0.0", inline=True,
         complexity="O(N) when N is the number of configuration parameters provided",
         summary="Sets configuration parameters in-flight.")
def config_set(ctx: Context, argv: list[bytes]) -> Any:
    if len(argv) % 2:
        raise err_arity("config|set")
    known = _params(ctx.server)
    changes: dict[str, int] = {}
    for k, v in zip(argv[2::2], argv[3::2]):
        name = k.decode("utf-8", "replace").lower()
        if name not in known:
            raise ReplyError(f"ERR Unknown option or number of arguments for CONFIG SET - '{name}'")
        if name not in _MUTABLE:
            raise ReplyError(f"ERR CONFIG SET failed (possibly related to argument '{name}') - "
                             "can't set immutable config")
        try:
            n = parse_int(v)
        except ReplyError:
            raise ReplyError(f"ERR CONFIG SET failed (possibly related to argument '{name}') - "
                             "argument couldn't be parsed into an integer") from None
        if n < _MUTABLE[name]:
            raise ReplyError(f"ERR CONFIG SET failed (possibly related to argument '{name}') - "
                             f"argument must be between {_MUTABLE[name]} and 2147483647 inclusive")
        changes[name] = n
    for name, n in changes.items():
        setattr(ctx.server.settings, name, n)
    return OK


@command("config|resetstat", 2, "admin noscript loading stale", group="server", since="2.0.0", inline=True,
         summary="Resets the server's statistics.")
def config_resetstat(ctx: Context, argv: list[bytes]) -> Any:
    ctx.server.reset_stats()
    return OK


@command("config|rewrite", 2, "admin noscript loading stale", group="server", since="2.8.0", inline=True,
         summary="Persists the effective configuration to file.")
def config_rewrite(ctx: Context, argv: list[bytes]) -> Any:
    raise ReplyError("ERR The server is running without a config file")


@command("config|help", 2, "loading stale", group="server", since="5.0.0", inline=True,
         summary="Returns helpful text about the different subcommands.")
def config_help(ctx: Context, argv: list[bytes]) -> Any:
    return _help("CONFIG", ["GET <pattern>", "SET <directive> <value>", "RESETSTAT", "REWRITE"])


# --- COMMAND ----------------------------------------------------------------------------------


@command("command", -1, "loading stale", group="server", since="2.8.13", complexity="O(N)", inline=True,
         summary="Returns detailed information about all commands.")
def command_(ctx: Context, argv: list[bytes]) -> Any:
    if len(argv) > 1:
        raise _unknown_sub(argv)
    return [c.info() for c in COMMANDS.values()]


def _find(name: bytes) -> Any:
    parent, _, sub = name.lower().partition(b"|")
    cmd = lookup(parent)
    if cmd is not None and sub:
        cmd = cmd.subcommands.get(sub)
    return cmd


@command("command|count", 2, "loading stale", group="server", since="2.8.13", inline=True,
         summary="Returns a count of commands.")
def command_count(ctx: Context, argv: list[bytes]) -> Any:
    return len(COMMANDS)


@command("command|info", -2, "loading stale", group="server", since="2.8.13", complexity="O(N)", inline=True,
         summary="Returns information about one, multiple or all commands.")
def command_info(ctx: Context, argv: list[bytes]) -> Any:
    if len(argv) == 2:
        return [c.info() for c in COMMANDS.values()]
    return [None if (c := _find(a)) is None else c.info() for a in argv[2:]]


@command("command|docs", -2, "loading stale", group="server", since="7.0.0", complexity="O(N)", inline=True,
         summary="Returns documentary information about one, multiple or all commands.")
def command_docs(ctx: Context, argv: list[bytes]) -> Any:
    if len(argv) == 2:
        return {c.name.encode(): c.docs() for c in COMMANDS.values()}
    return {c.name.encode(): c.docs() for a in argv[2:] if (c := _find(a)) is not None}


@command("command|list", -2, "loading stale", group="server", since="7.0.0", complexity="O(N)", inline=True,
         summary="Returns a list of command names.")
def command_list(ctx: Context, argv: list[bytes]) -> Any:
    names = [c.name.encode() for c in COMMANDS.values()]
    if len(argv) == 2:
        return names
    if len(argv) != 5 or argv[2].upper() != b"FILTERBY":
        raise err_syntax()
    kind, arg = argv[3].upper(), argv[4]
    if kind == b"PATTERN":
        match = matcher(arg.lower())
        return [n for n in names if match(n)]
    if kind == b"ACLCAT":
        cat = b"@" + arg.lower().lstrip(b"@")
        return [c.name.encode() for c in COMMANDS.values() if cat.decode() in c.categories]
    if kind == b"MODULE":
        return []
    raise err_syntax()


@command("command|help", 2, "loading stale", group="server", since="5.0.0", inline=True,
         summary="Returns helpful text about the different subcommands.")
def command_help(ctx: Context, argv: list[bytes]) -> Any:
    return _help("COMMAND", ["(no subcommand)", "COUNT", "DOCS [<command-name> ...]",
                             "INFO [<command-name> ...]", "LIST [FILTERBY (MODULE|ACLCAT|PATTERN) <arg>]"])
