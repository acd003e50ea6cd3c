"""tokex/proxy/headers.py: what of a request's and a response's headers is passed on; and
head.py: the lines of a head, checked before Python's parsers read them."""

from __future__ import annotations

import http.client
import io
import socket
import time

import pytest

from tokex.proxy.head import ApplicationHead, CheckedHead, MalformedHead
from tokex.proxy.headers import client_response_headers, upstream_request_headers


def test_the_upstream_gets_the_token_the_host_and_the_end_to_end_headers() -> None:
    incoming = [
        ("Host", "127.0.0.1:8080"),
        ("Authorization", "Bearer the-applications-own"),
        ("authorization", "Basic dXNlcjpwYXNz"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("X-Tokex-Proxy-Secret", "s"),
        ("Accept", "application/json"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("Content-Length", "3"),
        ("Transfer-Encoding", "chunked"),
        ("Expect", "100-continue"),
        ("X-Forwarded-For", "10.0.0.1"),  # the application's own: passed on as it is
    ]
    sent = upstream_request_headers(
        incoming, authority="orders.example.com", authorization="Bearer T"
    )
    assert sent == [
        ("Host", "orders.example.com"),
        ("Accept", "application/json"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Authorization", "Bearer T"),
    ]


def test_hop_by_hop_headers_and_those_connection_names_are_dropped() -> None:
    incoming = [
        ("Connection", "keep-alive, X-Private"),
        ("connection", "Upgrade"),
        ("X-Private", "hop"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "websocket"),
        ("X-Kept", "yes"),
    ]
    sent = upstream_request_headers(incoming, authority="a.example", authorization="Bearer T")
    assert sent == [("Host", "a.example"), ("X-Kept", "yes"), ("Authorization", "Bearer T")]


def test_the_response_loses_its_hop_by_hop_headers_only() -> None:
    upstream = [
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"),
        ("WWW-Authenticate", 'Bearer error="invalid_token"'),
    ]
    assert client_response_headers(upstream) == [
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("WWW-Authenticate", 'Bearer error="invalid_token"'),
    ]


def test_a_chunked_response_loses_its_content_length_too() -> None:
    """RFC 9112 §6.3: with both, the body is chunked; the length would frame the body the
    proxy sends differently from how it was read."""
    upstream = [("Content-Length", "0"), ("Transfer-Encoding", "chunked"), ("X-Kept", "1")]
    assert client_response_headers(upstream) == [("X-Kept", "1")]


def test_folded_values_are_passed_on_unfolded_both_ways() -> None:
    """RFC 9112 §5.2: each obs-fold becomes a space; no line break reaches the other side."""
    folded = [("X-A", "a\r\n Transfer-Encoding: chunked"), ("X-B", "b\r\n\t c")]
    sent = upstream_request_headers(folded, authority="a.example", authorization="Bearer T")
    assert sent[1:3] == [("X-A", "a Transfer-Encoding: chunked"), ("X-B", "b c")]
    assert client_response_headers(folded) == sent[1:3]


# --- head.py ------------------------------------------------------------------------------


class _Received:
    """A socket that has received `data`, then the end of the stream (http.client's view)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._data))


def upstream_answer(data: bytes) -> http.client.HTTPResponse:
    """An upstream's answer as forward.py reads its head: through CheckedHead."""
    response = http.client.HTTPResponse(_Received(data), method="GET")  # type: ignore[arg-type]
    response.fp = CheckedHead(response.fp)  # type: ignore[assignment]
    response.begin()
    return response


def application_head(data: bytes) -> tuple[str | None, list[tuple[str, str]]]:
    """The fault, and the headers http.server parses, of header lines an application sent
    before it shut down its side of the connection."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        with ours.makefile("rb") as reader:
            head = ApplicationHead(reader, ours, time.monotonic() + 10)
            headers = http.client.parse_headers(head)  # type: ignore[arg-type]
    return head.fault, headers.items()


def test_a_whole_head_is_read_as_it_is() -> None:
    answer = upstream_answer(b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 2\r\n\r\nok")
    assert (answer.status, answer.msg.items()) == (200, [("X-A", "1"), ("Content-Length", "2")])
    assert application_head(b"Host: a\r\nX-A: 1\r\n\r\n") == (None, [("Host", "a"), ("X-A", "1")])


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: a\rInjected: yes", "inside a header line"),
        (b"HTTP/1.1 200 OK\r\nX-B: a\x00b", "inside a header line"),
        (b"HTTP/1.1 200 OK\rInjected: yes", "inside its start line"),
        (b"HTTP/1.1 200 OK", "inside its start line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n", "before the blank line that ends it"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", "before the blank line"),
    ],
    ids=[
        "cr-in-last-line",
        "nul-in-last-line",
        "cr-in-status-line",
        "status-line-only",
        "no-blank-line",
        "after-100-continue",
    ],
)
def test_an_upstream_head_cut_short_is_malformed(answer: bytes, why: str) -> None:
    """http.client takes the end of the stream for the end of the head, and the email
    parser split the unchecked last line at a bare CR: `Injected` was a header."""
    with pytest.raises(MalformedHead, match=why):
        upstream_answer(answer)


def test_an_upstream_that_closed_before_answering_is_the_parsers_to_refuse() -> None:
    """RemoteDisconnected, by which forward.py knows a kept-alive connection closed while
    idle (and resends); and a line too long is its LineTooLong."""
    with pytest.raises(http.client.RemoteDisconnected):
        upstream_answer(b"")
    with pytest.raises(http.client.LineTooLong):
        upstream_answer(b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70000)


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        (b"Host: a\r\nX-A: a\rX-Injected: b", "the head ended inside a header line"),
        (b"Host: a\r\nX-A: a\x00b", "the head ended inside a header line"),
        (b"Host: a\r\n", "the head ended before the blank line that ends it"),
        (b"", "the head ended before the blank line that ends it"),
    ],
    ids=["cr-in-last-line", "nul-in-last-line", "no-blank-line", "no-header-line"],
)
def test_a_request_head_cut_short_is_a_fault(lines: bytes, why: str) -> None:
    """http.server took the end of the stream for the end of the head and made
    `X-Injected` a header: the upstream got it."""
    fault, headers = application_head(lines)
    assert fault == why
    assert all(name != "X-Injected" for name, _ in headers)
