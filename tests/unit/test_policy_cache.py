"""The in-memory policy cache: zero reads while fresh, fail closed when stale."""

from __future__ import annotations

import threading
import time

import pytest

from tokex.deadline import request_deadline
from tokex.errors import DeadlineExceeded, TemporarilyUnavailable
from tokex.policy.cache import CachedPolicies
from tokex.policy.model import Policy
from tokex.shared_load import FAILED_LOAD_HOLD_SECONDS


def make_policy(policy_id: str) -> Policy:
    return Policy.from_document(
        {
            "id": policy_id,
            "effect": "allow",
            "principals": ["arn:aws:iam::123456789012:role/x"],
            "audiences": ["a"],
        }
    )


class FakeStore:
    """In-memory stand-in for PolicyStore's `load_all`, counting reads."""

    def __init__(self) -> None:
        self.policies = [make_policy("one")]
        self.invalid: list[str] = []
        self.loads = 0
        self.fail = False
        self.delay = 0.0
        self.errors: list[Exception] = []  # raised by the next loads, one each

    def load_all(self) -> tuple[list[Policy], list[str]]:
        self.loads += 1
        if self.delay:
            time.sleep(self.delay)
        if self.errors:
            raise self.errors.pop(0)
        if self.fail:
            raise TemporarilyUnavailable("down", reason="dynamodb Scan: ThrottlingException")
        return list(self.policies), list(self.invalid)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_served_from_memory_while_fresh() -> None:
    store, clock = FakeStore(), Clock()
    cache = CachedPolicies(store, 30, clock=clock)
    assert [p.id for p in cache.policies()] == ["one"]
    store.policies = [make_policy("two")]
    clock.now += 29.9
    for _ in range(100):
        assert [p.id for p in cache.policies()] == ["one"]
    assert store.loads == 1


def test_reloaded_when_stale() -> None:
    store, clock = FakeStore(), Clock()
    cache = CachedPolicies(store, 30, clock=clock)
    cache.policies()
    store.policies = [make_policy("two")]
    clock.now += 30
    assert [p.id for p in cache.policies()] == ["two"]
    assert store.loads == 2


def test_stale_cache_fails_closed_and_recovers() -> None:
    store, clock = FakeStore(), Clock()
    cache = CachedPolicies(store, 10, clock=clock)
    cache.policies()
    store.fail = True
    clock.now += 11
    for _ in range(2):  # never falls back to the stale copy
        with pytest.raises(TemporarilyUnavailable):
            cache.policies()
    assert store.loads == 2  # the second within the failure's hold: no read
    store.fail = False
    store.policies = []
    clock.now += FAILED_LOAD_HOLD_SECONDS
    assert cache.policies() == []


def test_first_load_failure_raises() -> None:
    store = FakeStore()
    store.fail = True
    with pytest.raises(TemporarilyUnavailable):
        CachedPolicies(store, 30, clock=Clock()).policies()


def test_zero_ttl_always_reloads() -> None:
    store = FakeStore()
    cache = CachedPolicies(store, 0, clock=Clock())
    cache.policies()
    cache.policies()
    assert store.loads == 2


def test_invalidate_and_invalid_ids() -> None:
    store = FakeStore()
    store.invalid = ["broken"]
    cache = CachedPolicies(store, 30, clock=Clock())
    cache.policies()
    assert cache.invalid_ids == ("broken",)
    cache.invalidate()
    cache.policies()
    assert store.loads == 2


def test_returned_list_is_a_copy() -> None:
    cache = CachedPolicies(FakeStore(), 30, clock=Clock())
    cache.policies().clear()
    assert len(cache.policies()) == 1


