"""Loopback stand-ins for AWS endpoints: one that answers late (silent or dripping until
then), and a proxy in front of the emulator that counts every call it passes on (tests of
issue 9).

A handler under test reaches them the way local mode reaches the emulator: through
`AWS_ENDPOINT_URL[_<SERVICE>]` for its botocore clients and `TOKEX_STS_CONNECT_OVERRIDE`
for the forwarded STS request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.support.loopback import TcpServer

DRIP_INTERVAL_SECONDS = 0.5
# What a slow upstream sends once its hold is over: a success, were anyone still there.
LATE_HEADERS = b"Content-Type: application/x-amz-json-1.0\r\nContent-Length: 2\r\n\r\n{}"


class LateUpstream(TcpServer):
    """Answers every connection `hold` seconds late: `stalled` says nothing (nor reads the
    request) until then; `dripping` reads the request, sends a status line and then a
    header one byte every half second (each read of the client returns in time). Then the
    answer ends: 200 `{}`. `late_answers` counts the answers it began to send; `release`
    ends every hold without one."""

    def __init__(self, kind: str, hold: float) -> None:
        self.kind = kind
        self.hold = hold
        self.release = threading.Event()
        self.late_answers = 0
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, connection: socket.socket, number: int) -> None:
        with connection, contextlib.suppress(OSError):  # the client gave up: the point
            ends = time.monotonic() + self.hold
            dripping = self.kind == "dripping"
            if dripping:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            while (left := ends - time.monotonic()) > 0:
                if self.release.wait(min(left, DRIP_INTERVAL_SECONDS) if dripping else left):
                    return
                if dripping:
                    connection.sendall(b"a")
            with self._lock:  # counted before it is sent: a client that got it saw it counted
                self.late_answers += 1
            late = b"\r\n" + LATE_HEADERS if dripping else b"HTTP/1.1 200 OK\r\n" + LATE_HEADERS
            connection.sendall(late)


@contextlib.contextmanager
def late_upstream(kind: str, hold: float) -> Iterator[LateUpstream]:
    server = LateUpstream(kind, hold)
    try:
        yield server
    finally:
        server.release.set()
        server.stop()


Answer = tuple[int, list[tuple[str, str]], bytes]


class LoopbackHttpServer:
    """A threaded HTTP/1.1 server on loopback answering every POST with `answer`; `None`
    closes the connection without an answer."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler, bytes], Answer | None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answered = answer(self, body)
                if answered is None:
                    self.close_connection = True
                    return
                status, headers, payload = answered
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        serve = {"poll_interval": 0.05}
        threading.Thread(target=self._server.serve_forever, kwargs=serve, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class CountingProxy(LoopbackHttpServer):
    """Passes every request on to the emulator unchanged (the Host header included, so
    SigV4 signatures still verify there) and records which AWS operation it was:
    `TrentService.Sign`, `DynamoDB_20120810.TransactWriteItems`, `sts:GetCallerIdentity`.
    """

    def __init__(self, target: str) -> None:
        self.calls: list[str] = []
        self.held_together: list[str] = []
        # Operation -> the answer the proxy gives instead of the emulator's (`fail`).
        self._failing: dict[str, Answer] = {}
        self._held: tuple[frozenset[str], threading.Barrier] | None = None
        # Operation -> how many of its calls still go through before one answer is lost.
        self._losing: dict[str, int] = {}
        self._target = urlsplit(target)
        super().__init__(self._record_and_forward)

    def lose_an_answer(self, operation: str, *, after: int = 0) -> None:
        """The call to `operation` that comes after `after` more of them reaches the
        emulator, which acts on it, and its answer is lost: the connection closes."""
        self._losing[operation] = after

    def hold_together(self, *operations: str, timeout: float) -> None:
        """From now on, a call to one of `operations` waits (up to `timeout` seconds)
        until a call to each of the others has arrived too, then all go on; those that
        met are appended to `held_together`. Calls made one after the other never meet:
        the first waits out the timeout alone."""
        self._held = frozenset(operations), threading.Barrier(len(operations), timeout=timeout)

    def fail(self, operation: str, status: int, error_type: str) -> None:
        """From now on, every call to `operation` (a JSON-protocol target such as
        `TrentService.Sign`) is answered `status` with that AWS error, as the service
        answers when it fails; the emulator never sees it. `heal` ends it."""
        payload = json.dumps({"__type": error_type, "message": "injected by the test"}).encode()
        self._failing[operation] = (
            status,
            [("Content-Type", "application/x-amz-json-1.1")],
            payload,
        )

    def heal(self) -> None:
        self._failing.clear()
        self._losing.clear()

    def _record_and_forward(self, request: BaseHTTPRequestHandler, body: bytes) -> Answer | None:
        target = request.headers.get("X-Amz-Target")
        if target is None and body.startswith(b"Action="):
            target = "sts:" + body.split(b"&")[0].split(b"=")[1].decode()
        operation = target or f"{request.command} {request.path}"
        self.calls.append(operation)
        failing = self._failing.get(operation)
        if failing is not None:
            return failing
        if self._held is not None and operation in self._held[0]:
            with contextlib.suppress(threading.BrokenBarrierError):
                self._held[1].wait()
                self.held_together.append(operation)
        answer = self._forward(request, body)
        if self._losing.get(operation) == 0:
            del self._losing[operation]
            return None
        if operation in self._losing:
            self._losing[operation] -= 1
        return answer

    def _forward(self, request: BaseHTTPRequestHandler, body: bytes) -> Answer:
        connection = http.client.HTTPConnection(
            self._target.hostname, self._target.port, timeout=30
        )
        try:
            connection.putrequest(request.command, request.path, skip_host=True)
            for name, value in request.headers.items():
                if name.lower() != "content-length":
                    connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def handler_settings(self) -> dict[str, str]:
        """The handler settings that send its every AWS call through this proxy (the
        forwarded STS request included)."""
        return {"AWS_ENDPOINT_URL": self.url, "TOKEX_STS_CONNECT_OVERRIDE": self.url}

    def take(self) -> list[str]:
        """The calls recorded since the last `take`."""
        calls, self.calls = self.calls, []
        return calls
