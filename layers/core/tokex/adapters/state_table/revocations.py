"""Revocation records in the state table: the only module that reads or writes them.

Two kinds of item (key `id`, TTL attribute `expires_at`: schema.py):
- `revoked-jti#<jti>`: that one token;
- `revoked-principal#<arn>` with `revoked_at` (N, epoch seconds): every token whose `sub`
  is that principal and whose `iat` is at or before `revoked_at`. A role or user ARN is
  matched whatever its case, as IAM names are unique (schema.py); a record written
  before that, under the ARN as typed, is still read, but matches only a `sub` of that
  same case (as it always did). Tokens issued in the
  same second as the revocation are revoked too (`iat` has one-second resolution; erring
  towards revoking is the safe side). A later revocation of the same principal replaces
  the record with a later `revoked_at`, which covers everything the earlier one did; one
  dated earlier than the record (an operator's lagging clock) leaves the record as it is,
  unless the record is dated more than TTL_MARGIN_SECONDS ahead of it (a clock far ahead
  wrote it): then it is replaced.
  It does not stop the principal from getting new tokens: that is what a deny policy is
  for.

TTL: a record outlives every token it can match. A token lives at most the TTL cap
(`exp - iat <= cap`, which introspection enforces), so `expires_at = now + cap + margin`
is past the `exp` of any token issued before `now`. DynamoDB deletes expired items lazily
(within days); a stale record can only match tokens that have expired anyway.

Lookups are not cached: a revocation takes effect on the next introspection in every
Lambda. Both records are read in one consistent BatchGetItem, and only for tokens that
already passed every other check, so garbage never costs a read. Relying parties that
cache introspection results (Kong `oauth2-introspection`: `ttl`, 30 s by default) see a
revocation once their cache entry expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokex.adapters import errors
from tokex.adapters.aws_clients import pause_within_deadline
from tokex.adapters.state_table import schema
from tokex.adapters.state_table.schema import KEY_ATTRIBUTE, TTL_ATTRIBUTE

# Past the TTL cap: the clock skew tolerated between the revoking machine and the
# Lambdas, plus slack.
TTL_MARGIN_SECONDS = 300
# BatchGetItem may leave keys unprocessed under throttling, and asked again at once they
# may well stay so: the API reference recommends exponential backoff. Full jitter, as the
# admission's conflicts (admission.py), within the request's deadline.
_BATCH_ATTEMPTS = 3
_BATCH_BACKOFF_BASE_SECONDS = 0.05
_BATCH_BACKOFF_CAP_SECONDS = 0.2  # a ceiling should attempts grow: 3 never reach it
_UNAVAILABLE = "the revocation store is unavailable, retry later"


@dataclass(frozen=True)
class Revocation:
    kind: str  # "jti" or "principal"
    value: str
    revoked_at: int
    expires_at: int


class RevocationStore:
    """The revocation records; its `revoked` is introspection.py's `RevocationCheck`."""

    def __init__(
        self,
        dynamodb_client: Any,
        table_name: str,
        *,
        ttl_cap_seconds: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`ttl_cap_seconds`: the longest lifetime any token of the deployment can have."""
        self._dynamodb = dynamodb_client
        self._table = table_name
        self._ttl_cap = ttl_cap_seconds
        self._clock = clock
        self._sleep = sleep

    def revoke_jti(self, jti: str) -> Revocation:
        """Revoke one token by its `jti`."""
        return self._put("jti", schema.revoked_jti_key(jti), jti)

    def revoke_principal(self, principal_arn: str) -> Revocation:
        """Revoke every token of `principal_arn` (the `sub` claim) issued up to now.

        Also under the keys earlier introspect functions read (the ARN lower-cased with a
        user's path, and as typed), where they differ: a stack not yet upgraded (or a
        Region not yet deployed) reads only those, and an operator's revocation with this
        CLI must not leave its tokens active there while it reports success."""
        revocation = self._put(
            "principal", schema.revoked_principal_key(principal_arn), principal_arn
        )
        earlier = {
            schema.pathed_revoked_principal_key(principal_arn),
            schema.legacy_revoked_principal_key(principal_arn),
        } - {schema.revoked_principal_key(principal_arn)}
        for key in sorted(earlier):
            self._put("principal", key, principal_arn)
        return revocation

    def revoked(self, *, jti: str, principal: str, issued_at: int) -> str | None:
        """`"jti"` or `"principal"` when the token is revoked, else None (one read)."""
        jti_key = schema.revoked_jti_key(jti)
        principal_keys = {
            schema.revoked_principal_key(principal),
            schema.pathed_revoked_principal_key(principal),
            schema.legacy_revoked_principal_key(principal),
        }
        keys = [schema.key(jti_key), *(schema.key(key) for key in sorted(principal_keys))]
        for item in self._batch_get(keys):
            item_id = item.get(KEY_ATTRIBUTE, {}).get("S", "")
            if item_id == jti_key:
                return "jti"
            if item_id in principal_keys:
                revoked_at = item.get("revoked_at", {}).get("N")
                # A record without a readable time revokes everything: fail closed.
                if revoked_at is None or not revoked_at.isdigit():
                    return "principal"
                if issued_at <= int(revoked_at):
                    return "principal"
        return None

    def _put(self, kind: str, key: str, value: str) -> Revocation:
        now = int(self._clock())
        expires_at = now + self._ttl_cap + TTL_MARGIN_SECONDS
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key=schema.key(key),
                UpdateExpression="SET #r = :now, #e = :expires",
                # Never move a record back in time: two operators revoking at once, one
                # with a lagging clock, must not shrink what the other revoked. A record
                # whose time is unreadable is replaced (it revoked everything anyway), and
                # so is one dated further ahead than any clock skew tolerated (a clock
                # far ahead wrote it, and it would revoke tokens not issued yet).
                ConditionExpression="attribute_not_exists(#r) OR NOT attribute_type(#r, :n) "
                "OR #r <= :now OR #r > :ahead",
                ExpressionAttributeNames={"#r": "revoked_at", "#e": TTL_ATTRIBUTE},
                ExpressionAttributeValues={
                    ":now": {"N": str(now)},
                    ":ahead": {"N": str(now + TTL_MARGIN_SECONDS)},
                    ":expires": {"N": str(expires_at)},
                    ":n": {"S": "N"},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except errors.SDK_ERRORS as exc:
            later = _later_record(exc)
            if later is None:
                raise errors.unavailable(_UNAVAILABLE, "dynamodb", "UpdateItem", exc) from None
            return Revocation(kind, value, *later)
        return Revocation(kind, value, now, expires_at)

    def _batch_get(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {
            self._table: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "#i, #r"}
        }
        request[self._table]["ExpressionAttributeNames"] = {"#i": KEY_ATTRIBUTE, "#r": "revoked_at"}
        for attempt in range(1, _BATCH_ATTEMPTS + 1):
            try:
                response = self._dynamodb.batch_get_item(RequestItems=request)
            except errors.SDK_ERRORS as exc:
                raise errors.unavailable(_UNAVAILABLE, "dynamodb", "BatchGetItem", exc) from None
            found = response.get("Responses")
            request = response.get("UnprocessedKeys") or {}
            # DynamoDB lists the table's items (none if none) unless it left them all
            # unprocessed: an answer without either is none, not "nothing revoked".
            listed = found.get(self._table) if isinstance(found, dict) else None
            if not isinstance(listed, list) and not (isinstance(found, dict) and request):
                raise errors.unavailable(
                    _UNAVAILABLE, "dynamodb", "BatchGetItem", "malformed response"
                )
            items.extend(listed or [])
            if not request:
                return items
            if attempt == _BATCH_ATTEMPTS:
                break
            pause = pause_within_deadline(
                attempt, base=_BATCH_BACKOFF_BASE_SECONDS, cap=_BATCH_BACKOFF_CAP_SECONDS
            )
            if pause is None:  # no room left for another attempt
                break
            self._sleep(pause)
        # Unknown revocation state is never reported as "not revoked".
        raise errors.unavailable(_UNAVAILABLE, "dynamodb", "BatchGetItem", "unprocessed")


def _later_record(exc: Exception) -> tuple[int, int] | None:
    """`(revoked_at, expires_at)` of the later record that refused this write, if so."""
    if not errors.is_client_error(exc, "ConditionalCheckFailedException"):
        return None
    item = getattr(exc, "response", {}).get("Item", {})
    revoked_at = item.get("revoked_at", {}).get("N", "")
    expires_at = item.get(TTL_ATTRIBUTE, {}).get("N", "")
    if not (revoked_at.isdigit() and expires_at.isdigit()):
        return None
    return int(revoked_at), int(expires_at)
