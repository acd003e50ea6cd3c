"""tokex/proxy/handler.py through a running ProxyServer: framing, keep-alive, HTTP/1.0,
upstream failures and verified TLS, against loopback upstreams, with a stub token source
(the tokens' own rules are test_proxy_tokens.py's; the system tests use real ones)."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tests.support.tls import HttpsServer, make_pki
from tokex.proxy import connections as connections_module
from tokex.proxy import forward
from tokex.proxy import handler as handler_module
from tokex.proxy import server as server_module
from tokex.proxy.config import ProxyConfig, Route
from tokex.proxy.log import JsonLog
from tokex.proxy.server import ProxyServer
from tokex.proxy.tokens import TokenUnavailable


class StubTokens:
    def __init__(self) -> None:
        self.invalidated: list[str] = []
        self.unavailable: TokenUnavailable | None = None

    def token(self, route: Route) -> str:
        if self.unavailable is not None:
            raise self.unavailable
        return f"token-of-{route.audience}"

    def invalidate(self, route: Route, token: str) -> None:
        self.invalidated.append(token)

    def has_token(self, route: Route) -> bool:
        return True

    def token_response(self, route: Route) -> dict[str, Any]:
        return {"access_token": self.token(route), "token_type": "Bearer", "expires_in": 1}


class Recorder(QuietHandler):
    """Echoes what it got as JSON; `/chunked` answers a chunked body, `/status/N` N,
    `/sleep` answers after a second, `/early-hints` a 103 before its answer, `/framed-twice`
    a chunked body with a Content-Length of 0 that a reader going by the length would take
    for the next answer."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b"".join(forward.chunked_body(self.rfile))
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = [[name, value] for name, value in self.headers.items()]
        self.seen.append({"method": self.command, "target": self.path, "headers": headers})
        if self.path == "/sleep":  # longer than the proxy waits: it will have gone
            threading.Event().wait(1)
            self.close_connection = True
            return
        if self.path == "/early-hints":
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        if self.path == "/framed-twice":
            forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(forged), forged))
            return
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            return
        status = int(self.path.removeprefix("/status/")) if "/status/" in self.path else 200
        answer = {"target": self.path, "body": body.decode(), "headers": headers}
        self.send_document(status, json.dumps(answer).encode(), {"X-Upstream": "yes"})


@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    class Handler(Recorder):
        seen: ClassVar[list[dict[str, Any]]] = []

    with serving(LoopbackServer(Handler)) as server:
        server.seen = Handler.seen  # type: ignore[attr-defined]
        yield server


@contextlib.contextmanager
def proxy_for(*routes: dict[str, Any], tokens: StubTokens | None = None) -> Iterator[Any]:
    document = {"endpoint": "https://auth.example.com", "listen": "127.0.0.1:0"}
    config = ProxyConfig.from_document(
        {**document, "routes": list(routes)}, base_dir=Path("/"), environ={}
    )
    log = io.StringIO()
    server = ProxyServer(config, token_source=tokens or StubTokens(), secret="s", log=JsonLog(log))
    server.log_stream = log  # type: ignore[attr-defined] # what the test reads the log from
    server.start()
    try:
        yield server
    finally:
        server.shutdown(5)


def route(url: str, **more: Any) -> dict[str, Any]:
    return {"prefix": "/", "upstream": url, "audience": "orders-api", **more}


