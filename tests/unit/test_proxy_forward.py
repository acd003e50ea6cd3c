"""tokex/proxy/forward.py: the request body's framing, bodies read as they arrive, and
which requests go again when a kept-alive upstream connection fails."""

from __future__ import annotations

import collections
import io
import itertools
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import urllib3

from tests.support.loopback import TcpServer
from tokex.proxy.config import Route
from tokex.proxy.forward import (
    BadBody,
    ClientGone,
    Upstream,
    chunked_body,
    length_body,
    request_framing,
)
from tokex.proxy.headers import HeaderList


@pytest.mark.parametrize(
    "headers,framing",
    [
        ([], (None, False)),
        ([("Content-Length", "0")], (0, False)),
        ([("content-length", "12")], (12, False)),
        ([("Content-Length", "12"), ("Content-Length", "12")], (12, False)),
        ([("Transfer-Encoding", "chunked")], (None, True)),
        ([("Transfer-Encoding", "Chunked")], (None, True)),
    ],
)
def test_a_body_is_framed_by_its_length_or_chunked(headers, framing) -> None:
    assert request_framing(headers) == framing


@pytest.mark.parametrize(
    "headers,why",
    [
        ([("Content-Length", "3"), ("Transfer-Encoding", "chunked")], "both"),
        ([("Content-Length", "3"), ("Content-Length", "4")], "different"),
        ([("Content-Length", "-1")], "not a number"),
        ([("Content-Length", "0x10")], "not a number"),
        ([("Content-Length", "\u00b2")], "not a number"),  # digits to str.isdigit, not int()
        ([("Content-Length", "\u0661\u0662")], "not a number"),
        ([("Transfer-Encoding", "gzip, chunked")], "only transfer coding"),
        ([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], "only"),
        ([("Transfer-Encoding", "identity")], "only transfer coding"),
    ],
)
def test_ambiguous_framing_is_refused(headers, why) -> None:
    """A proxy and an upstream that framed one request differently could be made to see
    two (request smuggling, RFC 9112 §6.3)."""
    with pytest.raises(BadBody, match=why):
        request_framing(headers)


def test_a_length_body_comes_in_pieces_and_stops_at_its_length() -> None:
    stream = io.BufferedReader(io.BytesIO(b"x" * 200_000 + b"GET /next"))
    pieces = list(length_body(stream, 200_000))
    assert b"".join(pieces) == b"x" * 200_000
    assert max(len(p) for p in pieces) <= 64 * 1024
    assert stream.read() == b"GET /next"  # the next request is left where it was


def test_a_body_cut_short_is_the_client_gone() -> None:
    with pytest.raises(ClientGone):
        list(length_body(io.BufferedReader(io.BytesIO(b"abc")), 10))


def test_a_chunked_body_is_decoded_extensions_and_trailers_dropped() -> None:
    wire = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\nGET /next"
    stream = io.BufferedReader(io.BytesIO(wire))
    assert b"".join(chunked_body(stream)) == b"hello world"
    assert stream.read() == b"GET /next"


@pytest.mark.parametrize(
    "wire,error",
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", BadBody),
        (b"3\r\nhello\r\n0\r\n\r\n", BadBody),  # longer than its size
        (b"5\r\nhel", ClientGone),
        (b"5\r\nhello\r\n", ClientGone),
        (b"f" * 2000 + b"\r\n", BadBody),
        (b"0\r\n" + b"X: 1\r\n" * 100 + b"\r\n", BadBody),
    ],
)
def test_a_malformed_chunked_body_is_refused(wire: bytes, error: type) -> None:
    with pytest.raises(error):
        list(chunked_body(io.BufferedReader(io.BytesIO(wire))))


class ClosingUpstream(TcpServer):
    """A plain HTTP upstream on loopback that answers `ok` to the first `answered`
    requests of each connection and then, at the next request, closes the connection
    without answering (as one does whose idle timeout struck as the request came, or
    that a NAT's reset stands for): what it was asked is kept in `requests`."""

    def __init__(self, answered: int = 1) -> None:
        self.answered = answered
        self.requests: list[tuple[int, str]] = []  # (connection number, request line)
        super().__init__()

    def serve(self, connection: socket.socket, number: int) -> None:
        with connection, connection.makefile("rb") as reader:
            for count in itertools.count():
                line = reader.readline()
                while reader.readline() not in (b"\r\n", b""):
                    pass
                if not line:
                    return
                self.requests.append((number, line.decode().strip()))
                if count >= self.answered:
                    return  # closed, not answered
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def plain_route(url: str) -> Route:
    return Route(
        name="routes[0]",
        upstream=url,
        audience="api",
        scopes=(),
        evidence="sigv4",
        token_file=None,
        ca_file=None,
        prefix="/",
        listen=None,
    )


def fetched(upstream: Upstream, method: str, headers: HeaderList | None = None) -> bytes:
    response = upstream.send(method, "/", headers or [("Host", "upstream")], None, chunked=False)
    try:
        return response.read()
    finally:
        response.release_conn()


