"""One connection of the application, one request at a time (HTTP/1.1 keep-alive).

Each request goes through, in order: the method (CONNECT and TRACE refused: one would make
this an open tunnel, the other would echo the token back), the target (origin-form only,
routing.py), the body's framing (forward.py), the proxy's own endpoints (`/.tokex/`,
endpoints.py), the route, the route's token (none: 403 or 503, and the upstream is never
called), then the upstream. Every answer of the proxy's own is JSON
`{"error", "error_description"}`; every request is one line of the log, without its query,
headers or token.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import urllib3

from tokex import identifiers
from tokex.client.endpoint import is_loopback
from tokex.proxy.config import Route
from tokex.proxy.connections import Connections
from tokex.proxy.endpoints import Answer, error, own_endpoint, unavailable
from tokex.proxy.forward import (
    CHUNK_BYTES,
    BadBody,
    ClientGone,
    Upstream,
    chunked_body,
    is_byte_count,
    length_body,
    request_framing,
)
from tokex.proxy.head import (
    HEAD_SECONDS,
    ApplicationHead,
    HeadTimeout,
    MalformedHead,
    readline_by,
    start_line_fault,
)
from tokex.proxy.headers import (
    SECRET_HEADER,
    client_response_headers,
    connection_options,
    upstream_request_headers,
)
from tokex.proxy.log import JsonLog
from tokex.proxy.routing import BadTarget, RouteTable, is_reserved, split_target
from tokex.proxy.tokens import TokenSource, TokenUnavailable

CLIENT_IDLE_TIMEOUT_SECONDS = 60.0  # a connection silent this long is closed
MAX_REQUEST_LINE_BYTES = 65536  # as http.server's own limit
# Headers only a web browser sends (Sec-Fetch-Site on every request, Origin on every
# cross-origin or unsafe one): a page on the workload's host could otherwise make requests
# through a loopback listener by 127.0.0.1 itself, with the workload's token attached, and
# read the answers of an API that allows any origin (`Access-Control-Allow-Origin: *`,
# safe only because browsers never add a bearer token themselves). Not Sec-Fetch-Mode or
# Sec-Fetch-Dest: Node.js's own fetch sends `Sec-Fetch-Mode: cors` on every request.
BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site")
REFUSED_METHODS = {
    "CONNECT": "CONNECT is refused: this is not an open proxy, upstreams come from its "
    "configuration only",
    "TRACE": "TRACE is refused: the upstream would echo the request, token included",
}


@dataclass(frozen=True)
class ProxyState:
    """What every connection of the proxy shares (built by ProxyServer)."""

    table: RouteTable
    routes: tuple[Route, ...]
    upstreams: dict[str, Upstream]
    tokens: TokenSource
    log: JsonLog
    secret: str
    connections: Connections


@dataclass
class _Outcome:
    """One request, as its log line tells it."""

    path: str | None = None
    route: str | None = None
    status: int | None = None
    upstream_status: int | None = None
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # a small response is not held back for 40 ms
    timeout = CLIENT_IDLE_TIMEOUT_SECONDS
    server_version = "tokex-proxy"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version  # http.server would append " " + sys_version

    _unread_body = False  # a request body not (yet) read: an early answer closes
    _head_fault: str | None = None  # why the head is refused (head.py), once read
    _head_fault_status = 400

    @property
    def _state(self) -> ProxyState:
        return self.server.state  # type: ignore[attr-defined, no-any-return]

    def setup(self) -> None:
        super().setup()
        self._state.connections.opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._state.connections.closed(self.connection)

    def handle_one_request(self) -> None:
        """http.server's, with the connection counted busy from the request's first byte
        on, its head read by a deadline and every line of it checked (head.py)."""
        try:
            self.connection.settimeout(CLIENT_IDLE_TIMEOUT_SECONDS)
            reader: Any = self.rfile  # a BufferedReader: it peeks
            started = bool(reader.peek(1))  # between two requests: idle
        except OSError:  # idle too long, or closed by the application or by shutdown
            started = False
        if not started:
            self.close_connection = True
            return
        connections = self._state.connections
        connections.busy(self.connection)
        self.request_version, self.command, self.requestline = "HTTP/1.1", "", ""
        try:
            self._read_head(time.monotonic() + HEAD_SECONDS)
            self.wfile.flush()
        except HeadTimeout:
            self._answer_timeout()
        except OSError:  # the application went away mid-answer
            self.close_connection = True
        finally:
            if connections.stopping:
                self.close_connection = True
            connections.idle(self.connection)

    def _read_head(self, deadline: float) -> None:
        self._head_fault = None
        self.raw_requestline = readline_by(
            self.rfile, self.connection, MAX_REQUEST_LINE_BYTES + 1, deadline
        )
        if len(self.raw_requestline) > MAX_REQUEST_LINE_BYTES:
            self.send_error(414, "the request line is too long")
            return
        if fault := start_line_fault(self.raw_requestline):
            # http.server splits at any whitespace: `GET /a\r HTTP/1.1` would pass as
            # `GET /a HTTP/1.1`.
            self.send_error(400, fault)
            return
        reader, head = self.rfile, ApplicationHead(self.rfile, self.connection, deadline)
        self.rfile = head  # type: ignore[assignment] # what http.server reads headers from
        try:
            parsed = self.parse_request()  # False: answered (send_error)
        finally:
            self.rfile = reader
        self.connection.settimeout(CLIENT_IDLE_TIMEOUT_SECONDS)  # the body: between reads
        self._head_fault, self._head_fault_status = head.fault, head.fault_status
        if not parsed:
            return
        if "close" in connection_options(self.headers.items()):
            # http.server closes only for a header that is `close` alone; `close` anywhere
            # in the list (`TE, close`, libwww-perl's) means it too (RFC 9112 §9.6).
            self.close_connection = True
        if self.request_version == "HTTP/0.9":  # no headers: nothing to route on
            self.close_connection = True
        else:
            self._handle()

    def _answer_timeout(self) -> None:
        """408, best effort: the application may have given up already."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._send_json(*error(408, "request_timeout", "the request head took too long"))
            self.wfile.flush()
        self._state.log.write(
            "request",
            listener=getattr(self.server, "name", None),
            status=408,
            error="request_timeout",
        )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line or header), as JSON."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            if len(self.requestline.split()) < 3:
                return  # a request of HTTP/0.9 itself: no status line to send
            self.request_version = "HTTP/1.1"  # a malformed version: answered all the same
        description = message or self.responses.get(code, ("error",))[0]
        self._send_json(*error(code, "invalid_request", description))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one JSON line per request instead (_handle)

    # --- one request ---------------------------------------------------------------------

    def _handle(self) -> None:
        started = time.monotonic()
        outcome = _Outcome()
        self._unread_body = False
        try:
            self._dispatch(outcome)
        finally:
            self._state.log.write(
                "request",
                listener=getattr(self.server, "name", None),
                route=outcome.route,
                method=self.command,
                path=outcome.path,
                status=outcome.status,
                upstream_status=outcome.upstream_status,
                error=outcome.error,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                **outcome.fields,
            )

    def _dispatch(self, outcome: _Outcome) -> None:
        state = self._state
        if self._head_fault is not None:
            self.close_connection = True  # the rest of the head is unread
            status = self._head_fault_status
            return self._answer(outcome, error(status, "invalid_request", self._head_fault))
        if not identifiers.HTTP_TOKEN.fullmatch(self.command):
            return self._answer(outcome, error(400, "invalid_request", "the method is malformed"))
        # Methods are case-sensitive, but an upstream that upper-cases them would take
        # `trace` for TRACE.
        if self.command.upper() in REFUSED_METHODS:
            self.close_connection = True
            refused = error(405, "method_not_allowed", REFUSED_METHODS[self.command.upper()])
            return self._answer(outcome, refused)
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1 or (not hosts and not _is_http_1_0(self.request_version)):
            # RFC 9112 §3.2: two could be read as two different hosts along the way.
            self.close_connection = True
            why = "an HTTP/1.1 request has exactly one Host header"
            return self._answer(outcome, error(400, "invalid_request", why))
        if hosts and getattr(self.server, "loopback", True) and not _names_loopback(hosts[0]):
            # A web page whose own name resolves to 127.0.0.1 (DNS rebinding) reaches a
            # loopback listener too, under its name: it must not use the workload's tokens.
            self.close_connection = True
            why = "Host must name this proxy's loopback address (localhost, 127.0.0.1, [::1])"
            return self._answer(outcome, error(400, "invalid_request", why))
        browser = next((name for name in BROWSER_HEADERS if name in self.headers), None)
        if browser is not None:
            self.close_connection = True
            why = (
                f"a request with {browser} comes from a web page: the proxy attaches the"
                " workload's token for its own processes only"
            )
            return self._answer(outcome, error(403, "browser_request", why))
        try:
            path, query = split_target(self.path)
        except BadTarget as err:
            self.close_connection = True
            return self._answer(outcome, error(400, "invalid_request", str(err)))
        outcome.path = path
        try:
            length, chunked = request_framing(self.headers.items())
        except BadBody as err:
            self.close_connection = True
            return self._answer(outcome, error(400, "invalid_request", str(err)))
        self._unread_body = bool(length) or chunked
        if chunked and _is_http_1_0(self.request_version):
            # RFC 9112 §6.1: an HTTP/1.0 message's framing is faulty with Transfer-Encoding.
            self.close_connection = True
            why = "an HTTP/1.0 request has no chunked body"
            return self._answer(outcome, error(400, "invalid_request", why))
        if is_reserved(path):
            secrets = self.headers.get_all(SECRET_HEADER) or []
            answer = own_endpoint(
                self.command,
                path,
                query,
                presented_secret=secrets[0] if len(secrets) == 1 else None,
                secret=state.secret,
                routes=state.routes,
                tokens=state.tokens,
            )
            return self._answer(outcome, answer)
        try:
            route = state.table.match(getattr(self.server, "name", ""), path)
        except BadTarget as err:
            return self._answer(outcome, error(400, "invalid_request", str(err)))
        if route is None:
            described = error(404, "no_route", "no route of this proxy takes this path")
            return self._answer(outcome, described)
        outcome.route = route.name
        try:
            token = state.tokens.token(route)
        except TokenUnavailable as refused:
            return self._answer(outcome, unavailable(refused))
        self._forward(outcome, route, token, length, chunked)

    def _forward(
        self, outcome: _Outcome, route: Route, token: str, length: int | None, chunked: bool
    ) -> None:
        headers = upstream_request_headers(
            self.headers.items(), authority=route.authority, authorization=f"Bearer {token}"
        )
        body = None
        if chunked:
            body = chunked_body(self.rfile)
        elif length is not None:
            headers.append(("Content-Length", str(length)))
            body = length_body(self.rfile, length) if length else None
        sent_whole: list[bool] = []
        if body is not None:
            body = _until_the_end(body, sent_whole)
        try:
            response = self._state.upstreams[route.name].send(
                self.command, self.path, headers, body, chunked=chunked
            )
        except ClientGone:
            self.close_connection = True
            outcome.error = "client_gone"
            return None
        except BadBody as err:
            self.close_connection = True
            return self._answer(outcome, error(400, "invalid_request", str(err)))
        except urllib3.exceptions.ReadTimeoutError:
            self.close_connection = True
            why = f"{route.authority} did not answer in time"
            outcome.fields["detail"] = why
            return self._answer(outcome, error(504, "upstream_timeout", why))
        except urllib3.exceptions.HTTPError as err:
            self.close_connection = True
            why = f"{route.authority}: {_reason(err)}"
            outcome.fields["detail"] = why
            return self._answer(outcome, error(502, "upstream_unavailable", why))
        except ValueError as err:  # a header http.client will not send
            self.close_connection = True
            return self._answer(outcome, error(400, "invalid_request", str(err)))
        # An upstream may answer before it has read the whole body (a 413): what is left
        # of it cannot be read as the next request.
        self._unread_body = body is not None and not sent_whole
        outcome.upstream_status = response.status
        refusal = _unrelayable(response)
        if refusal is not None:
            response.close()  # the upstream connection goes: it could be mid-answer
            response.release_conn()
            self.close_connection = True
            why = f"{route.authority} {refusal}"
            outcome.fields["detail"] = why
            return self._answer(outcome, error(502, "upstream_unavailable", why))
        if response.status == 401:  # revoked, or a key the upstream no longer trusts
            self._state.tokens.invalidate(route, token)
        self._relay(outcome, response)

    def _relay(self, outcome: _Outcome, response: urllib3.BaseHTTPResponse) -> None:
        """The upstream's response, its body copied as it arrives (never held whole)."""
        headers = client_response_headers(response.headers.items())
        has_body = self.command != "HEAD" and response.status not in (204, 304)
        has_body = has_body and response.status >= 200
        sized = any(name.lower() == "content-length" for name, _ in headers)
        chunk_out = has_body and not sized and self.request_version == "HTTP/1.1"
        self.send_response_only(response.status, response.reason or None)
        for name, value in headers:
            self.send_header(name, value)
        if chunk_out:
            self.send_header("Transfer-Encoding", "chunked")
        elif has_body and not sized:  # an HTTP/1.0 application: the end of the body is the end
            self.close_connection = True
        if self._unread_body:
            self.close_connection = True
        if self.close_connection or self._state.connections.stopping:
            self.send_header("Connection", "close")
        self.end_headers()
        outcome.status = response.status
        complete = False
        try:
            while has_body and (data := response.read1(CHUNK_BYTES, decode_content=False)):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data) if chunk_out else data)
            if chunk_out:
                self.wfile.write(b"0\r\n\r\n")
            complete = True
        except urllib3.exceptions.HTTPError:  # the upstream failed mid-body: so does this one
            self.close_connection = True
            outcome.error = "upstream_aborted"
        finally:
            if not complete:
                response.close()  # not back into the pool with a body half read
            response.release_conn()

    # --- answers of the proxy's own ------------------------------------------------------

    def _answer(self, outcome: _Outcome, answer: Answer) -> None:
        status, body, headers = answer
        outcome.status = status
        outcome.error = body.get("error") if status >= 400 else None
        if self._unread_body:  # its bytes would be read as the next request
            self.close_connection = True
        self._send_json(status, body, headers)

    def _send_json(self, status: int, body: dict[str, Any], headers: list[tuple[str, str]]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection or self._state.connections.stopping:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _is_http_1_0(version: str) -> bool:
    """`HTTP/1.0`, however written (`HTTP/1.00`, `HTTP/01.0`: http.server reads the
    numbers, having checked their form)."""
    major, _, minor = version.removeprefix("HTTP/").partition(".")
    return (int(major), int(minor)) == (1, 0)


def _names_loopback(host: str) -> bool:
    """Whether a Host header (`name[:port]`, `[v6][:port]`) names a loopback address."""
    host = host.strip()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            name = host
    return is_loopback(name.rstrip(".").lower())


def _unrelayable(response: urllib3.BaseHTTPResponse) -> str | None:
    """Why an upstream's answer cannot be relayed, or None."""
    if response.status < 200:
        # An interim answer (103 Early Hints, 102 Processing): http.client skips a 100
        # only and returns any other as the answer, leaving the final one unread, to be
        # read as the next request's answer on this connection.
        return f"sent an interim {response.status} answer; none is relayed"
    codings = [
        coding.strip().lower()
        for value in response.headers.getlist("Transfer-Encoding")
        for coding in value.split(",")
    ]
    if codings and codings != ["chunked"]:
        # http.client reads only a body coded exactly `chunked` as chunked: another
        # coding's framing would reach the application as body bytes.
        return "answered with a transfer coding other than chunked"
    lengths = response.headers.getlist("Content-Length")
    if lengths and (len(lengths) > 1 or not is_byte_count(lengths[0].strip())):
        # Python reads `1_00` or `+10` as a number, and a list of equal ones as one; the
        # header is relayed as written, and a client that reads it otherwise would take
        # the rest of the body for the answer to its next request on the connection.
        return "answered with a Content-Length that is not one decimal number"
    return None


def _until_the_end(body: Iterator[bytes], done: list[bool]) -> Iterator[bytes]:
    """`body`, noting in `done` once all of it has been sent."""
    yield from body
    done.append(True)


def _reason(err: urllib3.exceptions.HTTPError) -> str:
    """Why the upstream could not be reached, without urllib3's object descriptions."""
    if isinstance(err, urllib3.exceptions.NewConnectionError):
        return "cannot connect: " + str(err).rsplit(": ", 1)[-1]
    if isinstance(err, urllib3.exceptions.ConnectTimeoutError):
        return "the connection timed out"
    if isinstance(err, urllib3.exceptions.SSLError):
        return f"TLS failed: {err}"
    if isinstance(err, urllib3.exceptions.ProtocolError):
        malformed = [arg for arg in err.args if isinstance(arg, MalformedHead)]
        if malformed:
            return f"its answer is malformed: {malformed[0]}"
        return "the connection was closed before an answer"
    return type(err).__name__
