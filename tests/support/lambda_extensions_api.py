"""An emulation of the Lambda Extensions API (2020-01-01) for tests, on 127.0.0.1.

No package on PyPI emulates this API (the Runtime Interface Emulator is a Go binary
outside the package registries; the Python packages that mention Lambda extensions are
clients or local invokers), so this follows AWS's published reference (AWS Lambda
Developer Guide, "Extensions API reference"):

- `POST register` with `Lambda-Extension-Name` and `{"events": [...]}` (INVOKE, SHUTDOWN)
  answers 200 with a `Lambda-Extension-Identifier` header and `{"functionName",
  "functionVersion", "handler"}`; registering after the Init phase is refused (403);
- `GET event/next` with that identifier blocks until the platform sends an event:
  `{"eventType": "INVOKE", "deadlineMs", "requestId", "invokedFunctionArn", "tracing"}` or
  `{"eventType": "SHUTDOWN", "shutdownReason", "deadlineMs"}`, each with a
  `Lambda-Extension-Event-Identifier` header; an unknown identifier is refused (403);
- `POST init/error` and `exit/error` with the identifier and
  `Lambda-Extension-Function-Error-Type` answer 202 `{"status": "OK"}`.

Everything the extension sends is recorded (`calls`). The test plays the platform:
`wait_until_waiting` (the extension is blocked in `next`: its Init phase, or the last
event, is done), `invoke`, `shutdown`, and `exit_status_by` its deadline: "If the runtime
or an extension does not respond to the Shutdown event within the limit, Lambda ends the
process using a SIGKILL signal" (the reference's Shutdown phase; the limit is 2,000 ms
with external extensions, the deadline `shutdown` sends by default).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2020-01-01/extension/"
EVENT_TYPES = frozenset({"INVOKE", "SHUTDOWN"})
FUNCTION_NAME = "tokex-demo-a"
FUNCTION_ARN = f"arn:aws:lambda:eu-west-1:123456789012:function:{FUNCTION_NAME}"


@dataclass(frozen=True)
class Call:
    """One request the extension made."""

    method: str
    path: str  # after /2020-01-01/extension/
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Extension:
    """A registered extension, as the platform tracks it."""

    name: str
    identifier: str
    events: frozenset[str]
    inbox: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    waiting: int = 0  # `next` calls pending
    delivered: list[dict[str, Any]] = field(default_factory=list)


class ExtensionsApiEmulator:
    """The Extensions API on a free loopback port; use as a context manager."""

    def __init__(self, *, function_name: str = FUNCTION_NAME) -> None:
        self.function_name = function_name
        self.calls: list[Call] = []
        self.extensions: dict[str, Extension] = {}
        self.init_done = False  # set once the platform sends its first event
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def runtime_api(self) -> str:
        """The value for `AWS_LAMBDA_RUNTIME_API`."""
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> ExtensionsApiEmulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- what the test asks ---------------------------------------------------------

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == path]

    def only_extension(self) -> Extension:
        with self._lock:
            assert len(self.extensions) == 1, f"registered: {sorted(self.extensions)}"
            return next(iter(self.extensions.values()))

    def wait_until_waiting(self, timeout: float) -> Extension:
        """The one registered extension, once it is blocked in `event/next` (Lambda's
        sign that it finished its Init phase, or the event it was last given)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not (
                len(self.extensions) == 1 and next(iter(self.extensions.values())).waiting > 0
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no extension waiting for an event after {timeout} s; calls "
                        f"(an error report's body says why): "
                        f"{[(c.method, c.path, c.body) for c in self.calls]}"
                    )
                self._lock.wait(left)
            return next(iter(self.extensions.values()))

    # --- the platform's side ----------------------------------------------------------

    def invoke(self, *, timeout_ms: int = 3000) -> str:
        """Send INVOKE to the subscribed extensions; returns the request id."""
        request_id = str(uuid.uuid4())
        self._send(
            "INVOKE",
            {
                "eventType": "INVOKE",
                "deadlineMs": _epoch_ms() + timeout_ms,
                "requestId": request_id,
                "invokedFunctionArn": FUNCTION_ARN,
                "tracing": {
                    "type": "X-Amzn-Trace-Id",
                    "value": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                },
            },
        )
        return request_id

    def shutdown(self, *, reason: str = "spindown", deadline_in_ms: int = 2000) -> int:
        """Send SHUTDOWN; returns its deadline (ms since the epoch), for `exit_status_by`."""
        deadline = _epoch_ms() + deadline_in_ms
        self._send(
            "SHUTDOWN", {"eventType": "SHUTDOWN", "shutdownReason": reason, "deadlineMs": deadline}
        )
        return deadline

    @staticmethod
    def exit_status_by(process: subprocess.Popen[Any], deadline: int) -> int:
        """The extension's exit status, once its process exits by `deadline` (a SHUTDOWN
        event's, ms since the epoch). Still running then, it is ended with SIGKILL, as
        Lambda ends it, and the test fails (AssertionError)."""
        try:
            return process.wait(timeout=max(0.0, deadline / 1000 - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(
                "the extension was still running at the SHUTDOWN event's deadline:"
                " killed (SIGKILL), as Lambda kills it"
            ) from None

    def _send(self, event_type: str, event: dict[str, Any]) -> None:
        with self._lock:
            self.init_done = True
            for extension in self.extensions.values():
                if event_type in extension.events:
                    extension.inbox.put(event)

    # --- the API, called by the handler ------------------------------------------------

    def handle(self, call: Call) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.calls.append(call)
            self._lock.notify_all()
        if call.method == "POST" and call.path == "register":
            return self._register(call)
        if call.method == "GET" and call.path == "event/next":
            return self._next(call)
        if call.method == "POST" and call.path in ("init/error", "exit/error"):
            return self._error(call)
        return 404, {}, _error("InvalidRequest", f"no such route: {call.method} {call.path}")

    def _register(self, call: Call) -> tuple[int, dict[str, str], Any]:
        name = call.headers.get("lambda-extension-name")
        events = call.body.get("events") if isinstance(call.body, dict) else None
        if not name:
            return 400, {}, _error("InvalidRequest", "Lambda-Extension-Name is required")
        if not isinstance(events, list) or not set(events) <= EVENT_TYPES:
            return 400, {}, _error("InvalidRequest", f"events must be among {sorted(EVENT_TYPES)}")
        with self._lock:
            if self.init_done:
                return 403, {}, _error("Forbidden", "register is allowed in the Init phase only")
            if any(e.name == name for e in self.extensions.values()):
                return 409, {}, _error("Conflict", f"{name} is already registered")
            identifier = str(uuid.uuid4())
            self.extensions[identifier] = Extension(name, identifier, frozenset(events))
        body = {"functionName": self.function_name, "functionVersion": "$LATEST"}
        body["handler"] = "app.handler"
        return 200, {"Lambda-Extension-Identifier": identifier}, body

    def _registered(self, call: Call) -> Extension | None:
        with self._lock:
            return self.extensions.get(call.headers.get("lambda-extension-identifier", ""))

    def _next(self, call: Call) -> tuple[int, dict[str, str], Any]:
        extension = self._registered(call)
        if extension is None:
            return 403, {}, _error("Forbidden", "unknown Lambda-Extension-Identifier")
        with self._lock:
            extension.waiting += 1
            self._lock.notify_all()
        try:
            while not self._closing.is_set():
                try:
                    event = extension.inbox.get(timeout=0.05)
                except queue.Empty:
                    continue
                with self._lock:
                    extension.delivered.append(event)
                return 200, {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())}, event
            return 500, {}, _error("ServiceUnavailable", "the emulator is closing")
        finally:
            with self._lock:
                extension.waiting -= 1
                self._lock.notify_all()

    def _error(self, call: Call) -> tuple[int, dict[str, str], Any]:
        if self._registered(call) is None:
            return 403, {}, _error("Forbidden", "unknown Lambda-Extension-Identifier")
        if not call.headers.get("lambda-extension-function-error-type"):
            return 400, {}, _error("InvalidRequest", "the error type header is required")
        return 202, {}, {"status": "OK"}


def _epoch_ms() -> int:
    return int(time.time() * 1000)


def _error(error_type: str, message: str) -> dict[str, str]:
    return {"errorType": error_type, "errorMessage": message}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        path = self.path
        if not path.startswith(PREFIX):
            self._answer(404, {}, _error("InvalidRequest", f"not the Extensions API: {path}"))
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            self._answer(400, {}, _error("InvalidRequest", "the body is not JSON"))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        call = Call(self.command, path.removeprefix(PREFIX), headers, body)
        self._answer(*self.server.emulator.handle(call))

    do_GET = _serve
    do_POST = _serve

    def _answer(self, status: int, headers: dict[str, str], body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the extension was killed while its call was held (a test's teardown)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, emulator: ExtensionsApiEmulator) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.emulator = emulator
