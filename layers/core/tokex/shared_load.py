"""One load at a time of what a cache holds, its outcome shared by those who waited.

The policy cache (policy/cache.py) and introspection's published keys (introspection.py)
reload a stale copy from DynamoDB or KMS. Requests that find it stale together wait for
one load instead of each making their own in turn, and get its outcome: the new copy, or
its failure (one scan of a throttled table, not one per request, each a little later).
Never past their own deadline, though: a wait ends with the request's deadline, and a
load that failed for want of its caller's time (DeadlineExceeded: that request's budget,
not the upstream's state) is not shared: the next in line loads with its own. A caller
that comes after a failure loads again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tokex import deadline
from tokex.errors import DeadlineExceeded, TemporarilyUnavailable


class SharedLoad:
    """When what a cache holds was loaded, and its next load: due once `ttl_seconds` have
    passed on `clock` since the last load that succeeded."""

    def __init__(self, upstream: str, ttl_seconds: float, clock: Callable[[], float]) -> None:
        """`upstream`: what a wait that outlives the deadline names ("dynamodb", "kms")."""
        self._upstream = upstream
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()  # held through a load: the cache changes under it
        self._loaded_at: float | None = None
        self._ended = 0  # loads ended: a waiter can tell one ended while it waited
        self._failure: TemporarilyUnavailable | None = None  # the last load's, to share

    def __call__(self, load: Callable[[], None]) -> None:
        """`load()` when due, unless the load this call waited for failed: then its
        failure. May raise what `load` raises, or DeadlineExceeded."""
        ended_before = self._ended
        deadline.acquire_within_deadline(self._lock, self._upstream)
        try:
            now = self._clock()
            if self._loaded_at is not None and now - self._loaded_at < self._ttl:
                return
            if self._ended != ended_before and self._failure is not None:
                raise self._failure.again()  # the load it waited for failed
            self._failure = None
            try:
                load()
            except DeadlineExceeded:
                raise  # its caller's time ran out, not the upstream: not shared
            except TemporarilyUnavailable as failure:
                self._failure = failure.again()
                raise
            else:
                self._loaded_at = now  # counted from before the load
            finally:
                self._ended += 1
        finally:
            self._lock.release()

    def forget(self) -> None:
        """The next call loads (after a load in flight, if any)."""
        with self._lock:
            self._loaded_at = None
