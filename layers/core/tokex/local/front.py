"""The local HTTP front: what CloudFront and API Gateway do in a deployment.

A request for a function's path (`/token`, `/introspect`) becomes an API Gateway HTTP API
payload 2.0 event for that function's handler. `/.well-known/*` is served from the S3
bucket the publisher wrote, with the object's own content type and cache headers. The
local JWT issuers' documents (`/_local/...`, tokex.local.oidc_issuers) are served from
memory. Any other path gets the contract's 404 `invalid_request` "no such endpoint"
(docs/contract.md); in a deployment CloudFront sends such paths to the S3 bucket instead.

Every answer is a success or the contract's JSON error, whatever arrives on the wire; each
connection carries one request. The table of answers: docs/local.md "HTTP answers".
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import errno
import http
import io
import socket
import socketserver
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from tokex.http_api import NOT_FOUND, json_text, no_store
from tokex.local.functions import LambdaContext
from tokex.local.http_request import (
    REQUEST_TIMEOUT_SECONDS,
    ConnectionIdle,
    DeadlineReader,
    RequestHead,
    RequestRefused,
    body_length,
    read_body,
    read_head,
    request_path,
)

WELL_KNOWN = ("/.well-known/jwks.json", "/.well-known/openid-configuration")
# The methods CloudFront forwards to the API (`AllowedMethods.ALLOW_ALL`, cdk/issuer_site.py):
# the handlers answer them, POST or 405. The front answers any other method itself.
FORWARDED_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "POST", "DELETE"})
DOCUMENT_METHODS = ("GET", "HEAD")  # the issuer documents' behaviour: ALLOW_GET_HEAD
# The local JWT issuers' keys live as long as the process: a verifier may keep them a while.
LOCAL_DOCUMENT_CACHE_CONTROL = "public, max-age=300"
# After answering, the front reads and discards what the client is still sending (a
# refused body, the rest of a header section) before it closes: closing a socket with
# unread input makes the kernel reset the connection, and the client may lose the answer.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 16 * 1024 * 1024
WRITE_TIMEOUT_SECONDS = 5.0
RETRY_AFTER_SECONDS = "5"

# Powertools' resolver keeps the event being served in a class attribute
# (`BaseRouter.current_event`) shared by every handler in the interpreter. Lambda serves
# one event at a time per execution environment, and this interpreter is one
# environment: handler code runs under this lock, whichever front (tests start several)
# received the request. Reading requests and writing answers happen outside it.
HANDLER_LOCK = threading.Lock()
# API Gateway's longest integration timeout: a request that waited this long for the lock
# gets the 503 a deployment would give, rather than waiting on a stuck handler for ever.
HANDLER_WAIT_SECONDS = 30.0

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


class PortUnavailable(Exception):
    """The front cannot listen on its port: nothing else was started or written."""

    def __init__(self, host: str, port: int, err: Exception) -> None:
        self.in_use = isinstance(err, OSError) and err.errno == errno.EADDRINUSE
        cause = "is already in use" if self.in_use else f"cannot be used: {err}"
        super().__init__(f"port {port} on {host} {cause}")
        self.host, self.port = host, port


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def error_answer(
    status: int,
    description: str,
    *,
    error: str = "invalid_request",
    headers: dict[str, str] | None = None,
) -> Answer:
    """The contract's error shape: `{"error", "error_description"}`, never cached."""
    body = json_text({"error": error, "error_description": description}).encode()
    return Answer(status, no_store({"Content-Type": "application/json", **(headers or {})}), body)


