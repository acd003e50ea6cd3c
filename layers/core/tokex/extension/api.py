"""A client of the Lambda Extensions API (version 2020-01-01), standard library only.

The API is served by Lambda in the execution environment at `AWS_LAMBDA_RUNTIME_API`
(host:port): an external extension registers for lifecycle events, then long-polls
`event/next`; Lambda considers the extension initialized at its first `next` call and
frozen while that call is pending (AWS Lambda Developer Guide, "Using the Lambda
Extensions API to create extensions", "Extensions API reference").

    POST /2020-01-01/extension/register    Lambda-Extension-Name: <file name>
         {"events": ["INVOKE", "SHUTDOWN"]} -> 200, Lambda-Extension-Identifier: <id>
    GET  /2020-01-01/extension/event/next  Lambda-Extension-Identifier: <id>
         -> 200 {"eventType": "INVOKE" | "SHUTDOWN", "deadlineMs": ..., ...}
    POST /2020-01-01/extension/init/error  Lambda-Extension-Identifier,
    POST /2020-01-01/extension/exit/error  Lambda-Extension-Function-Error-Type
         {"errorMessage", "errorType", "stackTrace"} -> 202

The standard library, not urllib3 or botocore: this module is imported first, before the
extension registers, and every millisecond of it is part of the function's cold start.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any

API_VERSION = "2020-01-01"
# The extension's name must be the file name of its executable in /opt/extensions.
EXTENSION_NAME = "tokex-proxy"
INVOKE = "INVOKE"
SHUTDOWN = "SHUTDOWN"
EVENTS = (INVOKE, SHUTDOWN)
NAME_HEADER = "Lambda-Extension-Name"
IDENTIFIER_HEADER = "Lambda-Extension-Identifier"
ERROR_TYPE_HEADER = "Lambda-Extension-Function-Error-Type"
# register, init/error and exit/error answer at once; `next` has no timeout (below).
CALL_TIMEOUT_SECONDS = 10.0
MAX_BODY_BYTES = 1024 * 1024
# Milliseconds since the epoch: the largest integer JSON carries exactly (JavaScript's
# Number.MAX_SAFE_INTEGER), about 285,000 years; a larger one overflowed a float.
MAX_DEADLINE_MS = 2**53 - 1


class ExtensionsApiError(Exception):
    """The Extensions API refused a call or could not be reached."""


@dataclass(frozen=True)
class Event:
    """One lifecycle event from `event/next`."""

    event_type: str
    deadline_ms: int  # milliseconds since the epoch
    request_id: str | None = None  # INVOKE
    shutdown_reason: str | None = None  # SHUTDOWN: "spindown", "timeout" or "failure"

    @classmethod
    def from_json(cls, document: Any) -> Event:
        if not isinstance(document, dict):
            raise ExtensionsApiError("event/next answered something other than a JSON object")
        event_type = document.get("eventType")
        deadline = document.get("deadlineMs")
        if not isinstance(event_type, str):
            raise ExtensionsApiError("event/next answered an event without eventType")
        if not isinstance(deadline, int) or isinstance(deadline, bool):
            raise ExtensionsApiError(f"the {event_type} event has no integer deadlineMs")
        if not 0 <= deadline <= MAX_DEADLINE_MS:
            raise ExtensionsApiError(f"the {event_type} event's deadlineMs is out of range")
        request_id = document.get("requestId")
        reason = document.get("shutdownReason")
        return cls(
            event_type=event_type,
            deadline_ms=deadline,
            request_id=request_id if isinstance(request_id, str) else None,
            shutdown_reason=reason if isinstance(reason, str) else None,
        )

    def seconds_left(self, now: float | None = None) -> float:
        """Seconds until the event's deadline (negative once it has passed)."""
        return self.deadline_ms / 1000 - (time.time() if now is None else now)


class ExtensionsApi:
    """The Extensions API at `runtime_api` (the value of `AWS_LAMBDA_RUNTIME_API`)."""

    def __init__(self, runtime_api: str, *, name: str = EXTENSION_NAME) -> None:
        host, _, port = runtime_api.rpartition(":")
        if not host or not port.isdigit():
            raise ExtensionsApiError(f"AWS_LAMBDA_RUNTIME_API is not host:port: {runtime_api!r}")
        self.host = host
        self.port = int(port)
        self.name = name
        self.identifier: str | None = None

    def register(self, events: tuple[str, ...] = EVENTS) -> None:
        """Register for `events`; keep the identifier that every later call carries."""
        status, headers, body = self._call(
            "POST",
            "register",
            {NAME_HEADER: self.name},
            {"events": list(events)},
            timeout=CALL_TIMEOUT_SECONDS,
        )
        identifier = headers.get(IDENTIFIER_HEADER)
        if status != 200 or not identifier:
            raise ExtensionsApiError(f"register failed: {status} {_error_text(body)}")
        self.identifier = identifier

    def next_event(self) -> Event:
        """Block until Lambda sends the next event.

        No timeout: Lambda freezes the whole environment while the call is pending, and a
        timer would fire on the thaw of an environment that waited minutes between
        invocations (the call is not stuck, the environment was frozen).
        """
        status, _, body = self._call(
            "GET", "event/next", {IDENTIFIER_HEADER: self._identifier()}, None, timeout=None
        )
        if status != 200:
            raise ExtensionsApiError(f"event/next failed: {status} {_error_text(body)}")
        return Event.from_json(body)

    def init_error(self, error_type: str, message: str) -> None:
        """Report a failed initialization; Lambda then fails the Init phase (the extension
        exits next)."""
        self._report("init/error", error_type, message)

    def exit_error(self, error_type: str, message: str) -> None:
        """Report an error the extension exits on, after it initialized."""
        self._report("exit/error", error_type, message)

    def _report(self, path: str, error_type: str, message: str) -> None:
        status, _, body = self._call(
            "POST",
            path,
            {IDENTIFIER_HEADER: self._identifier(), ERROR_TYPE_HEADER: error_type},
            {"errorMessage": message, "errorType": error_type, "stackTrace": []},
            timeout=CALL_TIMEOUT_SECONDS,
        )
        if status != 202:
            raise ExtensionsApiError(f"{path} failed: {status} {_error_text(body)}")

    def _identifier(self) -> str:
        if self.identifier is None:
            raise ExtensionsApiError("the extension has not registered")
        return self.identifier

    def _call(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        document: Any,
        *,
        timeout: float | None,
    ) -> tuple[int, http.client.HTTPMessage, Any]:
        """One request on a connection of its own: (status, headers, JSON body or None)."""
        body = None if document is None else json.dumps(document).encode()
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, f"/{API_VERSION}/extension/{path}", body, headers)
            response = connection.getresponse()
            data = response.read(MAX_BODY_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise ExtensionsApiError(f"{path}: the Extensions API is unreachable: {exc}") from exc
        finally:
            connection.close()
        if len(data) > MAX_BODY_BYTES:
            raise ExtensionsApiError(f"{path}: the answer is larger than {MAX_BODY_BYTES} bytes")
        try:
            parsed = json.loads(data) if data.strip() else None
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
            parsed = data.decode("utf-8", "replace")
        return response.status, response.headers, parsed


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        return f"{body.get('errorType', '')}: {body.get('errorMessage', '')}".strip(": ")
    return "" if body is None else str(body)[:200]