@pytest.mark.parametrize("ttl", [-1, 61, 3600])
def test_ttl_bounded_to_a_minute(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        CachedPolicies(FakeStore(), ttl)


def test_concurrent_callers_share_one_reload() -> None:
    store = FakeStore()
    store.delay = 0.05
    cache = CachedPolicies(store, 30, clock=Clock())
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(len(cache.policies()))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [1] * 8
    assert store.loads == 1


def test_concurrent_callers_on_a_stale_cache_share_one_reload_and_its_outcome() -> None:
    """Past the TTL, callers at once get one reload: its new policies when it succeeds; a
    failure for every caller when it fails (never the stale copy)."""
    store, clock = FakeStore(), Clock()
    cache = CachedPolicies(store, 30, clock=clock)
    cache.policies()
    store.policies, store.delay = [make_policy("one"), make_policy("two")], 0.2
    clock.now += 30
    together = threading.Barrier(8)
    outcomes: list[object] = []

    def ask() -> None:
        together.wait()
        try:
            outcomes.append(sorted(p.id for p in cache.policies()))
        except TemporarilyUnavailable as err:
            outcomes.append(err.reason)

    def crowd() -> None:
        outcomes.clear()
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    crowd()
    assert outcomes == [["one", "two"]] * 8
    assert store.loads == 2
    store.fail = True  # a slow failure: the others wait for it, and share it
    clock.now += 30
    crowd()
    assert outcomes == ["dynamodb Scan: ThrottlingException"] * 8
    assert store.loads == 3  # one scan, not eight in turn
    store.fail = False
    clock.now += FAILED_LOAD_HOLD_SECONDS
    # The next call after the failure's hold reloads.
    assert sorted(p.id for p in cache.policies()) == ["one", "two"]
    assert store.loads == 4


def test_a_caller_waits_for_a_reload_in_flight_no_longer_than_its_deadline() -> None:
    store, clock = FakeStore(), Clock()
    cache = CachedPolicies(store, 30, clock=clock)
    store.delay = 1.0
    first = threading.Thread(target=cache.policies)
    first.start()
    while store.loads == 0:
        time.sleep(0.001)
    with pytest.raises(DeadlineExceeded) as waited, request_deadline(0.05):
        cache.policies()
    assert first.is_alive()  # it gave up while the reload was still in flight
    assert waited.value.reason == "deadline:dynamodb"
    first.join(30)
    assert store.loads == 1


def test_by_default_a_frozen_environments_sleep_counts(monkeypatch) -> None:
    """A Lambda environment frozen between invocations: the monotonic clock stands still
    while the wall clock moves on. Policies loaded before the freeze are stale after it (a
    new deny takes effect within the TTL, docs/policies.md "Evaluation")."""
    monotonic, wall = [500.0], [1_800_000_000.0]
    monkeypatch.setattr(time, "monotonic", lambda: monotonic[0])
    monkeypatch.setattr(time, "time", lambda: wall[0])
    store = FakeStore()
    cache = CachedPolicies(store, ttl_seconds=60)
    assert [p.id for p in cache.policies()] == ["one"] and store.loads == 1
    store.policies = []  # removed while the environment sleeps
    wall[0] += 600  # frozen for ten minutes: the monotonic clock did not move
    assert cache.policies() == [] and store.loads == 2


def test_a_reload_that_ran_out_of_its_callers_time_is_not_shared() -> None:
    """The reload in flight fails for want of its own request's time (DeadlineExceeded):
    a request that waited for it, with time of its own, reloads rather than answer 503."""
    store, clock = FakeStore(), Clock()
    cache = CachedPolicies(store, 30, clock=clock)
    store.delay, store.errors = 0.3, [DeadlineExceeded("dynamodb")]
    first: list[object] = []

    def hurried() -> None:
        with pytest.raises(DeadlineExceeded) as failed:
            cache.policies()
        first.append(failed.value.reason)

    thread = threading.Thread(target=hurried)
    thread.start()
    while store.loads == 0:
        time.sleep(0.001)
    with request_deadline(5):
        assert [p.id for p in cache.policies()] == ["one"]  # its own reload
    thread.join(30)
    assert first == ["deadline:dynamodb"] and store.loads == 2


def test_the_invalid_ids_are_read_without_waiting_for_a_reload_in_flight() -> None:
    """What an exchange past its deadline reads for its audit line: never held up by the
    reload it gave up waiting for."""
    store, clock = FakeStore(), Clock()
    store.invalid = ["broken"]
    cache = CachedPolicies(store, 30, clock=clock)
    cache.policies()
    clock.now += 30
    release = threading.Event()
    store.load_all = lambda: (release.wait(30), ([], []))[1]  # type: ignore[method-assign]
    reloading = threading.Thread(target=cache.policies)
    reloading.start()
    reader = threading.Thread(target=lambda: cache.invalid_ids)
    reader.start()
    reader.join(5)
    stuck = reader.is_alive()
    release.set()
    reloading.join(30)
    assert not stuck and cache.invalid_ids == ()
