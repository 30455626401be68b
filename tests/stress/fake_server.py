"""A deliberately broken stand-in for a database, for the planted-bug test:
a small RESP2 server (threads, in the test's process) holding a dict, that
answers +OK to every SET but drops every ``drop_every``-th one. The stress
harness must catch it.

Commands: HELLO (RESP2 or RESP3), PING, GET, SET, DEL, MGET, DBSIZE, and
CLIENT/SELECT answered +OK (redis-py sends CLIENT SETINFO on connect). ``drop_every=0`` makes it a correct store,
so that a test can show the harness passes it.
"""

from __future__ import annotations

import socketserver
import threading

__all__ = ["FakeServer"]


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _read_command(self) -> list[bytes] | None:
        line = self.rfile.readline()
        if not line:
            return None
        if not line.startswith(b"*"):
            return line.split()
        argv = []
        for _ in range(int(line[1:])):
            size = int(self.rfile.readline()[1:])
            argv.append(self.rfile.read(size + 2)[:-2])
        return argv

    resp3 = False

    def _bulk(self, v: bytes | None) -> bytes:
        if v is None:
            return b"_\r\n" if self.resp3 else b"$-1\r\n"
        return b"$%d\r\n%s\r\n" % (len(v), v)

    def handle(self) -> None:
        srv = self.server
        while True:
            try:
                argv = self._read_command()
            except (OSError, ValueError):
                return
            if not argv:
                return
            cmd = argv[0].upper()
            with srv.lock:
                if cmd == b"PING":
                    out = b"+PONG\r\n"
                elif cmd == b"HELLO":
                    self.resp3 = len(argv) > 1 and argv[1] == b"3"
                    out = (b"%1\r\n" if self.resp3 else b"*2\r\n") + b"$5\r\nproto\r\n:%s\r\n" % (argv[1] if
                                                                                               len(argv) > 1 else b"2")
                elif cmd == b"GET":
                    out = self._bulk(srv.data.get(argv[1]))
                elif cmd == b"MGET":
                    out = b"*%d\r\n" % (len(argv) - 1) + b"".join(self._bulk(srv.data.get(k)) for k in argv[1:])
                elif cmd == b"SET":
                    srv.sets += 1
                    if srv.drop_every and srv.sets % srv.drop_every == 0:
                        srv.dropped += 1          # the planted bug: acknowledged, never stored
                    else:
                        srv.data[argv[1]] = argv[2]
                    out = b"+OK\r\n"
                elif cmd == b"DEL":
                    out = b":%d\r\n" % sum(srv.data.pop(k, None) is not None for k in argv[1:])
                elif cmd == b"DBSIZE":
                    out = b":%d\r\n" % len(srv.data)
                elif cmd in (b"CLIENT", b"SELECT"):
                    out = b"+OK\r\n"
                else:
                    out = b"-ERR unknown command '%s'\r\n" % argv[0]
            try:
                self.wfile.write(out)
            except OSError:
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, drop_every: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.data: dict[bytes, bytes] = {}
        self.drop_every = drop_every
        self.sets = 0
        self.dropped = 0


class FakeServer:
    """``with FakeServer(drop_every=10) as s: s.url``"""

    def __init__(self, drop_every: int = 10) -> None:
        self._server = _Server(drop_every)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-server", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._server.server_address[1]}"

    @property
    def dropped(self) -> int:
        return self._server.dropped

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
