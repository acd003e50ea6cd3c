"""The limit on the application's connections (tokex/proxy/connections.py) follows the
descriptors the process may open, and the accept loop (server.py) neither spins nor stops
when they run out. The real proxy runs in a process of its own, under a low RLIMIT_NOFILE:
its CPU time over a hold is a bound on spinning (a loop that spins takes a whole core), not
a timing of speed."""

from __future__ import annotations

import contextlib
import http.client
import json
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex.proxy.connections import (
    DESCRIPTORS_PER_CONNECTION,
    MAX_CONNECTIONS,
    RESERVED_DESCRIPTORS,
    connection_limit,
    descriptors_needed,
)
from tokex.proxy.forward import POOL_SIZE

# The proxy, its log lines on stdout, told what to do on stdin: `cpu` (its CPU time so
# far), `limit` (its RLIMIT_NOFILE), `hog` (take every descriptor left, as another part of
# the process could) and `free` (give them back). argv: the upstream, soft and hard limit.
PROXY_PROCESS = r"""
import os, resource, sys, time
from pathlib import Path

resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[3])))
from tokex.proxy import JsonLog, ProxyConfig, ProxyServer

class Tokens:
    def token(self, route): return "token"
    def invalidate(self, route, token): pass
    def has_token(self, route): return True
    def token_response(self, route): return {"access_token": "token", "expires_in": 1}

route = {"prefix": "/", "upstream": sys.argv[1], "audience": "orders-api"}
document = {"endpoint": "https://auth.example.com", "listen": "127.0.0.1:0", "routes": [route]}
config = ProxyConfig.from_document(document, base_dir=Path("/"), environ={})
log = JsonLog(sys.stdout)
server = ProxyServer(config, token_source=Tokens(), secret="s", log=log)
server.start()
held = []
for command in sys.stdin:
    command = command.strip()
    if command == "cpu":
        log.write("cpu", seconds=time.process_time())
    elif command == "limit":
        log.write("limit", nofile=resource.getrlimit(resource.RLIMIT_NOFILE))
    elif command == "hog":
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as err:
            log.write("hogging", descriptors=len(held), error=err.errno)
    elif command == "free":
        for fd in held:
            os.close(fd)
        held.clear()
        log.write("freed")
server.shutdown(5)
"""
# A loop that spins takes a whole core, or half of one on two cores loaded twice over; the
# proxy waiting takes well under 1 %: the bound is far from both, so that neither a loaded
# machine nor a slow one decides (CPU time does not grow with the wait for a core).
MAX_CPU_SHARE = 0.1
HOLD_SECONDS = 2.0


