"""The request's time budget: one per request, checked before and bounding every read."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import urllib3

from tokex import bounded_http, deadline
from tokex.deadline import CLEANUP_GRACE_SECONDS, cleanup_grace, request_deadline
from tokex.errors import DeadlineExceeded


def test_no_deadline_outside_a_request() -> None:
    assert deadline.current() is None and not deadline.expired()


def test_a_spent_budget_refuses_the_next_call() -> None:
    with request_deadline(0.01) as budget:
        assert deadline.current() is budget
        time.sleep(0.02)
        assert deadline.expired()
        with pytest.raises(DeadlineExceeded) as late:
            budget.check("kms")
    assert (late.value.status, late.value.reason) == (503, "deadline:kms")
    assert late.value.headers()["Retry-After"] == "5"
    assert deadline.current() is None  # closed with the request


def test_cleanup_gets_a_grace_period_past_the_deadline_and_no_more() -> None:
    with request_deadline(0.0) as budget:
        with cleanup_grace():
            grace = deadline.current()
            assert grace is not None and not deadline.expired()
            assert grace.expires_at == pytest.approx(budget.expires_at + CLEANUP_GRACE_SECONDS)
        assert deadline.current() is budget
    assert CLEANUP_GRACE_SECONDS < 0.5  # the contract: the 503 by deadline + 0.5 s


def test_each_thread_has_its_own_budget() -> None:
    seen: list[object] = []
    with request_deadline(5):
        thread = threading.Thread(target=lambda: seen.append(deadline.current()))
        thread.start()
        thread.join()
    assert seen == [None]


# The dripping peer ends its header and answers after this long, far past the test's
# 0.5 s deadline: a client that did not keep to the deadline gets that answer.
DRIP_SECONDS = 10.0


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """Answers a status line, then a header one byte every 0.1 s for DRIP_SECONDS, then a
    whole successful answer, `late` (unless the test is over first)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            answer_at = time.monotonic() + DRIP_SECONDS
            while time.monotonic() < answer_at:
                if stop.wait(0.1):
                    return
                try:
                    connection.sendall(b"a")
                except OSError:
                    return
            with contextlib.suppress(OSError):
                connection.sendall(b"\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate")

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    stop.set()
    listener.close()


def test_a_dripping_peer_is_cut_off_at_the_deadline(dripping_server: str) -> None:
    http = bounded_http.pool_manager(connect_timeout=1, read_timeout=1)
    with request_deadline(0.5) as budget:
        # Every read returns within the read timeout and the peer answers only after
        # DRIP_SECONDS: a call that ignored the deadline would end with that answer.
        with pytest.raises(urllib3.exceptions.HTTPError):
            http.request("GET", dripping_server, retries=False)
        assert budget.remaining() <= 0  # cut off by the deadline, not before it
