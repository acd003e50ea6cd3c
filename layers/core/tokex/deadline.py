"""One time budget per request, shared by every upstream call it makes
(docs/contract.md "Deadline").

A handler opens the budget when a request arrives (`request_deadline`); every upstream
call reads what is left of it: the bounded transport (bounded_http.py) connects
and reads no longer than that, botocore retries only when another attempt still fits
(adapters/aws_clients.py), and the STS forwarder and the single-use write check it
before they start. When it runs out the request is answered 503
`temporarily_unavailable` with `Retry-After` (`DeadlineExceeded`).

A context variable, not a parameter: the budget must reach botocore calls made inside
adapters several layers below the use case, and every thread of `tokex local` gets its
own (a context variable is per thread).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from tokex.errors import DeadlineExceeded

# Cleanup after a failure (the compensating write of exchange.py) may run this long past
# the deadline: the contract promises the 503 at most 0.5 s after it, and the rest of the
# answer (JSON, the audit line) takes milliseconds.
CLEANUP_GRACE_SECONDS = 0.4


@dataclass(frozen=True)
class Deadline:
    expires_at: float  # time.monotonic() seconds

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def check(self, upstream: str) -> float:
        """The seconds left before calling `upstream`; DeadlineExceeded if none are."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(upstream)
        return left


_current: ContextVar[Deadline | None] = ContextVar("tokex_deadline", default=None)


def current() -> Deadline | None:
    """The budget of the request being served, or None outside one (CLI, publisher)."""
    return _current.get()


def expired() -> bool:
    """Whether a request is being served and its budget is spent: a failed upstream call
    is then reported as the deadline's, not as the upstream's."""
    deadline = _current.get()
    return deadline is not None and deadline.remaining() <= 0


def acquire_within_deadline(lock: threading.Lock, upstream: str) -> None:
    """Wait for `lock` (a load of `upstream`'s data in flight), never past the request's
    deadline (without one, as long as it takes): DeadlineExceeded(upstream) otherwise."""
    budget = current()
    timeout = -1.0 if budget is None else max(budget.remaining(), 0.0)
    if not lock.acquire(timeout=timeout):
        raise DeadlineExceeded(upstream)


@contextlib.contextmanager
def request_deadline(seconds: float) -> Iterator[Deadline]:
    """Every upstream call made inside shares one budget of `seconds` from now."""
    with _within(Deadline(time.monotonic() + seconds)) as deadline:
        yield deadline


@contextlib.contextmanager
def cleanup_grace() -> Iterator[None]:
    """Work that undoes a failed request's effects may use CLEANUP_GRACE_SECONDS past the
    deadline (never more): without it, a compensating write after a timeout could never
    run."""
    deadline = _current.get()
    if deadline is None:
        yield
        return
    with _within(Deadline(deadline.expires_at + CLEANUP_GRACE_SECONDS)):
        yield


@contextlib.contextmanager
def _within(deadline: Deadline) -> Iterator[Deadline]:
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)