def unavailable(description: str) -> Answer:
    return error_answer(
        503,
        description,
        error="temporarily_unavailable",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def http_api_event(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    source_ip: str,
    *,
    protocol: str = "HTTP/1.1",
) -> dict[str, Any]:
    """An API Gateway HTTP API payload format 2.0 event (AWS docs, "Working with AWS
    Lambda proxy integrations for HTTP APIs"), with what API Gateway makes of the request:
    its cookies in `cookies` (not a `cookie` header), its query parsed in
    `queryStringParameters` (repeated names joined with commas), no `body` when it has
    none. A handler that read these would meet locally what it meets deployed."""
    now = time.time()
    headers = dict(headers)
    cookie_header = headers.pop("cookie", None)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
    }
    if cookie_header is not None:
        # Lines joined by the head's reader with "," as any header; cookies split on ";".
        event["cookies"] = [
            c.strip() for line in cookie_header.split(",") for c in line.split(";") if c.strip()
        ]
    event["headers"] = headers
    if query:
        parameters: dict[str, list[str]] = {}
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            parameters.setdefault(name, []).append(value)
        event["queryStringParameters"] = {k: ",".join(v) for k, v in parameters.items()}
    event |= {
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": headers.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": protocol,
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": bool(body),
    }
    if body:
        event["body"] = base64.b64encode(body).decode("ascii")
    return event


def lambda_answer(result: Any) -> Answer:
    """The HTTP answer API Gateway makes of a handler's result (payload 2.0); a result it
    could not use is the contract's 503, as any unexpected failure is."""
    try:
        status = int(result["statusCode"])
        payload = result.get("body") or ""
        data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
        headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[str(name)] = ", ".join(str(value) for value in values)
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
        return unavailable("the function returned an invalid response, retry later")
    framing = "".join(headers) + "".join(headers.values())
    if not 200 <= status <= 599 or "\r" in framing or "\n" in framing:
        return unavailable("the function returned an invalid response, retry later")
    return Answer(status, headers, data)


