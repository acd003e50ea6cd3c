"""What the proxy's system tests put around it (no tests of its own here): an HTTPS
upstream (a throwaway CA, tests/support/tls.py) that records what it gets, a TCP relay in
front of tokex that can be cut, and a proxy started on loopback for a `with` block."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.loopback import QuietHandler, TcpServer, serving
from tests.support.tls import HttpsServer, Pki
from tokex.local.runner import LocalSystem
from tokex.proxy import JsonLog, ProxyConfig, ProxyServer, RouteTokens

DEMO_AUDIENCE, DEMO_SCOPE = "demo-api", "demo:read"
STREAM_BLOCK = 64 * 1024


@dataclass(frozen=True)
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_length: int
    body_sha256: str
    peer_port: int

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def token(self) -> str:
        (authorization,) = self.header("Authorization")
        return authorization.removeprefix("Bearer ")


@dataclass
class Upstream:
    """What the HTTPS upstream got, and how it answers: `refuse` (tokens answered 401),
    `/big/<bytes>` (a streamed body of that size), `/slow` (waits for `release`)."""

    url: str = ""
    server: HttpsServer | None = None
    received: list[Received] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def connections(self) -> int:
        assert self.server is not None
        return self.server.connections


def pattern(size: int) -> Iterator[bytes]:
    """`size` bytes of a repeating pattern, block by block (never held whole)."""
    block = bytes(range(256)) * (STREAM_BLOCK // 256)
    while size > 0:
        yield block[: min(size, len(block))]
        size -= len(block)


def digest(blocks: Iterator[bytes]) -> tuple[int, str]:
    hasher, length = hashlib.sha256(), 0
    for block in blocks:
        hasher.update(block)
        length += len(block)
    return length, hasher.hexdigest()


def request_body(handler: QuietHandler) -> Iterator[bytes]:
    """The body as framed (Content-Length or chunked), block by block."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        while size := int(handler.rfile.readline().split(b";")[0], 16):
            left = size
            while left:
                data = handler.rfile.read(min(left, STREAM_BLOCK))
                left -= len(data)
                yield data
            handler.rfile.readline()
        while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return
    left = int(handler.headers.get("Content-Length", 0))
    while left:
        data = handler.rfile.read(min(left, STREAM_BLOCK))
        left -= len(data)
        yield data


@contextlib.contextmanager
def https_upstream(pki: Pki) -> Iterator[Upstream]:
    upstream = Upstream()

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def handle_one_request(self) -> None:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if self.parse_request():
                self.answer()

        def answer(self) -> None:
            length, sha = digest(request_body(self))
            got = Received(
                self.command,
                self.path,
                list(self.headers.items()),
                length,
                sha,
                self.client_address[1],
            )
            with upstream.lock:
                upstream.received.append(got)
            upstream.arrived.set()
            if got.header("Authorization") and got.token in upstream.refuse:
                return self.send_document(401, b'{"message":"Unauthorized"}', {})
            if self.path.startswith("/big/"):
                return self.stream(int(self.path.removeprefix("/big/")))
            if self.path == "/slow":
                upstream.release.wait(30)
            echo = {"target": self.path, "body_length": length, "body_sha256": sha}
            hop = {"Connection": "X-Hop-Reply", "X-Hop-Reply": "1", "Keep-Alive": "timeout=5"}
            headers = {"Content-Type": "application/json", **hop, "X-End-To-End": "kept"}
            self.send_document(200, json.dumps(echo).encode(), headers)

        def stream(self, size: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for block in pattern(size):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")

    with serving(HttpsServer(Handler, pki.server)) as server:
        upstream.url, upstream.server = server.url, server
        yield upstream


class Relay(TcpServer):
    """A TCP relay to `target` (host, port): up, it passes bytes both ways; down, it
    closes every connection at once (what tokex unreachable looks like to a client)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        super().__init__()

    def serve(self, client: socket.socket, number: int) -> None:
        if not self.up:
            client.close()
            return
        server = socket.create_connection(self.target)
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(STREAM_BLOCK):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def route_document(
    upstream: Upstream, pki: Pki, *, audience: str = DEMO_AUDIENCE, scopes=(DEMO_SCOPE,)
) -> dict[str, Any]:
    return {
        "prefix": "/",
        "upstream": upstream.url,
        "audience": audience,
        "scopes": list(scopes),
        "ca_file": str(pki.ca_file),
    }


def proxy_config(
    endpoint: str, *routes: dict[str, Any], secret_file: Path | None = None
) -> ProxyConfig:
    document: dict[str, Any] = {
        "endpoint": endpoint,
        "listen": "127.0.0.1:0",
        "routes": list(routes),
    }
    if secret_file is not None:
        document["secret_file"] = str(secret_file)
    return ProxyConfig.from_document(document, base_dir=Path.cwd(), environ={})


@dataclass
class RunningProxy:
    server: ProxyServer
    tokens: RouteTokens
    log: io.StringIO

    @property
    def port(self) -> int:
        return self.server.addresses["listen"][1]

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: Any = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = self.connection()
        try:
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def request_lines(self, count: int) -> list[dict[str, Any]]:
        """The first `count` request lines of the log, waiting for them (a line is written
        once its answer is sent, so it may come after the application has it)."""
        deadline = time.monotonic() + 10
        while True:
            lines = [json.loads(line) for line in self.log.getvalue().splitlines()]
            requests = [line for line in lines if line["event"] == "request"]
            if len(requests) >= count or time.monotonic() > deadline:
                return requests[:count]
            time.sleep(0.01)


@contextlib.contextmanager
def running_proxy(
    system: LocalSystem,
    config: ProxyConfig,
    session: Any,
    *,
    secret: str | None = "the-test-secret",
    **token_options: Any,
) -> Iterator[RunningProxy]:
    """The proxy with a RouteTokens exchanging as `session` (the sigv4 evidence), bound to
    the system's issuer; its log kept in memory."""
    log = io.StringIO()
    journal = JsonLog(log)
    tokens = RouteTokens(
        config, log=journal, session=session, issuer=system.issuer, **token_options
    )
    server = ProxyServer(config, token_source=tokens, secret=secret, log=journal)
    server.start()
    try:
        yield RunningProxy(server, tokens, log)
    finally:
        server.shutdown(5)
