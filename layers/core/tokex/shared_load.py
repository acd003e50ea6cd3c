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
    def __init__(self, upstream: str) -> None:
        """`upstream`: what a wait that outlives the deadline names ("dynamodb", "kms")."""
        self._upstream = upstream
        self.lock = threading.Lock()  # held through a load; the cache's state changes under it
        self._ended = 0  # loads ended: a waiter can tell one ended while it waited
        self._failure: TemporarilyUnavailable | None = None  # the last load's, to share

    def __call__(self, stale: Callable[[], bool], load: Callable[[], None]) -> None:
        """`load()` when `stale()`, both under the lock, unless the load this call waited
        for failed: then its failure. May raise what `load` raises, or DeadlineExceeded."""
        ended_before = self._ended
        deadline.acquire_within_deadline(self.lock, self._upstream)
        try:
            if not stale():
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
            finally:
                self._ended += 1
        finally:
            self.lock.release()
