"""Per-caller rate limit of token exchanges (contract: 429 `temporarily_unavailable`).

Counted per canonical principal in one-minute windows, one state-table item per
principal and window (`rate#<principal>#<window>`, attribute `hits`;
adapters/state_table/schema.py), so every Lambda instance shares the count. The key is
the verified principal (`CallerIdentity.principal_arn`): the one STS vouched for (SigV4
evidence) or the one the verified JWT names (JWT evidence), never a value the caller
chose (an access key id in an unverified request would let anyone exhaust someone else's
budget). Workloads cache
tokens until near expiry, so an honest caller needs a handful of exchanges per minute.

The count is charged by the exchange's one admission write
(adapters/state_table/admission.py), in the same request as the single-use record: a
replayed signed request is refused before it can spend anything, and a request over the
budget leaves the count as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokex.errors import RateLimited

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateWindow:
    """One principal's budget in one minute."""

    principal: str
    number: int  # minutes since the epoch
    limit: int

    @property
    def ends_at(self) -> int:
        return (self.number + 1) * WINDOW_SECONDS

    @property
    def expires_at(self) -> int:
        """Kept one more window, then DynamoDB's TTL removes it."""
        return self.ends_at + WINDOW_SECONDS

    def refusal(self, now: float) -> RateLimited:
        return RateLimited(
            f"more than {self.limit} token requests a minute from this caller; "
            "cache tokens until shortly before they expire",
            reason="rate_limited",
            retry_after=max(1, math.ceil(self.ends_at - now)),
        )


def rate_window(principal: str, now: float, *, limit: int) -> RateWindow:
    if limit < 1:
        raise ValueError("the per-minute limit must be at least 1")
    return RateWindow(principal, int(now) // WINDOW_SECONDS, limit)
