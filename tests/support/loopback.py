"""Loopback servers for tests: an HTTP server on 127.0.0.1 (a free port), a request
handler that answers whole documents and logs nothing, a server run in a thread for as
long as a `with` block lasts, a raw TCP server for tests that script the bytes, and a
port that refuses connections for as long as one lasts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

Server = TypeVar("Server", bound=ThreadingHTTPServer)


class LoopbackServer(ThreadingHTTPServer):
    """Plain HTTP on 127.0.0.1, a thread per connection; `url` has no trailing slash."""

    daemon_threads = True
    # socketserver's default backlog is 5: a test's burst of concurrent clients (as a
    # fleet's would reach a real endpoint) overflowed it on a loaded machine, and a
    # connection reset then failed a client over for no reason of the test's.
    request_queue_size = 128

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class TcpServer:
    """A TCP server on 127.0.0.1 (a free port) that hands each connection, numbered from
    1 as they arrive, to `serve` in a thread of its own. A subclass sets what `serve`
    reads before it calls this `__init__`: connections may arrive at once."""

    def __init__(self) -> None:
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(
                target=self.serve, args=(connection, self.connections), daemon=True
            ).start()

    def serve(self, connection: socket.socket, number: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.listener.fileno() != -1:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close alone does not
            self.listener.close()
        self.accepting.join(5)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that writes no access log (test output stays clean)."""

    def send_document(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        """The whole answer: status, `headers`, a Content-Length, then `body`."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """`server` answering in a thread; shut down, closed and joined on the way out."""
    # A short poll: shutdown() waits for one, after every test.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses every connection while the block lasts: bound and not
    listening, so no other process can take it meanwhile (a port bound, closed and then
    used could be reused by anything that binds in between)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])
