"""Reading one HTTP/1.1 request off a socket, for the local front (RFC 9112).

Decides only whether the bytes on the wire are a request the front will route, and
refuses the rest with `RequestRefused`, which carries the status of the contract's JSON
error (the table: docs/local.md "HTTP answers"). The rules read top to bottom in
`read_head` (request line, then header section) and `body_length` (framing).

Every read shares one deadline per connection (`DeadlineReader`): a socket timeout alone
is per `recv`, so a client dripping one byte a second would hold a thread for ever.
"""

from __future__ import annotations

import io
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, BinaryIO

from tokex import identifiers

# The whole request (request line, headers, body) must arrive this soon after the
# connection is accepted; a real client on loopback needs milliseconds.
REQUEST_TIMEOUT_SECONDS = 5.0
# CloudFront's limit on the URL; the request line holds little else.
MAX_REQUEST_LINE_BYTES = 8 * 1024
MAX_HEADER_FIELDS = 100
MAX_HEADER_BYTES = 16 * 1024
# The handlers refuse far less (16 KiB, docs/contract.md); in AWS, a body of about 4.5 MB
# or more never reaches them (base64 in an event over Lambda's 6 MB invocation limit:
# API Gateway answers itself). The front only protects itself from reading unbounded input.
MAX_BODY_BYTES = 1024 * 1024
# RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
MAX_EMPTY_LINES = 4

_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_TARGET = re.compile(r"[\x21-\x7e]+")  # visible US-ASCII (RFC 3986 allows nothing else)
# RFC 9110 §5.5: CR, LF and NUL make a field value invalid; so do the other controls.
_FIELD_VALUE_INVALID = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]+")


