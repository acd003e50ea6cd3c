"""tokex/proxy/headers.py: what of a request's and a response's headers is passed on."""

from __future__ import annotations

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
