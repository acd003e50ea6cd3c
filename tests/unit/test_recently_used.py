"""RecentlyUsed (evidence/replay.py): what a warm environment remembers as used up, to
refuse a replay before STS. Hostile callers cannot grow it past its capacity: the oldest
entries go first (the state table still refuses what it forgot)."""

from __future__ import annotations

import hashlib

from tokex.evidence.replay import RecentlyUsed, UsedEvidence


def evidence(number: int) -> UsedEvidence:
    return UsedEvidence(hashlib.sha256(str(number).encode()).hexdigest(), 2_000_000_000)


def test_it_starts_empty_and_remembers_what_is_added() -> None:
    used = RecentlyUsed()
    assert evidence(1) not in used
    used.add(evidence(1))
    assert evidence(1) in used and evidence(2) not in used


def test_past_its_capacity_the_oldest_is_forgotten_first() -> None:
    used = RecentlyUsed(capacity=3)
    for number in range(3):
        used.add(evidence(number))
    used.add(evidence(0))  # seen again: now the newest
    used.add(evidence(3))
    assert [evidence(n) in used for n in range(4)] == [True, False, True, True]


def test_the_default_capacity_holds_ten_thousand() -> None:
    used = RecentlyUsed()
    for number in range(10_001):
        used.add(evidence(number))
    assert evidence(0) not in used
    assert all(evidence(n) in used for n in (1, 5_000, 10_000))


def test_forgotten_evidence_is_usable_again() -> None:
    used = RecentlyUsed()
    used.add(evidence(1))
    used.forget(evidence(1))
    used.forget(evidence(2))  # never added: nothing happens
    assert evidence(1) not in used
