"""A proxy in front of the emulator, in a process of its own: it delays every AWS call by
a fixed latency (an in-region round trip, as moto on loopback has none) and counts each by
service and operation, on the wire.

    python -m benchmarks.aws_proxy http://127.0.0.1:PORT   # prints the proxy's URL

The idea is that of tests/system/upstreams.py's counting proxy (the benchmark does not
import the tests): requests pass on unchanged, the Host header included, so SigV4 still
verifies at the emulator. Being another process, its CPU is not counted as the handler's.
Control (not forwarded): `POST /__proxy/delay` with the delay in milliseconds as the body;
`POST /__proxy/take` answers the calls counted since the last take, as JSON;
`POST /__proxy/dynamodb` with a URL as the body sends DynamoDB's calls there from then on
(the emulator's copy that serves DynamoDB apart, benchmarks/split_emulator.py);
`POST /__proxy/stall` with an operation as the body (`kms:Sign`) holds every call of it
unanswered until the next stall (an empty body: none), which closes their connections
without an answer (an upstream that stopped answering, for the deadline's figures).
"""

from __future__ import annotations

import collections
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from urllib3.util.wait import wait_for_read

CONTROL = "/__proxy/"
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def operation(headers: Any, path: str, body: bytes) -> str:
    """`kms:Sign`, `dynamodb:TransactWriteItems`, `sts:GetCallerIdentity`, else the path."""
    target = headers.get("X-Amz-Target")
    if target:  # JSON protocols: `TrentService.Sign`, `DynamoDB_20120810.PutItem`
        prefix, _, name = target.partition(".")
        service = {"TrentService": "kms"}.get(prefix, prefix.split("_")[0].lower())
        return f"{service}:{name}"
    query = parse_qs(urlsplit(path).query) or parse_qs(body.decode("latin-1"))
    if "Action" in query:  # the query protocol: STS, IAM
        return "sts:" + query["Action"][0]
    return f"other:{path.split('?')[0]}"


class AwsProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: str) -> None:
        self.target = urlsplit(target)
        self.dynamodb_target = self.target
        self.delay_seconds = 0.0
        self.calls: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.stalled = ""  # the operation held unanswered, if any
        self.stall_ends = threading.Event()  # set when that stall ends
        self.upstream = _Upstream()
        super().__init__(("127.0.0.1", 0), _Forward)

    def connection(self, target: SplitResult) -> http.client.HTTPConnection:
        """This thread's kept-alive connection to `target`; a new one if the emulator has
        closed it while it sat idle (it then reads as ready: the end of the stream)."""
        connections = self.upstream.connections
        connection = connections.get(target.netloc)
        if connection is not None and _closed_by_peer(connection):
            self.drop(target)
            connection = None
        if connection is None:
            assert target.hostname is not None  # the target is an absolute http URL
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            connections[target.netloc] = connection
        return connection

    def drop(self, target: SplitResult) -> None:
        connection = self.upstream.connections.pop(target.netloc, None)
        if connection is not None:
            connection.close()

    def drop_all(self) -> None:
        """Closes this thread's connections (its client has gone: the thread ends)."""
        for connection in self.upstream.connections.values():
            connection.close()
        self.upstream.connections.clear()


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection has something to read: from a server that answered
    in full, only its closing (or a reset). Polled without waiting, nothing consumed; a
    connection closed on our side (after `Connection: close`) is reopened by http.client."""
    return connection.sock is not None and wait_for_read(connection.sock, timeout=0)


class _Upstream(threading.local):
    """One kept-alive connection per serving thread and upstream (by host:port)."""

    def __init__(self) -> None:
        self.connections: dict[str, http.client.HTTPConnection] = {}


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: with Nagle on, the body waits for the client's
    # delayed ACK (40 ms on Linux), a stall no AWS endpoint has.
    disable_nagle_algorithm = True
    server: AwsProxy

    def _any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.startswith(CONTROL):
            self._answer(200, [("Content-Type", "application/json")], self._control(body))
            return
        called = operation(self.headers, self.path, body)
        with self.server.lock:
            self.server.calls[called] += 1
            stall_ends = self.server.stall_ends if called == self.server.stalled else None
        if stall_ends is not None:
            stall_ends.wait()
            self.close_connection = True  # never answered: the caller gave up meanwhile
            return
        if self.server.delay_seconds:
            time.sleep(self.server.delay_seconds)
        dynamodb = self.headers.get("X-Amz-Target", "").startswith("DynamoDB_")
        target = self.server.dynamodb_target if dynamodb else self.server.target
        status, headers, payload = self._forward(target, body)
        self._answer(status, headers, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.drop_all()

    def _control(self, body: bytes) -> bytes:
        if self.path == CONTROL + "delay":
            self.server.delay_seconds = float(body) / 1000
            return b"{}"
        if self.path == CONTROL + "dynamodb":
            self.server.dynamodb_target = urlsplit(body.decode())
            return b"{}"
        if self.path == CONTROL + "stall":
            with self.server.lock:
                self.server.stall_ends.set()
                self.server.stalled, self.server.stall_ends = body.decode(), threading.Event()
            return b"{}"
        with self.server.lock:
            calls, self.server.calls = self.server.calls, collections.Counter()
        return json.dumps(dict(calls)).encode()

    def _forward(
        self, target: SplitResult, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        # Never sent twice: a write that reached the emulator would then be a replay.
        # `connection` has already replaced a connection the emulator closed while idle.
        connection = self.server.connection(target)
        try:
            connection.putrequest(self.command, self.path, skip_host=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        except (http.client.HTTPException, OSError):
            self.server.drop(target)
            raise

    def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ProxyProcess:
    """The proxy as a subprocess, and its control calls."""

    def __init__(self, target: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.aws_proxy", target],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url:
            self.stop()
            raise RuntimeError("the AWS proxy did not start")

    def _post(self, what: str, body: bytes) -> Any:
        url = f"{self.url}{CONTROL}{what}"
        request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def set_delay(self, milliseconds: float) -> None:
        self._post("delay", str(milliseconds).encode())

    def send_dynamodb_to(self, url: str) -> None:
        self._post("dynamodb", url.encode())

    def stall(self, operation: str) -> None:
        """Hold every `operation` call (`kms:Sign`) unanswered from now on; "" ends it."""
        self._post("stall", operation.encode())

    def take(self) -> dict[str, int]:
        """The calls counted since the last take, by `service:Operation`."""
        return dict(self._post("take", b""))

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)


def main() -> None:
    proxy = AwsProxy(sys.argv[1])
    print(f"http://127.0.0.1:{proxy.server_address[1]}", flush=True)
    proxy.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
