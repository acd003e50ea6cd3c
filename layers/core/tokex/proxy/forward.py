"""The upstream side: one connection pool per route (verified TLS, keep-alive) and the
request body, streamed as it arrives.

urllib3 is asked for nothing clever: no retries, no redirects (a 3xx goes back to the
application as it is), no decoding of the body, and nothing read ahead
(`preload_content=False`). A request is sent once, with one exception, as HTTP clients
resend (RFC 9112 §9.3.1; Go's net/http does the same): a request without a body and with
an idempotent method that failed on a kept-alive connection before any answer came (the
upstream closed or reset it: its idle timeout, a NAT that forgot the flow, the time a
Lambda environment spent frozen) goes again on another connection.
"""

from __future__ import annotations

import http.client
import io
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import urllib3
import urllib3.connection
from urllib3.util import SKIP_HEADER

from tokex.proxy.config import Route
from tokex.proxy.head import CheckedHead
from tokex.proxy.headers import HeaderList

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0  # between two reads, not for the whole response
POOL_SIZE = 16  # connections kept open per upstream; more are made under load, not kept
CHUNK_BYTES = 64 * 1024
MAX_CHUNK_LINE_BYTES = 1024  # a chunk size and its extensions (RFC 9112 §7.1)
MAX_TRAILER_LINES = 64
# RFC 9110 §9.2.2's idempotent methods without PUT and DELETE, which carry or may carry a
# body; a request naming an Idempotency-Key is one its sender made safe to repeat.
RESENDABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
IDEMPOTENCY_HEADERS = frozenset({"idempotency-key", "x-idempotency-key"})
# How a connection the upstream closed while idle fails when it is used.
_CLOSED_WHILE_IDLE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


class BadBody(ValueError):
    """The application's request body is not framed as HTTP/1.1 requires (answered 400)."""


class ClientGone(Exception):
    """The application closed the connection before its request body was complete."""


class _CheckedHeadResponse(http.client.HTTPResponse):
    """http.client's response, its head read through head.CheckedHead: a faulty line is
    MalformedHead (urllib3's ProtocolError: a 502), never a header the parser made up."""

    def begin(self) -> None:
        reader = self.fp
        self.fp = CheckedHead(reader)  # type: ignore[assignment] # read as the reader
        try:
            super().begin()
        finally:
            if isinstance(self.fp, CheckedHead):  # not closed meanwhile (no body)
                self.fp = reader


# Whether the socket this thread last sent a request on had carried one before.
_last_send = threading.local()


class _CheckedHTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _CheckedHeadResponse
    requests_sent = 0  # on the current socket

    def request(self, *args: Any, **kwargs: Any) -> None:
        _last_send.reused = self.requests_sent > 0
        self.requests_sent += 1
        super().request(*args, **kwargs)

    def close(self) -> None:
        # urllib3 reconnects the same object when the upstream closed it while idle, and
        # http.client after a `Connection: close` answer: a request on the new socket is
        # a new connection's, never resent.
        super().close()
        self.requests_sent = 0


class _CheckedHTTPSConnection(_CheckedHTTPConnection, urllib3.connection.HTTPSConnection):
    pass


class Upstream:
    """A route's upstream: `ca_file` replaces system trust, certificates are verified."""

    def __init__(self, route: Route) -> None:
        self._manager = urllib3.PoolManager(
            num_pools=1,
            maxsize=POOL_SIZE,
            block=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=route.ca_file,
            retries=False,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
        )
        self._pool = self._manager.connection_from_url(route.upstream)
        https = isinstance(self._pool, urllib3.HTTPSConnectionPool)
        self._pool.ConnectionCls = _CheckedHTTPSConnection if https else _CheckedHTTPConnection
        self._base_path = urllib.parse.urlsplit(route.upstream).path

    def send(
        self,
        method: str,
        target: str,
        headers: HeaderList,
        body: Iterator[bytes] | None,
        *,
        chunked: bool,
    ) -> urllib3.BaseHTTPResponse:
        """Send the request (`target` appended to the upstream's base path) and return
        once the response's head has arrived; the caller reads the body and releases the
        connection. urllib3's errors (urllib3.exceptions.HTTPError) are the caller's."""
        sent = urllib3.HTTPHeaderDict()
        for name, value in headers:
            sent.add(name, value)
        # What the application did not send, urllib3 must not add: the headers go as given.
        for name in ("User-Agent", "Accept-Encoding"):
            if name not in sent:
                sent[name] = SKIP_HEADER
        resendable = body is None and (
            method in RESENDABLE_METHODS
            or any(name.lower() in IDEMPOTENCY_HEADERS for name in sent)
        )
        # Each failure on a kept-alive connection takes it out of the pool, so this ends
        # on a new connection at the latest (the pool's idle ones may all have gone stale
        # together, in a frozen Lambda environment).
        for _ in range(POOL_SIZE):
            _last_send.reused = False
            try:
                return self._urlopen(method, target, sent, body, chunked)
            except urllib3.exceptions.ProtocolError as err:
                if not (resendable and _last_send.reused and _closed_while_idle(err)):
                    raise
        return self._urlopen(method, target, sent, body, chunked)

    def _urlopen(
        self,
        method: str,
        target: str,
        headers: urllib3.HTTPHeaderDict,
        body: Iterator[bytes] | None,
        chunked: bool,
    ) -> urllib3.BaseHTTPResponse:
        return self._pool.urlopen(
            method,
            self._base_path + target,
            body=body,
            headers=headers,
            retries=False,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
            release_conn=False,
            chunked=chunked,
        )

    def close(self) -> None:
        self._manager.clear()


