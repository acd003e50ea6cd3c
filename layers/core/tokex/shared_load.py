"""One load at a time of what a cache holds, its outcome shared by those who waited.

The policy cache (policy/cache.py) and introspection's published keys (introspection.py)
reload a stale copy from DynamoDB or KMS. Requests that find it stale together wait for
one load instead of each making their own in turn, and get its outcome: the new copy, or
its failure (one scan of a throttled table, not one per request, each a little later).
Never past their own deadline, though: a wait ends with the request's deadline, and a
load that failed for want of its caller's time (DeadlineExceeded: that request's budget,
not the upstream's state) is not shared: the next in line loads with its own.

A failed load is held: for FAILED_LOAD_HOLD_SECONDS after it ended, every call gets its
failure (a 503 whose Retry-After lasts at least to the end of the hold) without loading;
the first call after the hold loads again. An upstream that throttles or fails, or a
policy item that blocks every load, then costs one load per environment per hold, not one
(a full strongly consistent Scan of the policy table) per request of any caller that
gets past STS. A DeadlineExceeded is never held.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from tokex import deadline
from tokex.errors import DeadlineExceeded, TemporarilyUnavailable

# How long a failed load's failure answers for it. As long as the JWT issuers' keys hold a
# failed fetch (adapters/oidc_keys.py FAILED_FETCH_BACKOFF_SECONDS) and as an outage's
# Retry-After (errors.py): a client that honours it comes back as the hold ends, so the
# hold turns away no retry it asked for, and a recovered upstream is read again within 5 s.
FAILED_LOAD_HOLD_SECONDS = 5.0


class SharedLoad:
    """When what a cache holds was loaded, and its next load: due once `ttl_seconds` have
    passed on `clock` since the last load that succeeded, and, after a load that failed,
    once `hold_seconds` (at most `ttl_seconds`: a failure is never kept longer than a
    copy would be; with no TTL, every call loads) have passed since it ended."""

    def __init__(
        self,
        upstream: str,
        ttl_seconds: float,
        clock: Callable[[], float],
        *,
        hold_seconds: float = FAILED_LOAD_HOLD_SECONDS,
    ) -> None:
        """`upstream`: what a wait that outlives the deadline names ("dynamodb", "kms")."""
        self._upstream = upstream
        self._ttl = ttl_seconds
        self._hold = min(hold_seconds, ttl_seconds)
        self._clock = clock
        self._lock = threading.Lock()  # held through a load: the cache changes under it
        self._loaded_at: float | None = None
        self._ended = 0  # loads ended: a waiter can tell one ended while it waited
        self._failure: TemporarilyUnavailable | None = None  # the last load's, to share
        self._failed_at = 0.0  # when that failed load ended: its hold starts

    def __call__(self, load: Callable[[], None]) -> None:
        """`load()` when due, unless the load this call waited for failed, or the last load
        failed less than the hold ago: then its failure. May raise what `load` raises, or
        DeadlineExceeded."""
        ended_before = self._ended
        deadline.acquire_within_deadline(self._lock, self._upstream)
        try:
            now = self._clock()
            if self._loaded_at is not None and now - self._loaded_at < self._ttl:
                return
            if self._failure is not None:
                held_for = self._hold - (now - self._failed_at)
                # The load it waited for failed, or the last one failed within the hold.
                if self._ended != ended_before or held_for > 0:
                    raise _lasting(self._failure.again(), held_for)
            self._failure = None
            try:
                load()
            except DeadlineExceeded:
                raise  # its caller's time ran out, not the upstream: not shared
            except TemporarilyUnavailable as failure:
                self._failed_at = self._clock()  # the hold counts from the load's end
                self._failure = _lasting(failure, self._hold).again()
                raise
            else:
                self._loaded_at = now  # counted from before the load
            finally:
                self._ended += 1
        finally:
            self._lock.release()

    def forget(self) -> None:
        """The next call loads (after a load in flight, if any): a held failure is
        forgotten too (an operator's fix takes effect at once, not after the hold)."""
        with self._lock:
            self._loaded_at = None
            self._failure = None


def _lasting(failure: TemporarilyUnavailable, seconds: float) -> TemporarilyUnavailable:
    """`failure`, its Retry-After raised to at least `seconds` (the rest of its hold): a
    client that waits as told finds the load due again."""
    failure.retry_after = max(failure.retry_after, math.ceil(seconds))
    return failure