def call(port: int, method: str, target: str, body: Any = None, headers=None, **options):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, target, body=body, headers=headers or {}, **options)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw(port: int, request: bytes, *, shut_down: bool = False) -> bytes:
    """The proxy's answer to `request`; `shut_down`: the end of the stream after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        if shut_down:
            connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_a_chunked_request_goes_on_chunked(upstream) -> None:
    with proxy_for(route(upstream.url)) as proxy:
        port = proxy.addresses["listen"][1]
        body = iter([b"hello", b" ", b"world"])
        status, _, answer = call(port, "POST", "/x", body=body, encode_chunked=True)
    assert status == 200 and json.loads(answer)["body"] == "hello world"
    headers = {name.lower(): value for name, value in upstream.seen[0]["headers"]}
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert headers["authorization"] == "Bearer token-of-orders-api"
    assert headers["host"] == upstream.url.removeprefix("http://")
    assert "user-agent" not in headers and "accept-encoding" in headers  # as http.client sent


def test_a_request_framed_two_ways_is_refused_and_never_forwarded(upstream) -> None:
    with proxy_for(route(upstream.url)) as proxy:
        smuggled = (
            b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /y HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        answer = raw(proxy.addresses["listen"][1], smuggled)
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1") == 1
    assert b"Connection: close" in answer
    assert upstream.seen == []


def test_keep_alive_and_an_http_1_0_application(upstream) -> None:
    with proxy_for(route(upstream.url)) as proxy:
        port = proxy.addresses["listen"][1]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for target in ("/a", "/chunked", "/b"):  # one connection of the application
            connection.request("GET", target)
            response = connection.getresponse()
            assert response.status == 200 and response.read()
        assert response.getheader("X-Upstream") == "yes"
        connection.close()
        # HTTP/1.0 knows no chunks: the body ends where the connection does
        answer = raw(port, b"GET /chunked HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert body == b"hello world"


def test_head_and_expect_100_continue(upstream) -> None:
    with proxy_for(route(upstream.url)) as proxy:
        port = proxy.addresses["listen"][1]
        status, _, body = call(port, "HEAD", "/x")
        assert (status, body) == (200, b"")
        answer = raw(
            port,
            b"PUT /x HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\nhi",
        )
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")
    assert b'"body": "hi"' in answer
    assert all(name.lower() != "expect" for name, _ in upstream.seen[-1]["headers"])


def test_an_interim_answer_is_not_relayed_and_no_answer_goes_to_another_request(
    upstream,
) -> None:
    """http.client skips a 100 only: a 103 read as the answer would leave the final one on
    the kept-alive upstream connection, for whichever request used it next."""
    with proxy_for(route(upstream.url)) as proxy:
        port = proxy.addresses["listen"][1]
        status, headers, body = call(port, "POST", "/early-hints", body=b"x")
        assert (status, json.loads(body)["error"]) == (502, "upstream_unavailable")
        assert "interim 103" in json.loads(body)["error_description"]
        assert headers["Connection"] == "close"
        for target in ("/a", "/b"):
            status, _, body = call(port, "GET", target)
            assert (status, json.loads(body)["target"]) == (200, target)


def test_a_chunked_answer_with_a_length_too_is_read_and_sent_as_chunked(upstream) -> None:
    """RFC 9112 §6.3: Transfer-Encoding wins; the Content-Length is not passed on, or the
    application would read the body as its next answer."""
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
    with proxy_for(route(upstream.url)) as proxy:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.addresses["listen"][1])
        connection.request("GET", "/framed-twice")
        response = connection.getresponse()
        assert response.getheader("Content-Length") is None and response.read() == forged
        connection.request("GET", "/a")  # the same connection
        assert json.loads(connection.getresponse().read())["target"] == "/a"
        connection.close()


def test_a_folded_header_reaches_the_upstream_on_one_line(upstream) -> None:
    """RFC 9112 §5.2: an obs-fold is passed on as a space, never as a line of its own that
    an upstream could read as a second framing."""
    with proxy_for(route(upstream.url)) as proxy:
        answer = raw(
            proxy.addresses["listen"][1],
            b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 200 ")
    (seen,) = upstream.seen
    assert ["X-A", "a Transfer-Encoding: chunked"] in seen["headers"]
    assert [name.lower() for name, _ in seen["headers"]].count("transfer-encoding") == 0


def test_a_request_line_too_long_is_414(upstream) -> None:
    with proxy_for(route(upstream.url)) as proxy:
        answer = raw(proxy.addresses["listen"][1], b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 ") and b"Connection: close" in head
    assert json.loads(body)["error_description"] == "the request line is too long"
    assert upstream.seen == []


def test_an_upstream_401_invalidates_the_token_and_is_answered_as_it_is(upstream) -> None:
    tokens = StubTokens()
    with proxy_for(route(upstream.url), tokens=tokens) as proxy:
        status, _, _ = call(proxy.addresses["listen"][1], "GET", "/status/401")
    assert status == 401 and tokens.invalidated == ["token-of-orders-api"]
    assert len(upstream.seen) == 1  # not retried


def test_no_token_answers_without_calling_and_closes_a_connection_with_a_body(upstream) -> None:
    tokens = StubTokens()
    tokens.unavailable = TokenUnavailable(503, "unreachable", "no token for audience x", 2)
    with proxy_for(route(upstream.url), tokens=tokens) as proxy:
        status, headers, body = call(proxy.addresses["listen"][1], "POST", "/x", body=b"abc")
    assert (status, headers["Retry-After"], headers["Connection"]) == (503, "2", "close")
    assert json.loads(body) == {
        "error": "unreachable",
        "error_description": "no token for audience x",
    }
    assert upstream.seen == []


def test_no_route_is_404(upstream) -> None:
    with proxy_for({**route(upstream.url), "prefix": "/orders"}) as proxy:
        status, _, body = call(proxy.addresses["listen"][1], "GET", "/ordersx")
    assert (status, json.loads(body)["error"]) == (404, "no_route")
    assert upstream.seen == []


def test_an_unreachable_or_slow_upstream_is_502_or_504(upstream, monkeypatch, refused_port) -> None:
    closed = refused_port
    monkeypatch.setattr(forward, "READ_TIMEOUT_SECONDS", 0.3)
    with proxy_for(
        route(f"http://127.0.0.1:{closed}"), {**route(upstream.url), "prefix": "/sleep"}
    ) as proxy:
        port = proxy.addresses["listen"][1]
        status, _, body = call(port, "GET", "/x")
        assert (status, json.loads(body)["error"]) == (502, "upstream_unavailable")
        status, _, body = call(port, "GET", "/sleep")
        assert (status, json.loads(body)["error"]) == (504, "upstream_timeout")


def test_the_upstream_certificate_is_verified_against_the_routes_ca(tmp_path) -> None:
    pki = make_pki(tmp_path)

    class Handler(Recorder):
        seen: ClassVar[list[dict[str, Any]]] = []

    with serving(HttpsServer(Handler, pki.server)) as upstream:
        trusted = {**route(upstream.url), "ca_file": str(pki.ca_file)}
        untrusted = {**route(upstream.url), "prefix": "/untrusted"}
        with proxy_for(trusted, untrusted) as proxy:
            port = proxy.addresses["listen"][1]
            status, _, body = call(port, "GET", "/untrusted/x")
            assert (status, json.loads(body)["error"]) == (502, "upstream_unavailable")
            assert "CERTIFICATE_VERIFY_FAILED" in json.loads(body)["error_description"]
            assert upstream.certificate_refused.wait(5)
            assert call(port, "GET", "/x")[0] == 200
    assert [seen["target"] for seen in Handler.seen] == ["/x"]


def test_a_route_on_a_listener_of_its_own(upstream) -> None:
    own = {"listen": "127.0.0.1:0", "upstream": upstream.url, "audience": "billing-api"}
    with proxy_for({**route(upstream.url), "prefix": "/orders"}, own) as proxy:
        status, _, _ = call(proxy.addresses["routes[1].listen"][1], "GET", "/orders/1")
        assert status == 200
        status, _, body = call(proxy.addresses["routes[1].listen"][1], "GET", "/.tokex/health")
        assert status == 200 and json.loads(body)["status"] == "ok"  # on every listener
    headers = dict((name.lower(), value) for name, value in upstream.seen[0]["headers"])
    assert headers["authorization"] == "Bearer token-of-billing-api"


def test_two_listeners_at_once_each_send_their_own_routes_token(upstream) -> None:
    """The listeners share the token source and the connection cap: a crowd on both at
    once gets every answer, each request with its own route's token, and each caller the
    answer to its own request (the upstream echoes the target and the headers it got)."""
    own = {"listen": "127.0.0.1:0", "upstream": upstream.url, "audience": "billing-api"}
    with proxy_for({**route(upstream.url), "prefix": "/orders"}, own) as proxy:
        ports = {
            "orders": proxy.addresses["listen"][1],
            "billing": proxy.addresses["routes[1].listen"][1],
        }
        jobs = [(name, number) for number in range(16) for name in ports]
        barrier = threading.Barrier(len(jobs))

        def one(job: tuple[str, int]) -> tuple[int, bytes]:
            name, number = job
            barrier.wait(timeout=30)
            status, _, body = call(ports[name], "GET", f"/orders/{name}-{number}")
            return status, body

        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(one, jobs))
    for (name, number), (status, body) in zip(jobs, answers, strict=True):
        assert status == 200, body
        echo = json.loads(body)
        assert echo["target"] == f"/orders/{name}-{number}", (name, number, echo["target"])
        authorization = [value for key, value in echo["headers"] if key.lower() == "authorization"]
        assert authorization == [f"Bearer token-of-{name}-api"], (name, number, authorization)
    tokens = {
        seen["target"]: dict((k.lower(), v) for k, v in seen["headers"])["authorization"]
        for seen in upstream.seen
    }
    assert len(tokens) == len(jobs)
    for target, authorization in tokens.items():
        audience = "billing-api" if "/billing-" in target else "orders-api"
        assert authorization == f"Bearer token-of-{audience}", target


# --- the head, checked line by line (proxy/head.py) ----------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nA: \r\n\r\n"


@pytest.mark.parametrize(("headers", "status"), [(3, 431), (1, 200)])
def test_request_headers_over_64_kib_in_all_are_431_and_not_held(
    upstream, headers: int, status: int
) -> None:
    """http.server alone let a connection hold 100 lines of 64 KiB (6.5 MB) until the
    head's deadline: a local process with a few hundred connections took the sidecar's
    memory."""
    lines = b"".join(b"X-Big-%d: %s\r\n" % (n, b"a" * 30_000) for n in range(headers))
    request = b"GET /c HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"Connection: close\r\n\r\n"
    with proxy_for(route(upstream.url)) as proxy:
        answer = raw(proxy.addresses["listen"][1], request)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert len(upstream.seen) == (status == 200)
    if status == 431:
        assert b"the request's headers exceed 65536 bytes" in answer


@pytest.mark.parametrize(
    "line",
    [
        b"X-Bad : 1",  # whitespace before the colon
        b"Garbage",  # no colon
        b"X-\xe9: 1",  # a name that is no token
        b"X-A: foo\rX-Injected: yes",  # a bare CR: a header of its own, to a lenient parser
        b"X-A: foo\x00bar",
        b"X-A: foo\x1bbar",
    ],
    ids=["space-before-colon", "no-colon", "non-token-name", "bare-cr", "nul", "escape"],
)
def test_a_faulty_header_line_is_400_and_nothing_is_forwarded(upstream, line: bytes) -> None:
    """Python's parser took such a line for the end of the head: the rest (the body here)
    was read as a second request and forwarded with the token."""
    request = (
        b"POST /c HTTP/1.1\r\nHost: 127.0.0.1\r\n" + line + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
    ) + SMUGGLED
    with proxy_for(route(upstream.url)) as proxy:
        answer = raw(proxy.addresses["listen"][1], request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
    assert answer.count(b"HTTP/1.1 ") == 1
    assert json.loads(body)["error"] == "invalid_request"
    assert upstream.seen == []


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /c HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-A: a\rX-Injected: b",
        b"GET /c HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b",
        b"GET /c\x0bHTTP/1.0",
        b"GET /c HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    ],
    ids=["cr-in-last-line", "nul-in-last-line", "request-line", "no-blank-line"],
)
def test_a_request_head_cut_short_is_400_and_nothing_is_forwarded(upstream, request_head) -> None:
    """http.server takes the end of the stream for the end of the head, its last line
    unchecked: the upstream got `X-Injected: b` as a header, and `GET /c HTTP/1.0`."""
    with proxy_for(route(upstream.url)) as proxy:
        answer = raw(proxy.addresses["listen"][1], request_head, shut_down=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
    assert b"the head ended" in body
    assert upstream.seen == []


def test_whitespace_before_the_first_header_line_is_400(upstream) -> None:
    with proxy_for(route(upstream.url)) as proxy:
        answer = raw(
            proxy.addresses["listen"][1], b"GET /c HTTP/1.1\r\n X: 1\r\nHost: 127.0.0.1\r\n\r\n"
        )
    assert answer.startswith(b"HTTP/1.1 400 ") and upstream.seen == []
    assert b"whitespace before the first header line" in answer


@pytest.mark.parametrize(
    ("request_head", "why"),
    [
        (b"GET /c HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: y\r\n\r\n", b"exactly one Host header"),
        (b"GET /c HTTP/1.1\r\n\r\n", b"exactly one Host header"),
        (
            b"POST /c HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n",
            b"an HTTP/1.0 request has no chunked body",
        ),
        (b"GET /c HTTP/1.x\r\nHost: 127.0.0.1\r\n\r\n", b"version"),
        (
            b"POST /c HTTP/1.00\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"an HTTP/1.0 request has no chunked body",
        ),
        (b"GET /c\r HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"control character"),
        (b"GET\x0c/c HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"control character"),
    ],
    ids=[
        "two-hosts",
        "no-host",
        "http-1.0-chunked",
        "malformed-version",
        "http-1.00-chunked",
        "cr-in-request-line",
        "form-feed-in-request-line",
    ],
)
def test_a_request_framed_or_addressed_wrongly_is_400(upstream, request_head, why) -> None:
    with proxy_for(route(upstream.url)) as proxy:
        answer = raw(proxy.addresses["listen"][1], request_head)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
    assert why in json.loads(body)["error_description"].encode()
    assert upstream.seen == []


@pytest.mark.parametrize(
    "options",
    [
        b"Connection: close, X-Foo",
        b"Connection: X-Foo, close",
        b"Connection: keep-alive, close",
        b"Connection: TE, close\r\nTE: deflate,gzip;q=0.3",  # libwww-perl's
        b"Connection: X-Foo ,  CLOSE",
        b"Connection: X-Foo\r\nConnection: close",  # a list over two headers
    ],
)
def test_close_anywhere_in_the_connection_header_closes_the_connection(
    upstream, options: bytes
) -> None:
    """RFC 9112 §9.6: `close` among the options; http.server closed only for a header
    that is `close` alone, and the connection stayed open until its idle timeout. raw()
    reads to the end of the stream: a connection left open is its socket timeout."""
    with proxy_for(route(upstream.url)) as proxy:
        request = b"GET /c HTTP/1.1\r\nHost: 127.0.0.1\r\n" + options + b"\r\n\r\n"
        answer = raw(proxy.addresses["listen"][1], request)
    head = answer.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close" in head
    assert answer.count(b"HTTP/1.1 ") == 1 and len(upstream.seen) == 1


def test_trace_in_lower_case_is_refused_too(upstream) -> None:
    """An upstream that upper-cases methods would take it for TRACE and echo the token."""
    with proxy_for(route(upstream.url)) as proxy:
        answer = raw(proxy.addresses["listen"][1], b"trace /c HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 ") and upstream.seen == []


def test_a_head_trickling_in_is_cut_off(upstream, monkeypatch) -> None:
    """A byte every so often kept a connection, and its thread, for ever."""
    monkeypatch.setattr(handler_module, "HEAD_SECONDS", 0.6)
    with proxy_for(route(upstream.url)) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.addresses["listen"][1])) as sock:
            sock.settimeout(10)
            answer = b""
            for byte in b"GET /c HTTP/1.1\r\nHost: 127.0.0.1\r\n":
                try:
                    sock.sendall(bytes([byte]))
                except OSError:  # closed by the proxy
                    break
                threading.Event().wait(0.1)
            while chunk := sock.recv(65536):
                answer += chunk
        log = proxy.log_stream.getvalue()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in head
    assert json.loads(body)["error"] == "request_timeout"
    assert '"status": 408' in log and upstream.seen == []


def test_connections_over_the_limit_are_closed_at_once(upstream, monkeypatch) -> None:
    monkeypatch.setattr(connections_module, "MAX_CONNECTIONS", 3)
    with proxy_for(route(upstream.url)) as proxy:
        port = proxy.addresses["listen"][1]
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        for _ in range(2):  # a fourth, a fifth: closed at once, unanswered
            with contextlib.suppress(ConnectionResetError):
                assert raw(port, b"GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == b""
        held.pop().close()  # one leaves: room for one more
        for _ in range(50):
            try:
                status, _, _ = call(port, "GET", "/a")
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                threading.Event().wait(0.05)  # until the proxy has seen it leave
        assert status == 200
        for connection in held:
            connection.close()
        log = proxy.log_stream.getvalue()
    assert log.count('"connection_refused"') == 1  # once, however many are refused


# --- the upstream's head --------------------------------------------------------------------

RAW_ANSWERS = {
    "/bare-cr": b"HTTP/1.1 200 OK\r\nX-A: foo\rSet-Cookie: injected=1\r\nContent-Length: 0\r\n\r\n",
    "/nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "/reason": b"HTTP/1.1 200 OK\rSet-Cookie: viareason=1\r\nContent-Length: 0\r\n\r\n",
    "/space-before-colon": b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 0\r\n\r\n",
    # Cut short (the connection closes after them): http.client took the end of the
    # stream for the end of the head, its last line unchecked.
    "/cut-bare-cr": b"HTTP/1.1 200 OK\r\nX-B: 1\r\nX-A: a\rSet-Cookie: injected=1",
    "/cut-nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b",
    "/cut-reason": b"HTTP/1.1 200 OK\rSet-Cookie: viareason=1",
    "/cut-before-blank-line": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n",
    "/gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n"
    b"Content-Length: 5\r\n\r\n2a\r\nabcdefghijklmnopqrstuvwxyzabcdefghijklmnop\r\n0\r\n\r\n",
    # A length Python reads and curl reads otherwise: the rest of the body would be
    # curl's answer to its next request on the connection.
    "/underscore-length": b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n0123456789",
    "/signed-length": b"HTTP/1.1 200 OK\r\nContent-Length: +10\r\n\r\n0123456789",
    "/listed-length": b"HTTP/1.1 200 OK\r\nContent-Length: 10, 10\r\n\r\n0123456789",
    "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 10\r\n\r\n"
    b"0123456789",
}


class RawAnswers(QuietHandler):
    """Answers each path with the bytes of RAW_ANSWERS, as they are, and closes."""

    def do_GET(self) -> None:
        self.wfile.write(RAW_ANSWERS[self.path])
        self.close_connection = True


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/bare-cr", "its answer is malformed: a header line holds a control character"),
        ("/nul", "its answer is malformed: a header line holds a control character"),
        ("/reason", "its answer is malformed: the start line holds a control character"),
        ("/space-before-colon", "its answer is malformed: a header line is not NAME: VALUE"),
        ("/cut-bare-cr", "its answer is malformed: the head ended inside a header line"),
        ("/cut-nul", "its answer is malformed: the head ended inside a header line"),
        ("/cut-reason", "its answer is malformed: the head ended inside its start line"),
        ("/cut-before-blank-line", "its answer is malformed: the head ended before the blank"),
        ("/gzip-chunked", "answered with a transfer coding other than chunked"),
        ("/underscore-length", "answered with a Content-Length that is not one decimal"),
        ("/signed-length", "answered with a Content-Length that is not one decimal"),
        ("/listed-length", "answered with a Content-Length that is not one decimal"),
        ("/two-lengths", "answered with a Content-Length that is not one decimal"),
    ],
)
def test_a_faulty_upstream_head_is_502_and_nothing_of_it_is_relayed(path: str, why: str) -> None:
    with serving(LoopbackServer(RawAnswers)) as upstream, proxy_for(route(upstream.url)) as proxy:
        status, headers, body = call(proxy.addresses["listen"][1], "GET", path)
    assert (status, json.loads(body)["error"]) == (502, "upstream_unavailable")
    assert why in json.loads(body)["error_description"]
    assert "Set-Cookie" not in headers and "X-A" not in headers


def test_a_path_an_upstream_could_read_as_another_routes_is_400_and_not_forwarded(
    upstream,
) -> None:
    orders = route(upstream.url, prefix="/orders", audience="orders-api")
    catalog = route(upstream.url, audience="catalog-api")
    with proxy_for(orders, catalog) as proxy:
        port = proxy.addresses["listen"][1]
        status, _, body = call(port, "GET", "/%6Frders/1")
        served, _, _ = call(port, "GET", "/orders/1")
    assert (status, json.loads(body)["error"]) == (400, "invalid_request")
    assert "reads as another route's" in json.loads(body)["error_description"]
    assert served == 200 and len(upstream.seen) == 1


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        (b"GET", b"Origin: https://evil.example\r\n"),
        (b"POST", b"origin: null\r\nContent-Length: 0\r\n"),  # a sandboxed page, a file
        (b"GET", b"Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n"),  # no Origin
        (b"GET", b"Sec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\n"),  # a typed URL
        (  # a CORS preflight
            b"OPTIONS",
            b"Origin: https://evil.example\r\nAccess-Control-Request-Method: DELETE\r\n",
        ),
    ],
)
def test_a_request_a_web_browser_made_never_gets_the_token(
    upstream, method: bytes, headers: bytes
) -> None:
    """A page on the workload's host reaches a loopback listener by 127.0.0.1 itself (the
    Host check passes): it could act as the workload, and read the answers of an API that
    allows any origin."""
    with proxy_for(route(upstream.url)) as proxy:
        request = method + b" /c HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n"
        answer = raw(proxy.addresses["listen"][1], request)
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b'"browser_request"' in answer and b"comes from a web page" in answer
    assert upstream.seen == []


def test_nodejs_fetch_is_no_browser(upstream) -> None:
    """Node.js's built-in fetch (undici) sends `Sec-Fetch-Mode: cors` on every request,
    and neither Origin nor Sec-Fetch-Site: a workload on Node must get its token."""
    node_fetch = (
        b"POST /c HTTP/1.1\r\nHost: 127.0.0.1\r\naccept: */*\r\naccept-language: *\r\n"
        b"sec-fetch-mode: cors\r\nuser-agent: node\r\ncontent-length: 2\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    with proxy_for(route(upstream.url)) as proxy:
        answer = raw(proxy.addresses["listen"][1], node_fetch)
    assert answer.startswith(b"HTTP/1.1 200 ")
    [seen] = upstream.seen
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert headers["authorization"] == "Bearer token-of-orders-api"


@pytest.mark.parametrize(
    ("host", "status"),
    [
        (b"evil.example:8080", 400),  # a page whose name resolves to 127.0.0.1
        (b"127.0.0.1.evil.example", 400),
        (b"localhost:8080", 200),
        (b"LOCALHOST", 200),
        (b"[::1]:8080", 200),
        (b"127.0.0.1", 200),
    ],
)
def test_a_loopback_listener_serves_only_requests_for_a_loopback_host(
    upstream, host: bytes, status: int
) -> None:
    """DNS rebinding: a web page on the workload's host reaches 127.0.0.1 under its own
    name; it must not get the workload's tokens attached to its requests."""
    with proxy_for(route(upstream.url)) as proxy:
        request = b"GET /c HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        answer = raw(proxy.addresses["listen"][1], request)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert len(upstream.seen) == (status == 200)
    if status == 400:
        assert b"Host must name this proxy's loopback address" in answer


