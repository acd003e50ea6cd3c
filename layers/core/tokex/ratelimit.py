"""Per-caller rate limit of token exchanges (contract: 429 `temporarily_unavailable`).

Counted per canonical principal in one-minute windows with an atomic DynamoDB counter on
the state table (`rate#<principal>#<window>`), so every Lambda instance shares the count.
The key is the principal STS vouched for, never a value the caller chose (an access key id
in an unverified request would let anyone exhaust someone else's budget). Workloads cache
tokens until near expiry, so an honest caller needs a handful of exchanges per minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tokex.errors import RateLimited, TemporarilyUnavailable

WINDOW_SECONDS = 60


class DynamoDbRateLimiter:
    def __init__(
        self,
        dynamodb_client: Any,
        table_name: str,
        *,
        per_minute: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self._dynamodb = dynamodb_client
        self._table = table_name
        self._limit = per_minute
        self._clock = clock

    def check(self, principal: str) -> None:
        """Count one exchange for `principal`; RateLimited once over the limit."""
        now = self._clock()
        window = int(now) // WINDOW_SECONDS
        window_end = (window + 1) * WINDOW_SECONDS
        try:
            answer = self._dynamodb.update_item(
                TableName=self._table,
                Key={"id": {"S": f"rate#{principal}#{window}"}},
                UpdateExpression="ADD hits :one SET expires_at = if_not_exists(expires_at, :end)",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    # Kept one more window, then DynamoDB's TTL removes it.
                    ":end": {"N": str(window_end + WINDOW_SECONDS)},
                },
                ReturnValues="UPDATED_NEW",
            )
        except (ClientError, BotoCoreError):
            raise TemporarilyUnavailable(
                "the rate limit store is unavailable; retry later", reason="rate_store_error"
            ) from None
        hits = int(answer["Attributes"]["hits"]["N"])
        if hits > self._limit:
            raise RateLimited(
                f"more than {self._limit} token requests a minute from this caller; "
                "cache tokens until shortly before they expire",
                reason="rate_limited",
                retry_after=max(1, int(window_end - now) + 1),
            )