class FrontServer(socketserver.ThreadingTCPServer):
    """Bound and listening once constructed; answers nothing until `serve_forever`.

    `functions` (path -> handler) and `documents` are filled in after the port is known,
    because the handlers' settings name the issuer URL, which holds the port."""

    daemon_threads = True
    allow_reuse_address = True  # a restart need not wait for TIME_WAIT to pass
    request_queue_size = 128  # listen backlog: socketserver's 5 is too few for a crowd

    def __init__(self, host: str, port: int) -> None:
        self.functions: dict[str, LambdaHandler] = {}
        # Functions' paths answered 503 instead (a stopped Region: LocalSystem.stop_region);
        # replaced whole, never changed in place, so a request reads one consistent set.
        self.stopped_paths: frozenset[str] = frozenset()
        self.documents: Callable[[str], Answer] | None = None
        # The local JWT issuers' discovery documents and JWKS, by path.
        self.local_documents: dict[str, bytes] = {}
        super().__init__((host, port), FrontConnection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A last resort (FrontConnection answers its own failures): one line, no trace.
        error = sys.exc_info()[1]
        print(f"tokex local: front error: {type(error).__name__}: {error}", file=sys.stderr)


def bind_front(port: int, host: str = "127.0.0.1") -> FrontServer:
    try:
        return FrontServer(host, port)
    except (OSError, OverflowError) as err:  # OverflowError: a port outside 0-65535
        raise PortUnavailable(host, port, err) from None


class FrontConnection(socketserver.BaseRequestHandler):
    """One connection: read one request, answer it, close."""

    server: FrontServer
    request: socket.socket

    def handle(self) -> None:
        reader = DeadlineReader(self.request, REQUEST_TIMEOUT_SECONDS)
        stream = io.BufferedReader(reader)
        head: RequestHead | None = None
        try:
            try:
                head = read_head(stream)
                answer = self._answer(head, stream)
            except RequestRefused as refused:
                allow = {"Allow": refused.allow} if refused.allow else None
                answer = error_answer(refused.status, refused.description, headers=allow)
            except ConnectionIdle:
                return
            except TimeoutError:
                if reader.received == 0:
                    return  # an idle connection is closed without an answer
                answer = error_answer(408, "the request did not arrive in time")
            except OSError:
                return  # the client went away: nobody to answer
            except Exception as err:  # a bug of the front or a handler: fail closed
                _log_failure(err)
                answer = unavailable("internal error, retry later")
            self._write(answer, head_only=head is not None and head.method == "HEAD")
        except OSError:
            pass  # the client went away while the answer was written
        finally:
            _linger(self.request)

    def _answer(self, head: RequestHead, stream: BinaryIO) -> Answer:
        length = body_length(head)
        path, query = request_path(head.target)
        handler = self.server.functions.get(path)
        if handler is not None:
            if path in self.server.stopped_paths:  # its Region is down: nothing to call
                return unavailable("this endpoint's Region is unavailable, retry later")
            if head.method not in FORWARDED_METHODS:
                raise RequestRefused(405, f"use POST for {path}", allow="POST")
            if head.expects_continue():
                self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = read_body(stream, length)
            return self._invoke(handler, head, path, query, body)
        if path in WELL_KNOWN:
            if head.method not in DOCUMENT_METHODS:
                raise RequestRefused(405, f"use GET for {path}", allow=", ".join(DOCUMENT_METHODS))
            if self.server.documents is None:
                return unavailable("the issuer documents are not published yet, retry later")
            return self.server.documents(path.lstrip("/"))
        local_document = self.server.local_documents.get(path)
        if local_document is not None:
            if head.method not in DOCUMENT_METHODS:
                raise RequestRefused(405, f"use GET for {path}", allow=", ".join(DOCUMENT_METHODS))
            headers = {
                "Content-Type": "application/json",
                "Cache-Control": LOCAL_DOCUMENT_CACHE_CONTROL,
            }
            return Answer(200, headers, local_document)
        return error_answer(404, NOT_FOUND["error_description"])

    def _invoke(
        self, handler: LambdaHandler, head: RequestHead, path: str, query: str, body: bytes
    ) -> Answer:
        event = http_api_event(
            head.method,
            path,
            query,
            head.headers(),
            body,
            self.client_address[0],
            protocol=head.version,
        )
        context = LambdaContext(function_name=f"tokex{path.replace('/', '-')}")
        if not HANDLER_LOCK.acquire(timeout=HANDLER_WAIT_SECONDS):
            return unavailable("the functions are busy, retry later")
        try:
            result = handler(event, context)
        except Exception as err:  # the handlers answer their own errors; this is a bug
            _log_failure(err)
            return unavailable("internal error, retry later")
        finally:
            HANDLER_LOCK.release()
        return lambda_answer(result)

    def _write(self, answer: Answer, *, head_only: bool) -> None:
        try:
            phrase = http.HTTPStatus(answer.status).phrase
        except ValueError:  # a status a handler may use that Python has no name for
            phrase = "Status"
        lines = [f"HTTP/1.1 {answer.status} {phrase}"]
        for name, value in answer.headers.items():
            if name.lower() not in ("content-length", "connection", "date", "server"):
                lines.append(f"{name}: {value}")
        lines += [
            f"Content-Length: {len(answer.body)}",
            "Connection: close",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            "Server: tokex-local",
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
        self._send(head if head_only else head + answer.body)

    def _send(self, data: bytes) -> None:
        self.request.settimeout(WRITE_TIMEOUT_SECONDS)
        self.request.sendall(data)


def s3_documents(s3: Any, bucket: str) -> Callable[[str], Answer]:
    """The issuer documents as CloudFront serves them from the bucket: the object's bytes
    with its own content type and cache headers."""

    def read(key: str) -> Answer:
        try:
            obj = s3.get_object(Bucket=bucket, Key=key)
            data = obj["Body"].read()
        except (ClientError, BotoCoreError):
            return unavailable("the issuer documents cannot be read, retry later")
        headers = {"Content-Type": obj["ContentType"]}
        if obj.get("CacheControl"):
            headers["Cache-Control"] = obj["CacheControl"]
        return Answer(200, headers, data)

    return read


def _linger(sock: socket.socket) -> None:
    """Half-close, then drain the client's remaining input for a while (what web servers
    call a lingering close), so that the answer is read before the connection ends."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        drained = 0
        while drained <= LINGER_MAX_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(64 * 1024)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass


def _log_failure(err: BaseException) -> None:
    """One console line for an unexpected failure: where and what, no trace."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    print(f"tokex local: unexpected {type(err).__name__}{where}: {err}", file=sys.stderr)
