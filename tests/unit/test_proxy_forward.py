"""tokex/proxy/forward.py: the request body's framing, and bodies read as they arrive."""

from __future__ import annotations

import io

import pytest

from tokex.proxy.forward import (
    BadBody,
    ClientGone,
    chunked_body,
    length_body,
    request_framing,
)


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
