"""The events `tokex local`'s front hands the handlers, against what API Gateway's HTTP API
(payload format 2.0) makes of the same request (AWS docs, "Working with AWS Lambda proxy
integrations for HTTP APIs"): a handler that read cookies, query parameters or the body's
absence would meet locally what it meets deployed."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tokex.local.front import FrontServer, bind_front


@pytest.fixture
def echo_front() -> Iterator[tuple[FrontServer, list[dict[str, Any]]]]:
    """A front whose one function records its event and answers 200."""
    events: list[dict[str, Any]] = []

    def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
        events.append(event)
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "{}"}

    front = bind_front(0)
    front.functions["/echo"] = echo
    thread = threading.Thread(target=front.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield front, events
    finally:
        front.shutdown()
        front.server_close()


def send(front: FrontServer, request: bytes) -> bytes:
    with socket.create_connection(front.server_address[:2], timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_cookies_query_parameters_and_protocol_as_api_gateway_makes_them(echo_front) -> None:
    front, events = echo_front
    answer = send(
        front,
        b"GET /echo?a=1&b=&a=2&c=x%20y HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        b"Cookie: session=abc; theme=dark\r\nX-One: 1\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    [event] = events
    assert event["cookies"] == ["session=abc", "theme=dark"]
    assert "cookie" not in event["headers"]
    assert event["headers"]["x-one"] == "1"
    assert event["rawQueryString"] == "a=1&b=&a=2&c=x%20y"
    assert event["queryStringParameters"] == {"a": "1,2", "b": "", "c": "x y"}
    assert event["requestContext"]["http"]["protocol"] == "HTTP/1.0"
    assert "body" not in event and event["isBase64Encoded"] is False
    json.dumps(event)  # what Lambda would serialize


def test_a_request_without_cookies_or_query_has_neither(echo_front) -> None:
    front, events = echo_front
    send(
        front,
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\n\r\nhello",
    )
    [event] = events
    assert "cookies" not in event and "queryStringParameters" not in event
    assert event["isBase64Encoded"] is True and event["body"] == "aGVsbG8="
    assert event["requestContext"]["http"]["protocol"] == "HTTP/1.1"
