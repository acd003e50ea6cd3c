"""A message's head (its start line and header lines), checked line by line as it is read.

Python's parsers are lenient where a proxy must not be (RFC 9112 §2.2, §5). http.server and
http.client take a header line they cannot parse (`X-Bad : 1`, a line without a colon, a
name that is no token) for the end of the headers: what follows became the body, which
the proxy would then read as a second request and forward with the token (request
smuggling). And the email parser under both splits a line at a bare CR, so that whatever
follows it became a header of its own (header injection), in requests and in the
upstream's answers alike. So every line is checked here before a parser sees it, and a
head with a faulty line is refused whole: 400 to the application, 502 for an upstream's.

A head cut short is refused too. Both parsers take the end of the stream for the end of
the head, and a last line without its line break for a whole one, which the email parser
then splits at a bare CR all the same: `X-A: a`, a CR, `Injected: yes` and the end of the
stream (an upstream that closes, an application that shuts down its side) made a header.

Refused in a line: no line break at its end (the stream ended inside it), any control
character but HTAB (a bare CR, NUL, ...; RFC 9110 §5.5), a field line that is not
`token ":"` at its start (whitespace before the colon, RFC 9112 §5.1), and whitespace
before the first field line (RFC 9112 §2.2). A line that starts with whitespace later is
obs-fold, unfolded by headers.py. A start line (request line, status line) may hold no
control character either: a reason phrase with a CR would end the status line the
application reads.

An application's head must also arrive in time: HEAD_SECONDS from its first byte, however
slowly it trickles in (a connection held open one byte at a time would otherwise hold a
thread for ever).
"""

from __future__ import annotations

import http.client
import re
import socket
import time
from typing import Any

from tokex import identifiers

HEAD_SECONDS = 30.0
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# A field line starts with its name, an RFC 9110 token, and a colon.
_FIELD_LINE = re.compile(identifiers.HTTP_TOKEN.pattern.encode() + b":")


class MalformedHead(http.client.HTTPException):
    """An upstream's answer has a faulty line in its head (answered 502)."""


class HeadTimeout(TimeoutError):
    """The application's head did not arrive within HEAD_SECONDS (answered 408)."""


def _content(line: bytes) -> bytes | None:
    """A line without its terminator (CRLF, or a lone LF, RFC 9112 §2.2); None if it has
    none (the stream ended inside it)."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return None


def start_line_fault(line: bytes) -> str | None:
    """Why a start line is refused, or None. None for an empty one too: the stream ended
    before it (an upstream that closed a kept-alive connection), which the parser refuses
    itself."""
    if not line:
        return None
    content = _content(line)
    if content is None:
        return "the head ended inside its start line"
    if _CONTROL.search(content):
        return "the start line holds a control character"
    return None


def field_line_fault(line: bytes, *, first: bool) -> str | None:
    """Why a line of the header section is refused, or None (the blank line that ends it
    is fine). An empty one is the end of the stream before that blank line."""
    if not line:
        return "the head ended before the blank line that ends it"
    content = _content(line)
    if content is None:
        return "the head ended inside a header line"
    if not content:
        return None
    if _CONTROL.search(content):
        return "a header line holds a control character (a bare CR, NUL, ...)"
    if content[:1] in (b" ", b"\t"):
        return "whitespace before the first header line" if first else None
    if not _FIELD_LINE.match(content):
        return "a header line is not NAME: VALUE (no whitespace before the colon)"
    return None


class CheckedHead:
    """A reader as a parser reads a head from it: each line is checked (start line first,
    again after a blank line: an interim answer's head is followed by another) and the
    first faulty one raises MalformedHead. Everything else is the reader's own."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._start = True
        self._first_field = False

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._reader.readline(limit)
        if limit > 0 and len(line) >= limit:
            return line  # a line too long: the parser refuses it
        if self._start:
            fault = start_line_fault(line)
            self._start, self._first_field = False, True
        else:
            fault = field_line_fault(line, first=self._first_field)
            self._first_field = False
            self._start = _content(line) == b""
        if fault is not None:
            raise MalformedHead(fault)
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


# The header lines of one request, together (RFC 6585 §5: 431 beyond): far above what any
# application sends, far below what http.server's own limits let a connection hold.
MAX_HEAD_BYTES = 64 * 1024


class ApplicationHead:
    """The application's connection as http.server reads a request's header lines from
    it: each line by the head's deadline and checked. The first faulty line ends the head
    (the parser gets the blank line instead, so that it stops there) and is kept in
    `fault`, for the handler's 400."""

    def __init__(self, reader: Any, sock: socket.socket, deadline: float) -> None:
        self._reader = reader
        self._socket = sock
        self._deadline = deadline
        self._first = True
        self._size = 0
        self.fault: str | None = None
        self.fault_status = 400

    def readline(self, limit: int = -1) -> bytes:
        if self.fault is not None:
            return b"\r\n"
        line = readline_by(self._reader, self._socket, limit, self._deadline)
        if limit > 0 and len(line) >= limit:
            return line  # a line too long: the parser refuses it (431)
        self._size += len(line)
        if self._size > MAX_HEAD_BYTES:
            # http.server alone allows 100 lines of 64 KiB: 6.5 MB a connection, held.
            self.fault, self.fault_status = (
                f"the request's headers exceed {MAX_HEAD_BYTES} bytes",
                431,
            )
            return b"\r\n"
        self.fault = field_line_fault(line, first=self._first)
        self._first = False
        return b"\r\n" if self.fault is not None else line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def readline_by(reader: Any, sock: socket.socket, limit: int, deadline: float) -> bytes:
    """A line (at most `limit` bytes when `limit` > 0) of a buffered reader (`peek`) read
    by `deadline` (`time.monotonic()`), each wait for bytes bounded by what is left of it:
    HeadTimeout when it passes. The socket's timeout is left at what is left of it."""
    parts: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HeadTimeout("the request head did not arrive in time")
        sock.settimeout(left)
        try:
            available = reader.peek(1)  # at most one receive, and only when nothing is buffered
        except TimeoutError:
            raise HeadTimeout("the request head did not arrive in time") from None
        if not available:
            return b"".join(parts)  # the end of the stream
        end = available.find(b"\n")
        take = len(available) if end < 0 else end + 1
        if limit > 0:
            take = min(take, limit - size)
        data = reader.read(take)  # buffered already: no wait
        parts.append(data)
        size += len(data)
        if data.endswith(b"\n") or (limit > 0 and size >= limit):
            return b"".join(parts)