class Echo(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_document(200, b'{"ok": true}', {})


@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    with serving(LoopbackServer(Echo)) as server:
        yield server


class ProxyProcess:
    def __init__(self, upstream_url: str, soft: int, hard: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PROXY_PROCESS, upstream_url, str(soft), str(hard)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.started = self.wait_for("started")
        self.port = int(self.started["listening"]["listen"].rsplit(":", 1)[1])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                record = json.loads(line)
            except ValueError:  # a traceback, say
                record = {"event": "output", "text": line}
            with self._arrived:
                self.lines.append(record)
                self._arrived.notify_all()

    def events(self, event: str) -> list[dict[str, Any]]:
        with self._arrived:
            return [line for line in self.lines if line["event"] == event]

    def wait_for(self, event: str, count: int = 1) -> dict[str, Any]:
        """The `count`-th line of `event`, once it has come (30 s at most: a failure)."""
        with self._arrived:
            self._arrived.wait_for(
                lambda: len(self.events(event)) >= count or self.process.poll() is not None,
                timeout=30,
            )
        found = self.events(event)
        assert len(found) >= count, (event, self.lines)
        return found[count - 1]

    def ask(self, command: str, event: str) -> dict[str, Any]:
        count = len(self.events(event)) + 1
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.wait_for(event, count)

    def cpu_share_over_a_hold(self) -> float:
        """The share of a core the proxy used over HOLD_SECONDS of doing nothing asked."""
        start, before = time.monotonic(), self.ask("cpu", "cpu")["seconds"]
        threading.Event().wait(HOLD_SECONDS)
        after, wall = self.ask("cpu", "cpu")["seconds"], time.monotonic() - start
        return float(after - before) / wall

    def request(self) -> int:
        """The status of a request through the proxy, once it is accepted again."""
        for _ in range(100):
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request("GET", "/orders/1")
                return connection.getresponse().status
            except (ConnectionError, http.client.RemoteDisconnected):
                threading.Event().wait(0.05)  # until the proxy has seen connections leave
            finally:
                connection.close()
        raise AssertionError("the proxy never served the request")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def proxy_process(upstream: LoopbackServer, soft: int, hard: int) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(upstream.url, soft, hard)
    try:
        yield proxy
    finally:
        proxy.stop()


@contextlib.contextmanager
def connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        yield held
    finally:
        for connection in held:
            connection.close()


def test_the_limit_leaves_descriptors_for_the_upstreams_and_the_process() -> None:
    assert connection_limit(None, 1) == MAX_CONNECTIONS  # no limit on descriptors
    for routes in (1, 3, 40):
        assert connection_limit(descriptors_needed(routes), routes) == MAX_CONNECTIONS
        assert connection_limit(descriptors_needed(routes) * 10, routes) == MAX_CONNECTIONS
        for descriptors in range(RESERVED_DESCRIPTORS, descriptors_needed(routes)):
            limit = connection_limit(descriptors, routes)
            used = limit * DESCRIPTORS_PER_CONNECTION + POOL_SIZE * routes
            assert limit == 1 or used + RESERVED_DESCRIPTORS <= descriptors, descriptors
            assert limit < MAX_CONNECTIONS
    assert DESCRIPTORS_PER_CONNECTION == 2  # its own socket and its upstream's
    # systemd's default soft limit and Lambda's: 1024, one route.
    assert connection_limit(1024, 1) == (1024 - RESERVED_DESCRIPTORS - POOL_SIZE) // 2
    assert connection_limit(5, 1) == 1  # always one


def test_the_proxy_raises_its_soft_descriptor_limit_towards_the_hard_one(upstream) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    needed = descriptors_needed(1)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit on descriptors here ({hard}) is below {needed}")
    with proxy_process(upstream, 64, hard) as proxy:
        assert proxy.started["max_connections"] == MAX_CONNECTIONS
        assert proxy.ask("limit", "limit")["nofile"] == [needed, hard]
    with proxy_process(upstream, 200, 200) as proxy:  # no higher: fewer connections
        assert proxy.started["max_connections"] == connection_limit(200, 1) < 200 // 2
        assert proxy.ask("limit", "limit")["nofile"] == [200, 200]


def test_more_connections_than_descriptors_are_refused_without_spinning(upstream) -> None:
    """The limit engages before the descriptors run out: past them, `accept` failed
    (EMFILE) on a listener that stayed readable, the accept loop spun on a whole core,
    and the connections over the limit hung unanswered, nothing logged."""
    with proxy_process(upstream, 200, 200) as proxy, connections(proxy.port, 250) as held:
        assert proxy.cpu_share_over_a_hold() < MAX_CPU_SHARE
        refused = proxy.wait_for("connection_refused")
        assert refused["reason"] == "too many connections"
        last = held[-1]  # over the limit: closed as soon as it was accepted
        with contextlib.suppress(ConnectionResetError):
            assert last.recv(1) == b""
        for connection in held:
            connection.close()
        assert proxy.request() == 200


def test_with_no_descriptor_left_accept_backs_off_and_serves_once_they_are_back(
    upstream,
) -> None:
    """Another part of the process holds every descriptor: the accept loop waits and tries
    again (one log line), and the connections waiting meanwhile are served afterwards."""
    with proxy_process(upstream, 200, 200) as proxy:
        assert proxy.ask("hog", "hogging")["descriptors"] > 0
        with connections(proxy.port, 5) as waiting:
            assert proxy.cpu_share_over_a_hold() < MAX_CPU_SHARE
            failed = proxy.wait_for("accept_failed")
            assert failed["error"] == "EMFILE"
            proxy.ask("free", "freed")
            waiting[0].sendall(b"GET /orders/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert waiting[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        assert proxy.request() == 200
        # One line per 10 s: not one per try (ten a second, twenty over the hold alone).
        assert len(proxy.events("accept_failed")) < 5