# The upstream of the shutdown test answers this long after the request arrives: a drain
# given the whole 30 s timeout, not what is left of it, would forward that answer.
LATE_ANSWER_SECONDS = 5.0


def test_shutdown_keeps_to_its_timeout_however_many_listeners(monkeypatch) -> None:
    """Each listener's accept loop took up to a poll (0.2 s) to stop, one after the other,
    and the drain then had the whole timeout: 5 listeners made shutdown(1.8) take 2.7 s,
    past the 2 s Lambda gives an extension's SHUTDOWN. Neither is timed here: every
    listener must be stopping before the shutdown waits for any of them, and once the
    listeners' stop has used up the timeout (on the shutdown's clock, set an hour on while
    they stop), the drain has nothing left: the request in flight is cut, not answered."""

    class LateUpstream(QuietHandler):
        protocol_version = "HTTP/1.1"
        arrived, release = threading.Event(), threading.Event()

        def do_GET(self) -> None:
            self.arrived.set()
            self.release.wait(LATE_ANSWER_SECONDS)  # released early as the test ends
            self.send_document(200, b"late", {})

    skew = [0.0]  # added to the shutdown's clock (server.py's alone)
    clock = SimpleNamespace(monotonic=lambda: time.monotonic() + skew[0])
    monkeypatch.setattr(server_module, "time", clock)

    def an_hour_passes() -> None:
        skew[0] = 3600.0

    with serving(LoopbackServer(LateUpstream)) as upstream:
        own = [
            {"listen": "127.0.0.1:0", "upstream": upstream.url, "audience": f"a{n}"}
            for n in range(4)
        ]
        try:
            with proxy_for(route(upstream.url), *own) as proxy:
                assert len(proxy.addresses) == 5
                # Trips once all five are being stopped at once; one after the other, the
                # first waits here in vain and the barrier breaks.
                stopping = threading.Barrier(5, action=an_hour_passes, timeout=10)
                for listener in proxy._listeners:
                    listener.shutdown = stopped_with(stopping, listener.shutdown)
                answers: list[Any] = []

                def in_flight() -> None:
                    try:
                        answers.append(call(proxy.addresses["listen"][1], "GET", "/late"))
                    except (OSError, http.client.HTTPException) as cut:
                        answers.append(cut)

                held = threading.Thread(target=in_flight, daemon=True)
                held.start()
                assert LateUpstream.arrived.wait(10)  # the request is in flight
                finished = proxy.shutdown(30)
                held.join(10)
        finally:
            LateUpstream.release.set()
    assert not stopping.broken, "the listeners were stopped one after the other"
    assert finished is False  # the drain had nothing left: the request was cut
    [answer] = answers
    assert isinstance(answer, OSError | http.client.HTTPException), answer  # not b"late"


