"""Raw HTTP/1.1 against the local front: bytes in, the one answer parsed, and the shape
of the contract's JSON error (docs/contract.md) checked."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

from tests.e2e.running_local import RunningLocal

# Generous: the front closes slow connections after REQUEST_TIMEOUT_SECONDS; a test that
# waits this long for an answer has found a front that holds connections.
READ_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    interim: tuple[int, ...] = ()  # 1xx answers before the final one

    def json(self) -> dict[str, object]:
        parsed = json.loads(self.body)
        assert isinstance(parsed, dict)
        return parsed


def parse_reply(data: bytes) -> Reply:
    interim: list[int] = []
    while True:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"no complete answer: {head!r}"
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, _phrase = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        if status.startswith("1"):
            interim.append(int(status))
            continue
        headers = dict(line.split(": ", 1) for line in header_lines)
        return Reply(int(status), {k.lower(): v for k, v in headers.items()}, data, tuple(interim))


def read_to_end(sock: socket.socket) -> bytes:
    sock.settimeout(READ_TIMEOUT_SECONDS)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def send_raw(local: RunningLocal, data: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes, read until the front closes: everything it sent back."""
    with socket.create_connection(("127.0.0.1", local.port), timeout=READ_TIMEOUT_SECONDS) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_to_end(sock)


def send(local: RunningLocal, data: bytes, *, half_close: bool = False) -> Reply:
    """Send raw bytes, read until the front closes, parse its one answer."""
    return parse_reply(send_raw(local, data, half_close=half_close))


def request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_contract_error(
    reply: Reply,
    status: int,
    *,
    allow: str | None = None,
    error: str = "invalid_request",
    head: bool = False,
) -> None:
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["connection"] == "close"
    assert reply.headers.get("allow") == allow
    if head:  # the length of the answer a GET would have had, and no body
        assert reply.body == b"" and int(reply.headers["content-length"]) > 0
        return
    assert int(reply.headers["content-length"]) == len(reply.body)
    body = reply.json()
    assert set(body) == {"error", "error_description"} and body["error"] == error
