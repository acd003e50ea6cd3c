"""The per-caller budget's windows (the write that charges it: test_admission.py)."""

from __future__ import annotations

import pytest

from tokex.adapters.state_table import schema
from tokex.ratelimit import WINDOW_SECONDS, rate_window

ROLE = "arn:aws:iam::123456789012:role/app"


def test_one_item_per_principal_and_minute() -> None:
    window = rate_window(ROLE, 1_800_000_010.0, limit=60)  # 10 s into a minute
    assert schema.rate_key(window.principal, window.number) == f"rate#{ROLE}#30000000"
    assert window.ends_at == 1_800_000_060
    assert window.expires_at == window.ends_at + WINDOW_SECONDS  # kept one more window
    assert rate_window(ROLE, 1_800_000_059.9, limit=60) == window
    assert rate_window(ROLE, 1_800_000_060.0, limit=60).number == window.number + 1


def test_refusal_is_429_until_the_next_window() -> None:
    refusal = rate_window(ROLE, 1_800_000_010.0, limit=2).refusal(1_800_000_010.0)
    assert (refusal.status, refusal.error, refusal.reason) == (
        429,
        "temporarily_unavailable",
        "rate_limited",
    )
    assert refusal.headers() == {"Retry-After": "50"}  # the window ends at ...060
    assert "more than 2 token requests a minute" in refusal.description


@pytest.mark.parametrize(("now", "seconds"), [(10.0, 50), (10.25, 50), (59.5, 1), (59.999, 1)])
def test_retry_after_is_the_whole_seconds_to_the_next_window(now: float, seconds: int) -> None:
    start = 1_800_000_000.0
    refusal = rate_window(ROLE, start + now, limit=2).refusal(start + now)
    assert refusal.headers() == {"Retry-After": str(seconds)}


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        rate_window(ROLE, 0.0, limit=0)
