"""One load at a time, its outcome shared, and a failed load held (shared_load.py): while
an upstream fails, the calls of the hold after a failed load get its failure without
loading; the first call after the hold loads again."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tokex.deadline import request_deadline
from tokex.errors import (
    MISCONFIGURED_RETRY_AFTER_SECONDS,
    DeadlineExceeded,
    Misconfigured,
    TemporarilyUnavailable,
)
from tokex.shared_load import FAILED_LOAD_HOLD_SECONDS, SharedLoad

TTL = 30.0
HOLD = FAILED_LOAD_HOLD_SECONDS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """A load that counts its calls and, while `failure` is set, raises a new exception
    from it (as an adapter raises one per call); `during` runs inside each load."""

    def __init__(self) -> None:
        self.loads = 0
        self.failure: Callable[[], Exception] | None = None
        self.during: Callable[[], None] = lambda: None

    def load(self) -> None:
        self.loads += 1
        self.during()
        if self.failure is not None:
            raise self.failure()


def throttled(retry_after: int = 5) -> Callable[[], TemporarilyUnavailable]:
    return lambda: TemporarilyUnavailable(
        "down", reason="dynamodb Scan: ThrottlingException", retry_after=retry_after
    )


def failing(shared: SharedLoad, upstream: Upstream) -> TemporarilyUnavailable:
    with pytest.raises(TemporarilyUnavailable) as failed:
        shared(upstream.load)
    return failed.value


def test_calls_within_the_hold_of_a_failed_first_load_get_its_failure_without_loading() -> None:
    """A new environment's empty copy, its first load throttled: the calls of the next
    FAILED_LOAD_HOLD_SECONDS each get the same 503 (their own exception), and no load."""
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", TTL, clock)
    upstream.failure = throttled()
    first = failing(shared, upstream)
    assert upstream.loads == 1
    held: list[TemporarilyUnavailable] = []
    for step in range(20):
        clock.now = 1000.0 + step * (HOLD - 0.01) / 19  # up to just before the hold ends
        held.append(failing(shared, upstream))
    assert upstream.loads == 1
    assert {(type(e), e.status, e.reason) for e in held} == {
        (TemporarilyUnavailable, 503, "dynamodb Scan: ThrottlingException")
    }
    assert len({id(e) for e in [first, *held]}) == 21  # each call raises its own
    assert all(e.retry_after >= HOLD for e in [first, *held])


def test_after_the_hold_one_call_loads_again_and_its_success_stands() -> None:
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", TTL, clock)
    upstream.failure = throttled()
    failing(shared, upstream)
    upstream.failure = None  # the table is healthy again
    clock.now += HOLD - 0.001
    failing(shared, upstream)
    assert upstream.loads == 1
    clock.now += 0.001
    shared(upstream.load)
    assert upstream.loads == 2
    for _ in range(5):  # fresh now: no more loads
        shared(upstream.load)
    assert upstream.loads == 2


def test_after_the_hold_a_load_that_fails_again_starts_another_hold() -> None:
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", TTL, clock)
    upstream.failure = throttled()
    failing(shared, upstream)
    clock.now += HOLD
    failing(shared, upstream)
    assert upstream.loads == 2
    clock.now += HOLD / 2
    failing(shared, upstream)
    assert upstream.loads == 2


def test_the_hold_counts_from_the_end_of_the_failed_load() -> None:
    """A load that took seconds to fail (retries within the deadline) holds for the full
    hold after it ended, not what is left of it after the load."""
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", TTL, clock)
    upstream.failure = throttled()

    def slow() -> None:
        clock.now += 3.0

    upstream.during = slow
    failing(shared, upstream)
    clock.now += HOLD - 0.5  # 3 + 4.5 s after the load started
    failing(shared, upstream)
    assert upstream.loads == 1


def test_retry_after_lasts_at_least_to_the_end_of_the_hold() -> None:
    """A failure whose own Retry-After is shorter than the hold: raised to the hold's rest,
    so a client that waits as told finds the load due; a longer one (Misconfigured's 60 s)
    is kept."""
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("kms", TTL, clock, hold_seconds=12)
    upstream.failure = throttled(retry_after=1)
    assert failing(shared, upstream).retry_after == 12
    clock.now += 4.5
    assert failing(shared, upstream).retry_after >= 12 - 4.5
    upstream.failure = lambda: Misconfigured(
        "no key", reason="kms GetPublicKey: AccessDeniedException"
    )
    clock.now += 7.5
    first = failing(shared, upstream)
    clock.now += 1
    again = failing(shared, upstream)
    assert type(again) is Misconfigured and upstream.loads == 2
    assert first.retry_after == again.retry_after == MISCONFIGURED_RETRY_AFTER_SECONDS


def test_a_deadline_exceeded_is_not_held() -> None:
    """The caller's own time ran out, not the upstream: the next call loads at once."""
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", TTL, clock)
    upstream.failure = lambda: DeadlineExceeded("dynamodb")
    with pytest.raises(DeadlineExceeded):
        shared(upstream.load)
    upstream.failure = None
    shared(upstream.load)
    assert upstream.loads == 2


def test_forget_ends_the_hold() -> None:
    """An operator's fix (CachedPolicies.invalidate) takes effect at the next call."""
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", TTL, clock)
    upstream.failure = throttled()
    failing(shared, upstream)
    upstream.failure = None
    shared.forget()
    shared(upstream.load)
    assert upstream.loads == 2


@pytest.mark.parametrize("ttl", [0.0, 2.0])
def test_a_failure_is_held_no_longer_than_a_copy_is_kept(ttl: float) -> None:
    """The hold is at most the TTL: with no TTL, every call loads, after a failure too."""
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", ttl, clock)
    upstream.failure = throttled()
    failing(shared, upstream)
    clock.now += ttl
    upstream.failure = None
    shared(upstream.load)
    assert upstream.loads == 2


def test_a_stale_copy_is_not_served_within_the_hold() -> None:
    """Fail closed as before: the copy that went stale is not a fallback during the hold,
    and the copy that loads after it is fresh for the whole TTL."""
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", TTL, clock)
    shared(upstream.load)
    clock.now += TTL
    upstream.failure = throttled()
    failing(shared, upstream)
    clock.now += 1
    failing(shared, upstream)
    assert upstream.loads == 2
    upstream.failure = None
    clock.now += HOLD
    shared(upstream.load)
    clock.now += TTL - 0.001
    shared(upstream.load)
    assert upstream.loads == 3


def run_together(shared: SharedLoad, upstream: Upstream, threads: int) -> list[object]:
    """`threads` calls released at once: each one's outcome (None, or its failure)."""
    together = threading.Barrier(threads)
    outcomes: list[object] = []

    def call() -> None:
        together.wait(30)
        try:
            shared(upstream.load)
            outcomes.append(None)
        except TemporarilyUnavailable as failure:
            outcomes.append(failure)

    running = [threading.Thread(target=call) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(30)
    return outcomes


def test_many_calls_at_once_after_a_failure_load_once_per_hold() -> None:
    """Threads at once within the hold: none loads; at once after it: one loads, and the
    others wait for it and share its outcome (its failure, then its success)."""
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", TTL, clock)
    upstream.failure = throttled()
    failing(shared, upstream)
    outcomes = run_together(shared, upstream, 16)
    assert len(outcomes) == 16 and upstream.loads == 1
    assert all(isinstance(o, TemporarilyUnavailable) for o in outcomes)
    clock.now += HOLD  # the hold is over, the upstream still throttles
    started = threading.Event()
    release = threading.Event()

    def slow() -> None:
        started.set()
        release.wait(30)

    upstream.during = slow
    waiting = threading.Thread(target=lambda: run_together(shared, upstream, 1))
    waiting.start()
    assert started.wait(30)  # one loads; the others come while it is in flight
    upstream.during = lambda: None
    crowd: list[object] = []
    crowding = threading.Thread(target=lambda: crowd.extend(run_together(shared, upstream, 15)))
    crowding.start()
    release.set()
    waiting.join(30)
    crowding.join(30)
    assert upstream.loads == 2 and len(crowd) == 15
    assert all(isinstance(o, TemporarilyUnavailable) for o in crowd)
    upstream.failure = None
    clock.now += HOLD
    assert run_together(shared, upstream, 16) == [None] * 16
    assert upstream.loads == 3


def test_a_wait_for_a_load_in_flight_still_ends_with_the_callers_deadline() -> None:
    clock, upstream = Clock(), Upstream()
    shared = SharedLoad("dynamodb", TTL, clock)
    started, release = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(30)

    upstream.during = slow
    loading = threading.Thread(target=lambda: shared(upstream.load))
    loading.start()
    assert started.wait(30)
    with pytest.raises(DeadlineExceeded), request_deadline(0.05):
        shared(upstream.load)
    release.set()
    loading.join(30)
    assert upstream.loads == 1