def _closed_while_idle(err: urllib3.exceptions.ProtocolError) -> bool:
    """The upstream closed or reset the connection before any answer came."""
    return any(isinstance(arg, _CLOSED_WHILE_IDLE) for arg in err.args)


def request_framing(headers: list[tuple[str, str]]) -> tuple[int | None, bool]:
    """(Content-Length, chunked) of a request (RFC 9112 §6): neither means no body. Both
    at once, several different lengths, or a transfer coding other than `chunked` are
    refused: a proxy and an upstream that framed one request differently could be made
    to see two (request smuggling)."""
    lengths = {value.strip() for name, value in headers if name.lower() == "content-length"} or None
    codings = [
        coding.strip().lower()
        for name, value in headers
        if name.lower() == "transfer-encoding"
        for coding in value.split(",")
    ]
    if codings and lengths:
        raise BadBody("both Content-Length and Transfer-Encoding")
    if codings:
        if codings != ["chunked"]:
            raise BadBody("the only transfer coding accepted is chunked")
        return None, True
    if lengths is None:
        return None, False
    if len(lengths) > 1:
        raise BadBody("several different Content-Length values")
    (length,) = lengths
    if not is_byte_count(length):
        raise BadBody("Content-Length is not a number of bytes")
    return int(length), False


def is_byte_count(text: str) -> bool:
    """A Content-Length as RFC 9110 §8.6 writes it (1*DIGIT), short enough to be one;
    not what Python's int() also reads (`1_0`, `+10`, other scripts' digits)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def length_body(stream: io.BufferedIOBase, length: int) -> Iterator[bytes]:
    """Exactly `length` bytes of the application's connection, piece by piece as they
    arrive (never waiting for more than has come)."""
    remaining = length
    while remaining:
        data = _read1(stream, min(CHUNK_BYTES, remaining))
        remaining -= len(data)
        yield data


def chunked_body(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """The data of a chunked body (RFC 9112 §7.1), piece by piece as it arrives; chunk
    extensions and trailer fields are dropped (urllib3 sends the data chunked again)."""
    while True:
        line = _readline(stream)
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise BadBody("a chunk size is not hexadecimal")
        size = int(size_text, 16)
        if size == 0:
            break
        yield from length_body(stream, size)
        if _readline(stream).strip():
            raise BadBody("a chunk is longer than its size")
    for _ in range(MAX_TRAILER_LINES):
        if not _readline(stream).strip():
            return
    raise BadBody("too many trailer fields")


def _read1(stream: io.BufferedIOBase, size: int) -> bytes:
    try:
        data = stream.read1(size)
    except OSError as err:  # timed out, reset
        raise ClientGone(f"the request body could not be read: {err}") from None
    if not data:
        raise ClientGone("the request body ended early")
    return data


def _readline(stream: io.BufferedIOBase) -> bytes:
    try:
        line = stream.readline(MAX_CHUNK_LINE_BYTES + 1)
    except OSError as err:
        raise ClientGone(f"the request body could not be read: {err}") from None
    if not line:
        raise ClientGone("the request body ended early")
    if len(line) > MAX_CHUNK_LINE_BYTES or not line.endswith(b"\n"):
        raise BadBody("a line of the chunked body is too long")
    return line