@pytest.fixture
def closing_upstream() -> Iterator[ClosingUpstream]:
    server = ClosingUpstream()
    yield server
    server.stop()


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_a_bodiless_idempotent_request_the_upstream_dropped_while_idle_goes_again(
    closing_upstream: ClosingUpstream, method: str
) -> None:
    upstream = Upstream(plain_route(closing_upstream.url))
    expected = b"" if method == "HEAD" else b"ok"
    assert fetched(upstream, method) == expected
    assert fetched(upstream, method) == expected  # its kept-alive connection failed first
    assert closing_upstream.requests == [
        (1, f"{method} / HTTP/1.1"),
        (1, f"{method} / HTTP/1.1"),
        (2, f"{method} / HTTP/1.1"),
    ]
    upstream.close()


def test_a_request_that_names_an_idempotency_key_goes_again_too(
    closing_upstream: ClosingUpstream,
) -> None:
    upstream = Upstream(plain_route(closing_upstream.url))
    headers = [("Host", "upstream"), ("Idempotency-Key", "8e03978e")]
    assert fetched(upstream, "POST", headers) == b"ok"
    assert fetched(upstream, "POST", headers) == b"ok"
    assert closing_upstream.connections == 2
    upstream.close()


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT", "DELETE"])
def test_a_request_that_may_not_be_repeated_is_sent_once(
    closing_upstream: ClosingUpstream, method: str
) -> None:
    upstream = Upstream(plain_route(closing_upstream.url))
    assert fetched(upstream, method) == b"ok"
    with pytest.raises(urllib3.exceptions.ProtocolError):
        fetched(upstream, method)
    assert len(closing_upstream.requests) == 2  # the application decides whether to resend
    upstream.close()


def test_a_request_with_a_body_is_sent_once() -> None:
    server = ClosingUpstream()
    upstream = Upstream(plain_route(server.url))
    assert fetched(upstream, "GET") == b"ok"
    with pytest.raises(urllib3.exceptions.ProtocolError):
        upstream.send(
            "GET",
            "/",
            [("Host", "upstream"), ("Content-Length", "1")],
            iter([b"x"]),
            chunked=False,
        )
    assert len(server.requests) == 2  # its body was read from the application: gone
    upstream.close()
    server.stop()


def test_a_new_connection_that_fails_is_not_tried_again() -> None:
    server = ClosingUpstream(answered=0)
    upstream = Upstream(plain_route(server.url))
    with pytest.raises(urllib3.exceptions.ProtocolError):
        fetched(upstream, "GET")
    assert server.requests == [(1, "GET / HTTP/1.1")]
    upstream.close()
    server.stop()


class AnswersOnceUpstream(TcpServer):
    """Answers the first connection's first request and closes it (`Connection: close`
    said, or not: its idle timeout struck); every later connection is closed at its first
    request without an answer (an upstream crashing on it)."""

    def __init__(self, *, say_close: bool) -> None:
        self.say_close = say_close
        self.first_closed = threading.Event()
        self.requests: list[tuple[int, str]] = []  # (connection number, request line)
        super().__init__()

    def serve(self, connection: socket.socket, number: int) -> None:
        with connection, connection.makefile("rb") as reader:
            line = reader.readline()
            while reader.readline() not in (b"\r\n", b""):
                pass
            if line:
                self.requests.append((number, line.decode().strip()))
            if number == 1:
                close = b"Connection: close\r\n" if self.say_close else b""
                connection.sendall(b"HTTP/1.1 200 OK\r\n" + close + b"Content-Length: 2\r\n\r\nok")
        if number == 1:
            self.first_closed.set()


@pytest.mark.parametrize("say_close", [True, False], ids=["connection-close", "idle-timeout"])
def test_a_reconnected_connection_that_fails_is_not_tried_again(say_close: bool) -> None:
    """urllib3 and http.client reconnect the same connection object after the upstream
    closed it: the request on the new socket is a new connection's, sent once."""
    server = AnswersOnceUpstream(say_close=say_close)
    upstream = Upstream(plain_route(server.url))
    assert fetched(upstream, "GET") == b"ok"
    assert server.first_closed.wait(timeout=10)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        fetched(upstream, "GET")
    assert server.requests == [(1, "GET / HTTP/1.1"), (2, "GET / HTTP/1.1")]
    upstream.close()
    server.stop()


def test_every_idle_connection_gone_stale_at_once_still_ends_on_a_new_one(
    closing_upstream: ClosingUpstream,
) -> None:
    """A Lambda environment thawed after the upstream closed all its pooled connections."""
    upstream = Upstream(plain_route(closing_upstream.url))
    barrier = threading.Barrier(4)

    def held_open() -> None:  # four requests at once: four connections in the pool
        response = upstream.send("GET", "/", [("Host", "upstream")], None, chunked=False)
        barrier.wait(timeout=10)  # a body read to its end puts the connection back
        assert response.read() == b"ok"
        response.release_conn()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: held_open(), range(4)))
    assert closing_upstream.connections == 4
    # Each failure puts an empty slot back on top of urllib3's pool (the next attempt
    # makes a connection), so the stale ones are met by later requests: none fails.
    assert [fetched(upstream, "GET") for _ in range(4)] == [b"ok"] * 4
    per_connection = collections.Counter(number for number, _ in closing_upstream.requests)
    assert max(per_connection.values()) == 2  # answered once, dropped at the next
    upstream.close()
