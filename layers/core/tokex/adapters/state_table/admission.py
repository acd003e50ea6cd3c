"""Single use and the rate limit, decided by one conditional DynamoDB request.

Once the evidence has named the caller, the exchange is *admitted* by one write to the
state table (the only write of an exchange that is not refused):

- single use and the rate limit both on (the default): one `TransactWriteItems` holding
  1. Put `sig#<digest>` (evidence/replay.py `UsedEvidence`: the SHA-256 of a SigV4
     signature, or of an AWS OIF token's issuer and `jti`; schema.py), if no live
     record exists;
  2. Update `rate#<principal>#<minute>` (ratelimit.py, schema.py): `hits + 1`, if `hits`
     is below the limit.
  DynamoDB commits both or neither and names the condition that failed: the signature's
  (a replay, refused `invalid_grant` with the budget untouched) or the budget's (429).
- only one of them on, or evidence that is not single use (an EKS token): that item's
  conditional PutItem or UpdateItem alone (nothing at all when neither applies).

A 429 uses the evidence up too, with a second write on that path only (the
cancelled transaction wrote nothing): otherwise the request could be replayed for a token
once the minute turns.

`release` is the compensating write, on the path where tokex's own upstreams fail after
admission (KMS, which signs while the admission write is in flight, or the deadline): it
marks the signature record released (only the one this admission wrote) and gives the
budget unit back, in one transaction, so the caller may retry with the same signed
request. A release that fails leaves the
request used up: the caller signs a new one (fail closed). So does an admission write that
gets no answer (a timeout): whether it was recorded is unknown, and nothing is released.
botocore sends a transaction's retries with one `ClientRequestToken`, which DynamoDB
applies once, so a retry after a lost answer is neither mistaken for a replay nor counted
twice; a PutItem alone has no such token, so its retry reads the record that failed its
condition and knows its own admission's id, and a released record keeps that id, so that
a retried release still meets its condition. The budget alone is a plain conditional
UpdateItem on purpose, not a transaction of one item: DynamoDB cancels concurrent
transactions on one item (`TransactionConflict`), while it queues plain updates, and the
rate limit alone is what every EKS exchange writes, often many pods of one service account
at once. The price: the SDK's retry of an `ADD` whose answer was lost counts once more
(one unit of that minute's budget spent twice), and a refund retried so gives one back
twice; both are bounded by one unit per lost answer.

Capacity (both items are far under 1 KB, so neither size nor the 400 KB item limit is a
concern; no item grows with use): a transactional write costs 2 WCU per item, so an
admitted exchange costs 4 WCU (4 write request units on demand), a refused replay at most
4, a 429 at most 5, a release 4. With one feature on, 1 WCU. IAM: PutItem on `sig#*` and
UpdateItem on `rate#*` (a transaction is authorised item by item as those actions).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore import xform_name
from botocore.exceptions import ClientError

from tokex import deadline
from tokex.adapters import errors
from tokex.adapters.aws_clients import pause_within_deadline
from tokex.adapters.state_table import schema
from tokex.errors import TemporarilyUnavailable, TokexError
from tokex.evidence.replay import UsedEvidence
from tokex.ratelimit import RateWindow, rate_window

log = logging.getLogger(__name__)

# Concurrent transactions on one item (exchanges of one principal in the same instant:
# many environments of one role starting at once) cancel each other with
# `TransactionConflict`, and DynamoDB lets them through one at a time. A cancelled one
# tries again after a pause of rand(0, 1) * min(base * 2 ** (attempt - 1), cap) (full
# jitter, so a burst spreads out), as long as the request's deadline leaves room for the
# pause and one more attempt (aws_clients.MIN_ATTEMPT_SECONDS), CONFLICT_ATTEMPTS at most:
# about 0.65 s of pauses on average before the 503.
CONFLICT_ATTEMPTS = 10
CONFLICT_BACKOFF_BASE_SECONDS = 0.01
CONFLICT_BACKOFF_CAP_SECONDS = 0.25
_UNAVAILABLE = "the exchange state store is unavailable; retry later"
# A record is live unless a release marked it: a missing record or a released one may be
# (re)written.
_UNUSED_EVIDENCE = f"attribute_not_exists({schema.KEY_ATTRIBUTE}) OR attribute_exists(released_at)"
_TTL = schema.TTL_ATTRIBUTE
_UNDER_BUDGET = "attribute_not_exists(hits) OR hits < :limit"


@dataclass(frozen=True)
class Admission:
    """What one admission wrote, for its release."""

    id: str  # random: the release touches only the record this admission wrote
    used: UsedEvidence | None  # None: single use off, or evidence that is not single use
    window: RateWindow | None

    @property
    def used_evidence_key(self) -> str | None:
        return None if self.used is None else schema.used_evidence_key(self.used.digest)


class DynamoDbAdmission:
    """The `AdmissionStore` of exchange.py, on the state table."""

    def __init__(
        self,
        dynamodb_client: Any,
        table_name: str,
        *,
        single_use: bool,
        rate_limit_per_minute: int,
        region: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not single_use and rate_limit_per_minute < 1:
            raise ValueError("nothing to admit: single use off and no rate limit")
        self._dynamodb = dynamodb_client
        self._table = table_name
        self._single_use = single_use
        self._limit = rate_limit_per_minute
        # A Regional exchange counts in its own items (`rate#<region>#...`): the
        # replicas of a global table never write one counter from two Regions.
        self._counter_scope = f"{region}#" if region else ""
        self._clock = clock
        self._sleep = sleep

    def admit(self, used: UsedEvidence | None, principal: str) -> Admission:
        """Use the evidence up (`used`; None: not single use) and charge `principal`'s
        budget, in one write.

        Raises InvalidGrant (`replay`: used before; nothing charged), RateLimited (over
        the budget; the evidence is used up all the same) or TemporarilyUnavailable.
        """
        now = self._clock()
        admission = Admission(
            id=secrets.token_urlsafe(16),
            used=used if self._single_use else None,
            window=rate_window(self._counter_scope + principal, now, limit=self._limit)
            if self._limit
            else None,
        )
        use, charge = self._use_evidence(admission), self._charge_budget(admission)
        if use is not None and charge is not None:
            self._transact([{"Put": use}, {"Update": charge}], admission, now)
            return admission
        # One of the two alone: that item's conditional write.
        if use is not None and not self._use_alone(use, admission):
            assert admission.used is not None
            raise admission.used.replay_refusal()
        window = admission.window
        if charge is not None and window is not None and not self._write("UpdateItem", charge):
            raise window.refusal(now)
        return admission

    def release(self, admission: Admission) -> bool:
        """Give the evidence (a signed request, an OIF token) and the budget unit back;
        False (logged) if that failed. Never raises: the failure being reported matters
        more."""
        now = int(self._clock())
        writes: list[dict[str, Any]] = []
        if admission.used_evidence_key is None and admission.window is None:
            return True  # nothing was written
        if admission.used_evidence_key is not None:
            writes.append({"Put": self._release_evidence(admission, now)})
        if admission.window is not None:
            writes.append({"Update": self._refund_budget(admission.window)})
        try:
            with deadline.cleanup_grace():
                if len(writes) == 2:
                    self._transact_through_conflicts(writes)
                elif "Put" in writes[0]:
                    self._call("PutItem", **writes[0]["Put"])
                else:
                    self._call("UpdateItem", **writes[0]["Update"])
        except (*errors.SDK_ERRORS, TokexError) as exc:
            log.warning("could not release an admission (the evidence stays used): %s", exc)
            return False
        return True

    # --- the items -------------------------------------------------------------------

    def _use_evidence(self, admission: Admission) -> dict[str, Any] | None:
        if admission.used is None:
            return None
        return {
            "TableName": self._table,
            "Item": {
                **schema.key(str(admission.used_evidence_key)),
                schema.TTL_ATTRIBUTE: {"N": str(admission.used.expires_at)},
                "admission": {"S": admission.id},
            },
            "ConditionExpression": _UNUSED_EVIDENCE,
        }

    def _charge_budget(self, admission: Admission) -> dict[str, Any] | None:
        window = admission.window
        if window is None:
            return None
        return {
            "TableName": self._table,
            "Key": schema.key(schema.rate_key(window.principal, window.number)),
            "UpdateExpression": f"ADD hits :one SET {_TTL} = if_not_exists({_TTL}, :end)",
            "ConditionExpression": _UNDER_BUDGET,
            "ExpressionAttributeValues": {
                ":one": {"N": "1"},
                ":end": {"N": str(window.expires_at)},
                ":limit": {"N": str(window.limit)},
            },
        }

    def _release_evidence(self, admission: Admission, now: int) -> dict[str, Any]:
        assert admission.used is not None
        return {
            "TableName": self._table,
            "Item": {
                **schema.key(str(admission.used_evidence_key)),
                schema.TTL_ATTRIBUTE: {"N": str(admission.used.expires_at)},
                "released_at": {"N": str(now)},
                # Kept: a retry after a lost answer still meets the condition.
                "admission": {"S": admission.id},
            },
            "ConditionExpression": "admission = :admission",
            "ExpressionAttributeValues": {":admission": {"S": admission.id}},
        }

    def _refund_budget(self, window: RateWindow) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Key": schema.key(schema.rate_key(window.principal, window.number)),
            "UpdateExpression": "ADD hits :minus_one",
            # Never recreate a counter TTL has removed (it would have no expiry).
            "ConditionExpression": "attribute_exists(hits)",
            "ExpressionAttributeValues": {":minus_one": {"N": "-1"}},
        }

    # --- the calls -------------------------------------------------------------------

    def _transact(self, writes: list[dict[str, Any]], admission: Admission, now: float) -> None:
        try:
            self._transact_through_conflicts(writes)
        except ClientError as exc:
            use, charge = _cancellation_codes(exc)
            if use == "ConditionalCheckFailed" and admission.used is not None:
                raise admission.used.replay_refusal() from None
            if charge == "ConditionalCheckFailed" and admission.window is not None:
                self._use_up_after_refusal(writes[0]["Put"], admission)
                raise admission.window.refusal(now) from None
            raise _unavailable("TransactWriteItems", exc, use, charge) from None

    def _transact_through_conflicts(self, writes: list[dict[str, Any]]) -> None:
        """TransactWriteItems, tried again while it is cancelled by conflicts alone (see
        CONFLICT_ATTEMPTS); the last attempt's ClientError otherwise."""
        attempt = 1
        while True:
            try:
                self._call("TransactWriteItems", TransactItems=writes)
                return
            except ClientError as exc:
                pause = _pause_after_conflict(attempt, *_cancellation_codes(exc))
                if pause is None:
                    raise
                self._sleep(pause)
                attempt += 1

    def _use_up_after_refusal(self, use: dict[str, Any], admission: Admission) -> None:
        """The 429 path: record the evidence alone, so the refused evidence stays used."""
        if not self._use_alone(use, admission):
            assert admission.used is not None
            raise admission.used.replay_refusal()  # a concurrent copy got there first

    def _use_alone(self, use: dict[str, Any], admission: Admission) -> bool:
        """The signature record's conditional PutItem outside a transaction (which has no
        idempotency token): False if the evidence was used before. A retry after a lost
        answer fails its condition on the record its own first attempt wrote; DynamoDB
        returns that record, and this admission's id in it is no replay."""
        try:
            self._call("PutItem", **use, ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as exc:
            if not errors.is_client_error(exc, "ConditionalCheckFailedException"):
                raise _unavailable("PutItem", exc) from None
            found = exc.response.get("Item") or {}
            return bool(found.get("admission") == {"S": admission.id})
        return True

    def _write(self, operation: str, request: dict[str, Any]) -> bool:
        """A conditional write: False if its condition failed."""
        try:
            self._call(operation, **request)
        except ClientError as exc:
            if errors.is_client_error(exc, "ConditionalCheckFailedException"):
                return False
            raise _unavailable(operation, exc) from None
        return True

    def _call(self, operation: str, **request: Any) -> None:
        try:
            getattr(self._dynamodb, xform_name(operation))(**request)
        except errors.SDK_ERRORS as exc:
            if isinstance(exc, ClientError):
                raise  # the callers read its code (a failed condition, a cancellation)
            raise _unavailable(operation, exc) from None  # unreachable, timeout, credentials


def _pause_after_conflict(attempt: int, *item_codes: str | None) -> float | None:
    """The pause before trying a cancelled transaction again, or None: it was not cancelled
    by a conflict alone (a failed condition decides now), or no other attempt is allowed
    or fits in the request's deadline."""
    if "TransactionConflict" not in item_codes or "ConditionalCheckFailed" in item_codes:
        return None
    if attempt >= CONFLICT_ATTEMPTS:
        return None
    return pause_within_deadline(
        attempt, base=CONFLICT_BACKOFF_BASE_SECONDS, cap=CONFLICT_BACKOFF_CAP_SECONDS
    )


def _cancellation_codes(exc: ClientError) -> tuple[str | None, str | None]:
    """The cancellation reason of each item (signature, budget), when DynamoDB gave them."""
    if not errors.is_client_error(exc, "TransactionCanceledException"):
        return None, None
    reasons = exc.response.get("CancellationReasons") or []
    codes = [reason.get("Code") for reason in reasons if isinstance(reason, dict)]
    if len(codes) != 2:
        return None, None
    return codes[0], codes[1]


def _unavailable(operation: str, exc: Exception, *item_codes: str | None) -> TemporarilyUnavailable:
    """The 503; a cancelled transaction's reason also names each item's cancellation code."""
    codes = (errors.error_code(exc), *item_codes)
    detail = "/".join(code for code in codes if code and code != "None")
    return errors.unavailable(_UNAVAILABLE, "dynamodb", operation, detail)