def stopped_with(stopping: threading.Barrier, shutdown: Any) -> Any:
    """A listener's own shutdown, called once every listener is waiting to be stopped."""

    def waiting_for_the_others() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            stopping.wait()
        shutdown()

    return waiting_for_the_others


@pytest.mark.parametrize(
    ("unprivileged_from", "warned_ports"),
    [("1024", ["8000"]), ("0", ["8000", "80"]), ("not a number", ["8000"])],
)
def test_a_plain_http_upstream_on_a_port_any_user_may_bind_is_warned_of_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unprivileged_from: str, warned_ports
) -> None:
    """Another local user who binds the port while the service is down receives the
    token: one `plain_http_upstream` line per such route. Not for https, nor for a port
    below ip_unprivileged_port_start (1024 on most hosts, 0 in containers, where any user
    binds port 80; unreadable: 1024)."""
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text(unprivileged_from + "\n")
    monkeypatch.setattr(server_module, "UNPRIVILEGED_PORT_START", sysctl)
    routes = [
        {"prefix": "/a", "upstream": "http://127.0.0.1:8000", "audience": "a"},
        {"prefix": "/b", "upstream": "https://127.0.0.1:8443", "audience": "b"},
        {"prefix": "/c", "upstream": "http://127.0.0.1:80", "audience": "c"},
    ]
    with proxy_for(*routes) as proxy:
        lines = [json.loads(line) for line in proxy.log_stream.getvalue().splitlines()]
    warnings = [line for line in lines if line["event"] == "plain_http_upstream"]
    assert [w["upstream"].rsplit(":", 1)[1] for w in warnings] == warned_ports
    assert "another user's process that binds it" in warnings[0]["warning"]
    assert "use https to loopback, or a port only root may bind" in warnings[0]["warning"]
