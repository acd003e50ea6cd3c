"""The benchmark's AWS proxy (benchmarks/aws_proxy.py) never sends a request twice: a
write the emulator received and a resent copy would be a replay. A kept-alive connection
the emulator closed while idle is replaced before the request goes out."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.aws_proxy import CONTROL, AwsProxy
from tests.support.loopback import TcpServer

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class ScriptedUpstream(TcpServer):
    """An HTTP/1.1 server that, for its n-th request, does the n-th of `actions`:
    "answer" (and keep the connection), "answer-close" (answer, then stop sending on the
    connection without saying so, as a server closing an idle kept-alive connection
    does; whatever still arrives on it is kept in `after_close`) or "drop" (close
    without answering, the request read)."""

    def __init__(self, actions: list[str]) -> None:
        self.actions = iter(actions)
        self.received: list[bytes] = []
        self.after_close: list[bytes] = []
        self.closed = threading.Event()
        super().__init__()

    def serve(self, connection: socket.socket, number: int) -> None:
        with connection, connection.makefile("rb") as reader:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.received.append(reader.read(length))
                action = next(self.actions)
                if action == "drop":
                    connection.shutdown(socket.SHUT_RDWR)
                    return
                connection.sendall(ANSWER)
                if action == "answer-close":
                    connection.shutdown(socket.SHUT_WR)
                    self.closed.set()
                    self.after_close.extend(iter(lambda: reader.read1(65536), b""))
                    return


@pytest.fixture
def through_proxy() -> Iterator[object]:
    started: list[tuple[AwsProxy, ScriptedUpstream, http.client.HTTPConnection]] = []

    def start(actions: list[str]) -> tuple[http.client.HTTPConnection, ScriptedUpstream]:
        upstream = ScriptedUpstream(actions)
        proxy = AwsProxy(upstream.url)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        host, port = proxy.server_address[:2]
        client = http.client.HTTPConnection(str(host), int(port), timeout=10)
        started.append((proxy, upstream, client))
        return client, upstream

    yield start
    for proxy, upstream, client in started:
        client.close()
        proxy.shutdown()
        proxy.server_close()
        upstream.stop()


def _post(client: http.client.HTTPConnection, body: bytes) -> int:
    client.request("POST", "/", body=body, headers={"X-Amz-Target": "TrentService.Sign"})
    response = client.getresponse()
    response.read()
    return response.status


def test_a_kept_alive_connection_is_used_again(through_proxy) -> None:
    client, upstream = through_proxy(["answer", "answer"])
    assert _post(client, b"first") == 200
    assert _post(client, b"second") == 200
    assert upstream.received == [b"first", b"second"]
    assert upstream.connections == 1


def test_a_connection_closed_while_idle_is_replaced_before_sending(through_proxy) -> None:
    client, upstream = through_proxy(["answer-close", "answer"])
    assert _post(client, b"first") == 200
    assert upstream.closed.wait(5)  # the emulator has closed the idle connection
    assert _post(client, b"second") == 200
    assert upstream.received == [b"first", b"second"]  # each request sent once
    assert upstream.connections == 2
    upstream.stop()
    assert upstream.after_close == []  # nothing sent on the closed connection


@pytest.mark.parametrize(
    "actions",
    [["drop"], ["answer", "drop"]],
    ids=["new connection", "kept-alive connection"],
)
def test_a_request_lost_after_sending_is_never_sent_again(through_proxy, actions) -> None:
    client, upstream = through_proxy([*actions, "answer", "answer"])
    for body in (b"earlier", b"lost")[-len(actions) :]:
        if body == b"lost":
            with pytest.raises((http.client.HTTPException, OSError)):
                _post(client, body)
        else:
            assert _post(client, body) == 200
    # The emulator got the lost request once: a resent write would be a replay.
    assert upstream.received.count(b"lost") == 1
    assert len(upstream.received) == len(actions)
    assert upstream.connections == 1  # the kept-alive case did use its kept connection


def test_concurrent_clients_each_request_forwarded_once(through_proxy) -> None:
    clients, requests_each = 8, 5
    first, upstream = through_proxy(["answer"] * clients * requests_each)
    statuses: list[int] = []

    def one_client(index: int) -> None:
        # Its own connection to the proxy, so its own proxy thread and upstream connection.
        client = http.client.HTTPConnection(first.host, first.port, timeout=10)
        try:
            statuses.extend(_post(client, f"{index}-{n}".encode()) for n in range(requests_each))
        finally:
            client.close()

    threads = [threading.Thread(target=one_client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * clients * requests_each
    sent = [f"{index}-{n}".encode() for index in range(clients) for n in range(requests_each)]
    assert sorted(upstream.received) == sorted(sent)


def _control(client: http.client.HTTPConnection, what: str, body: bytes = b"") -> Any:
    """One of the benchmark's control calls (ProxyProcess), on a connection of its own."""
    control = http.client.HTTPConnection(client.host, client.port, timeout=10)
    try:
        control.request("POST", f"{CONTROL}{what}", body=body)
        return json.loads(control.getresponse().read())
    finally:
        control.close()


def test_a_stalled_operation_is_held_unanswered_until_the_stall_ends(through_proxy) -> None:
    """The deadline's figures hold one upstream's calls (several at once) while the
    others are answered; ending the stall closes the held ones, never sends them on."""
    first, upstream = through_proxy(["answer", "answer"])
    assert _control(first, "stall", b"kms:Sign") == {}
    held: list[object] = []
    lock = threading.Lock()

    def a_held_sign(index: int) -> None:
        client = http.client.HTTPConnection(first.host, first.port, timeout=30)
        try:
            outcome: object = _post(client, f"held-{index}".encode())
        except (http.client.HTTPException, OSError) as cut:
            outcome = cut
        finally:
            client.close()
        with lock:
            held.append(outcome)

    threads = [threading.Thread(target=a_held_sign, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    other = http.client.HTTPConnection(first.host, first.port, timeout=10)
    other.request("POST", "/", body=b"put", headers={"X-Amz-Target": "DynamoDB_20120810.PutItem"})
    assert other.getresponse().read() == b"{}"  # answered meanwhile
    other.close()
    signs = 0
    for _ in range(1000):  # until all three are at the proxy (counted as they arrive)
        signs += _control(first, "take").get("kms:Sign", 0)
        if signs == 3:
            break
        threading.Event().wait(0.01)
    assert signs == 3
    assert held == []  # the Signs are still held (a thread that returned would be here)
    assert _control(first, "stall") == {}
    for thread in threads:
        thread.join(10)
    assert len(held) == 3 and all(isinstance(outcome, Exception) for outcome in held), held
    assert upstream.received == [b"put"]  # none of the held calls went on
    assert _post(first, b"after") == 200  # the stall is over
    assert upstream.received == [b"put", b"after"]