class RequestRefused(Exception):
    """The request gets the contract's JSON error with this status and description."""

    def __init__(self, status: int, description: str, *, allow: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.allow = allow


class ConnectionIdle(Exception):
    """The client closed, or sent nothing in time: there is no request to answer."""


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str  # HTTP/1.0 or HTTP/1.1
    fields: tuple[tuple[str, str], ...]  # (lower-case name, value), in the order sent

    def values(self, name: str) -> list[str]:
        return [value for field, value in self.fields if field == name]

    def headers(self) -> dict[str, str]:
        """One value per name, repeated fields joined with commas, as API Gateway's
        payload 2.0 event has them."""
        joined: dict[str, str] = {}
        for name, value in self.fields:
            joined[name] = f"{joined[name]},{value}" if name in joined else value
        return joined

    def expects_continue(self) -> bool:
        """RFC 9110 §10.1.1: the client waits for `100 Continue` before sending the body."""
        return self.version == "HTTP/1.1" and any(
            value.strip().lower() == "100-continue" for value in self.values("expect")
        )


class DeadlineReader(io.RawIOBase):
    """The socket's bytes, each `recv` bounded by what is left of one deadline."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._deadline = time.monotonic() + timeout
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(remaining)
        count = self._sock.recv_into(buffer)
        self.received += count
        return count


class OneRequestWithinADeadline:
    """A mixin for `http.server.BaseHTTPRequestHandler`s of one request per connection
    (the local STS endpoint, the IMDS emulator): the request, head and body, must arrive
    within `request_seconds` of the connection, as the front's must. A per-read timeout
    alone let a client sending a byte every few seconds hold a thread for ever."""

    request_seconds: float = 10.0
    connection: socket.socket
    rfile: Any

    def setup(self) -> None:
        super().setup()  # type: ignore[misc]
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, self.request_seconds))


def read_head(stream: BinaryIO) -> RequestHead:
    """The request line and header section (RFC 9112 §3, §5)."""
    line = stream.readline(MAX_REQUEST_LINE_BYTES + 1)
    for _ in range(MAX_EMPTY_LINES):
        if line not in (b"\r\n", b"\n"):
            break
        line = stream.readline(MAX_REQUEST_LINE_BYTES + 1)
    if not line:
        raise ConnectionIdle
    if len(line) > MAX_REQUEST_LINE_BYTES:
        raise RequestRefused(414, f"the request line is over {MAX_REQUEST_LINE_BYTES} bytes")
    parts = _line_text(line).split(" ")
    if len(parts) != 3 or not all(parts):
        raise RequestRefused(400, "malformed request line: send METHOD TARGET HTTP/1.1")
    method, target, version = parts
    if not identifiers.HTTP_TOKEN.fullmatch(method):
        raise RequestRefused(400, "malformed request method")
    if not _TARGET.fullmatch(target):
        raise RequestRefused(400, "malformed request target")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise RequestRefused(400, "malformed HTTP version")
    if match[1] != "1":  # HTTP/0.9 has no headers to answer with; HTTP/2 is not spoken
        raise RequestRefused(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")

    fields: list[tuple[str, str]] = []
    section_bytes = 0
    while True:
        line = stream.readline(MAX_HEADER_BYTES - section_bytes + 1)
        section_bytes += len(line)
        if section_bytes > MAX_HEADER_BYTES:
            raise RequestRefused(431, f"the header section is over {MAX_HEADER_BYTES} bytes")
        if line in (b"\r\n", b"\n"):
            break
        if len(fields) == MAX_HEADER_FIELDS:
            raise RequestRefused(431, f"more than {MAX_HEADER_FIELDS} header fields")
        text = _line_text(line)
        if text[:1] in (" ", "\t"):  # RFC 9112 §5.2: obsolete line folding
            raise RequestRefused(400, "folded header lines are not accepted")
        name, colon, value = text.partition(":")
        # RFC 9112 §5.1: no whitespace between the field name and the colon.
        if not colon or not identifiers.HTTP_TOKEN.fullmatch(name):
            raise RequestRefused(400, "malformed header field")
        value = value.strip(" \t")
        if _FIELD_VALUE_INVALID.search(value):
            raise RequestRefused(400, f"control character in header field {name}")
        fields.append((name.lower(), value))
    head = RequestHead(method, target, version, tuple(fields))
    # RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host.
    if version == "HTTP/1.1" and len(head.values("host")) != 1:
        raise RequestRefused(400, "an HTTP/1.1 request needs exactly one Host header")
    return head


def body_length(head: RequestHead) -> int:
    """The body's length from Content-Length, the one framing the front reads."""
    if head.values("transfer-encoding"):
        # RFC 9110 §15.5.12: 411 asks for the body again with a Content-Length.
        raise RequestRefused(411, "send the body with Content-Length, not Transfer-Encoding")
    lengths = head.values("content-length")
    if not lengths:
        return 0  # RFC 9112 §6.3: no Content-Length and no Transfer-Encoding: no body
    if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0]):
        raise RequestRefused(400, "Content-Length must be one decimal number")
    digits = lengths[0].lstrip("0") or "0"
    if len(digits) > len(str(MAX_BODY_BYTES)) or int(digits) > MAX_BODY_BYTES:
        raise RequestRefused(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    return int(digits)


def read_body(stream: BinaryIO, length: int) -> bytes:
    body = stream.read(length) if length else b""
    if len(body) < length:
        raise RequestRefused(400, "the body ended before Content-Length bytes")
    return body


def request_path(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form target, or of an absolute-form one (RFC 9112
    §3.2.2: a server MUST accept it)."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    try:
        parts = urllib.parse.urlsplit(target)
    except ValueError:  # a bracketed host that is no IPv6 address (`http://[/token`)
        raise RequestRefused(400, "the request target is not a valid URL") from None
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return parts.path or "/", parts.query
    raise RequestRefused(400, "the request target must be a path")


def _line_text(line: bytes) -> str:
    """A line without its CRLF (or bare LF, RFC 9112 §2.2); a line cut short by the
    end of the stream means the client stopped in the middle of the request."""
    if not line.endswith(b"\n"):
        raise RequestRefused(400, "the request ended in the middle of a line")
    text = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if b"\r" in text or b"\0" in text:
        raise RequestRefused(400, "stray CR or NUL in the request")
    return text.decode("latin-1")
