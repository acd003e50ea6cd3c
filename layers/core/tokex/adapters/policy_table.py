"""The DynamoDB policy table: the only module that reads or writes it.

One item per policy: `id` (S, partition key), `document` (S, canonical JSON of
`Policy.to_document()`), `updated_at` (N, epoch seconds), `revision` (N, the count of the
policy's writes through `put`: 1 for the first; an item without it, written before it or
by other means, reads as revision 0). One more item, `#generation` (an id no policy can
have: `#` is not among the characters of POLICY_ID, so `put` refuses it), holds
`generation` (N), a count of the writes: every write here is one `TransactWriteItems` of
the policy's update (`SET document, updated_at ADD revision 1`: any other attribute of
the item is kept) or delete, and `ADD generation 1` (which creates the item; a table from
before it reads as generation 0). No policy, never invalid: every read of the table skips
it.

Optimistic concurrency (`tokex policy put/delete --if-revision`): `put` and `delete` with
`if_revision` write only if the stored revision is still that one (0: no revision, so no
item for `put`, an item written before revisions for both), else the whole transaction is
cancelled (nothing written, the generation not bumped) and `RevisionMismatch` names the
revision found. An operator who read the policy, edited it and writes it back that way
cannot undo a change made in between. A policy deleted and created again starts again at
revision 1, and a write by other means that does not `ADD revision 1` is not seen.
Concurrent writes cancel each other (`TransactionConflict`: each touches `#generation`);
the write is tried again, CONFLICT_ATTEMPTS times at most, so that the loser of a race
learns of the winner's revision rather than of an outage.

A Scan is no snapshot (its pages, even one page's partitions, are read at different
times), so a load that overlapped an operator's change ("put the new deny, then delete
the old one") could see neither deny. `load_all` and `inventory` read the generation
(consistent GetItem) before and after the Scan: equal, no write landed in between and
the items are one state of the table; different, the Scan is read again, and after
SNAPSHOT_ATTEMPTS the load fails (`TemporarilyUnavailable`, 503: the table changes faster
than it can be read). This holds for writes that bump the generation: `tokex policy`, or
any writer that adds 1 to it in the same transaction; and, of a multi-Region global table,
for the writes of the reader's own Region only (replication carries items one by one, not
transactions: docs/policies.md "Evaluation").

Documents are validated again when read, and a bad item fails closed
(`PolicyTable.load_all`): one that is or may be a deny, or an allow whose callers cannot
be read, blocks the load (`PoliciesBlocked`: every exchange answers 503 until an operator
fixes or deletes it); any other invalid allow is replaced by a deny of the callers it
names; one that decided nothing is skipped. Each is logged and reported by id.

Every AWS failure becomes `TemporarilyUnavailable` (503, docs/contract.md; errors.py): the
exchange must never answer 500, and the description never names the table (the `reason`,
for logs, carries the operation and error code).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from botocore import xform_name

from tokex.adapters import errors
from tokex.errors import Misconfigured
from tokex.evidence.identity import AWS_OIF, EKS, SIGV4
from tokex.policy.model import (
    MAX_TTL_CAP_SECONDS,
    POLICY_ID,
    Policy,
    PolicyValidationError,
    canonical_json,
)
from tokex.strict_json import StrictJsonError, loads_strict

log = logging.getLogger(__name__)

_UNAVAILABLE = "the policy store is unavailable, retry later"
# Attribute names through placeholders: no reserved-word surprises in expressions.
_NAMES = {"#i": "id", "#d": "document", "#r": "revision"}
# Aliases because the method `PolicyStore.list` shadows the builtin in the class body.
_Policies = list[Policy]
_Ids = list[str]
_Items = list[dict[str, Any]]
_BLOCKS_EVERY_EXCHANGE = "every exchange answers 503 until it is fixed or deleted"
_STAND_IN_ID = "stand-in"
# The item counting the writes (module docstring): `#` is in no policy id (POLICY_ID), so
# no policy is ever stored under it. cdk/policy_table.py grants the exchange its GetItem.
GENERATION_ID = "#generation"
GENERATION_ATTRIBUTE = "generation"
# The count of a policy's writes through `put` (module docstring); absent: revision 0.
REVISION_ATTRIBUTE = "revision"
# Transactions cancelled by another writer's (`TransactionConflict`), before the write
# fails (503); jittered pauses of up to CONFLICT_PAUSE_SECONDS, doubling each time.
CONFLICT_ATTEMPTS = 5
CONFLICT_PAUSE_SECONDS = 0.05
# Scans of a table that changed while they ran, before a load gives up (503).
SNAPSHOT_ATTEMPTS = 3


class PolicyStore:
    """The policy table; its `load_all` is the `PolicyLoader` of policy/cache.py."""

    def __init__(
        self,
        dynamodb_client: Any,
        table_name: str,
        *,
        page_size: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`page_size` bounds items per Scan page (tests use it to force pagination)."""
        self._client = dynamodb_client
        self._table = table_name
        self._page_size = page_size
        self._clock = clock

    def put(self, policy: Policy, *, if_revision: int | None = None) -> None:
        """Create or replace a policy (already validated by `Policy.from_document`), its
        revision one more than the stored one. With `if_revision`, only if the stored
        revision is that one (0: there is no such policy, or it was written before
        revisions): else RevisionMismatch, and nothing is written."""
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"id": {"S": policy.id}},
            "UpdateExpression": "SET #d = :d, #u = :u ADD #r :one",
            "ExpressionAttributeNames": {"#d": "document", "#u": "updated_at", "#r": "revision"},
            "ExpressionAttributeValues": {
                ":d": {"S": canonical_json(policy.to_document())},
                ":u": {"N": str(int(self._clock()))},
                ":one": {"N": "1"},
            },
        }
        if if_revision is not None:
            _on_revision(update, if_revision)
        found = self._write({"Update": update})
        if found is not None:
            revision = _revision(found) if found else None
            raise RevisionMismatch(policy.id, if_revision, revision)

    def get(self, policy_id: str) -> Policy | None:
        """The policy, or None. A stored document that no longer validates raises
        PolicyValidationError (an operator asking for one policy should see why), its
        `consequence` saying what the exchange makes of it."""
        stored = self.get_stored(policy_id)
        return None if stored is None else stored.policy

    def get_stored(self, policy_id: str) -> Stored | None:
        """The policy with its revision (one read: the revision is that document's), or
        None; an invalid document raises as for `get`."""
        if policy_id == GENERATION_ID:
            return None  # no policy: the count of the writes
        response = self._call(
            "GetItem", TableName=self._table, Key={"id": {"S": policy_id}}, ConsistentRead=True
        )
        item = response.get("Item")
        if item is None:
            return None
        try:
            return Stored(_parse(item), _revision(item))
        except PolicyValidationError as exc:
            exc.consequence = _judged(item)[0]
            raise

    def list(self) -> _Policies:
        """Every valid stored policy, sorted by id (no stand-in of an invalid one)."""
        return self.inventory().policies

    def inventory(self) -> Inventory:
        """What an operator needs to see, even of a table that blocks every exchange:
        the valid stored policies, and each invalid item with what the exchange makes of
        it (`tokex policy list`)."""
        policies: list[Policy] = []
        invalid: dict[str, str] = {}
        blocking: list[str] = []
        revisions: dict[str, int] = {}
        for item in self._snapshot():
            revisions[_item_id(item)] = _revision(item)
            try:
                policies.append(_parse(item))
            except PolicyValidationError:
                item_id = _item_id(item)
                invalid[item_id], blocks = _judged(item)
                if blocks:
                    blocking.append(item_id)
        policies.sort(key=lambda p: p.id)
        return Inventory(
            policies,
            dict(sorted(invalid.items())),
            sorted(blocking),
            dict(sorted(revisions.items())),
        )

    def load_all(self) -> tuple[_Policies, _Ids]:
        """(policies sorted by id, ids of items whose documents failed validation).

        An invalid *allow* is replaced by a deny of the principals (or EKS workloads) and
        audiences it names, as far as they can be read: skipped, a broader allow would
        decide for them instead (more scopes, a longer TTL, other claims), where the most
        specific one was meant to. One that is disabled, or names no principal and no EKS
        workload at all, is skipped: it decided nothing. An
        invalid item that is, or may be, a deny, or an allow naming no one that can be
        read, fails the load: skipping it could hand back what it took away (fail closed
        until an operator fixes or deletes it). An item that is no policy at all (no
        document, a key no policy can have: a state-table record written here by mistake)
        is skipped: it never decided anything.

        The items are one state of the table (`_snapshot`): a load that overlaps a change
        is read again, and one that never gets a quiet read fails (503).
        """
        policies: list[Policy] = []
        invalid: list[str] = []
        blocking: list[PoliciesBlocked] = []
        for item in self._snapshot():
            try:
                policies.append(_parse(item))
                continue
            except PolicyValidationError as exc:
                # The field and why, never the document (it may hold claim values).
                log.warning("invalid policy %r: %s", _item_id(item), exc)
            invalid.append(_item_id(item))
            try:
                stand_in = _stand_in(item)
            except PoliciesBlocked as blocked:
                blocking.append(blocked)  # every one named, not the first alone
                continue
            if stand_in is not None:
                policies.append(stand_in)
        if blocking:
            failure = _blocked(blocking)
            failure.invalid_ids = tuple(sorted(invalid))
            raise failure
        policies.sort(key=lambda p: p.id)
        return policies, sorted(invalid)

    def delete(self, policy_id: str, *, if_revision: int | None = None) -> bool:
        """Remove a policy; True if it existed (False, and no write, if not). With
        `if_revision`, only if the stored revision is that one (0: an item written before
        revisions): else RevisionMismatch, and nothing is deleted; a missing item is
        False whatever `if_revision` says."""
        if policy_id == GENERATION_ID:
            # No policy. Deleting it could also bring a count back to a value a load read
            # before, and let that load take a changing table for a quiet one.
            return False
        delete: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"id": {"S": policy_id}},
            "ConditionExpression": "attribute_exists(#i)",
            "ExpressionAttributeNames": {"#i": "id"},
        }
        if if_revision is not None:
            _on_revision(delete, if_revision)
        found = self._write({"Delete": delete})
        if found:  # there, at another revision
            raise RevisionMismatch(policy_id, if_revision, _revision(found))
        return found is None

    def _write(self, write: dict[str, Any]) -> dict[str, Any] | None:
        """`write` and the generation's increment, in one transaction (module docstring):
        None once made; if `write`'s condition failed (then neither is made), the item as
        the condition found it ({} for none, or when `write` did not ask for it with
        ReturnValuesOnConditionCheckFailure). A transaction cancelled by another's
        (`TransactionConflict`) is tried again, CONFLICT_ATTEMPTS times at most. A write
        to GENERATION_ID itself is refused by DynamoDB (two operations on one item)."""
        bump = {
            "TableName": self._table,
            "Key": {"id": {"S": GENERATION_ID}},
            "UpdateExpression": "ADD #g :one",
            "ExpressionAttributeNames": {"#g": GENERATION_ATTRIBUTE},
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
        items = [write, {"Update": bump}]
        attempt = 1
        while True:
            try:
                # botocore gives each call a ClientRequestToken: its retry does not apply it
                # twice. A cancelled transaction applied nothing: a new call may follow.
                self._client.transact_write_items(TransactItems=items)
                return None
            except errors.SDK_ERRORS as exc:
                if _condition_failed(exc):
                    found: dict[str, Any] = _cancellation_reasons(exc)[0].get("Item") or {}
                    return found
                conflicted = _conflicted(exc)
                if not conflicted or attempt >= CONFLICT_ATTEMPTS:
                    detail = f"{errors.error_code(exc)}/TransactionConflict" if conflicted else exc
                    raise errors.unavailable(
                        _UNAVAILABLE, "dynamodb", "TransactWriteItems", detail
                    ) from None
            pause = CONFLICT_PAUSE_SECONDS * 2 ** (attempt - 1)
            time.sleep(random.uniform(0, pause))  # noqa: S311 - jitter, no secret
            attempt += 1

    def _generation(self) -> Any:
        """The generation item's count, as stored (None without the item: generation 0)."""
        response = self._call(
            "GetItem",
            TableName=self._table,
            Key={"id": {"S": GENERATION_ID}},
            ConsistentRead=True,
            ProjectionExpression="#g",
            ExpressionAttributeNames={"#g": GENERATION_ATTRIBUTE},
        )
        return response.get("Item", {}).get(GENERATION_ATTRIBUTE)

    def _snapshot(self) -> _Items:
        """Every policy item, as one state of the table: a Scan that no write overlapped
        (the generation read before it and after it is the same), SNAPSHOT_ATTEMPTS
        Scans at most, then 503."""
        generation = self._generation()
        for _ in range(SNAPSHOT_ATTEMPTS):
            items = list(self._scan())
            # The count after this Scan is the one before the next.
            generation, before = self._generation(), generation
            if generation == before:
                return items
            log.info("policy table changed during a scan; reading it again")
        raise errors.unavailable(
            _UNAVAILABLE, "dynamodb", "Scan", f"changed during each of {SNAPSHOT_ATTEMPTS} reads"
        )

    def _scan(self) -> Iterator[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "ConsistentRead": True,
            "ProjectionExpression": "#i, #d, #r",
            "ExpressionAttributeNames": _NAMES,
        }
        if self._page_size is not None:
            request["Limit"] = self._page_size
        while True:
            page = self._call("Scan", **request)
            for item in errors.scan_items(page, _UNAVAILABLE):
                if _item_id(item) != GENERATION_ID:  # the count of the writes, no policy
                    yield item
            last_key = page.get("LastEvaluatedKey")
            if not last_key:
                return
            request["ExclusiveStartKey"] = last_key

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        method = getattr(self._client, xform_name(operation))
        try:
            response: dict[str, Any] = method(**kwargs)
        except errors.SDK_ERRORS as exc:  # an error answer, unreachable, timeouts, credentials
            raise errors.unavailable(_UNAVAILABLE, "dynamodb", operation, exc) from None
        return response


def create_table(dynamodb_client: Any, table_name: str) -> None:
    """Create the policy table (local mode and tests; deployments get it from CDK).

    Idempotent: an existing table is left as it is.
    """
    try:
        dynamodb_client.create_table(
            TableName=table_name,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except errors.SDK_ERRORS as exc:
        if not errors.is_client_error(exc, "ResourceInUseException"):
            raise
    dynamodb_client.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )


def _parse(item: dict[str, Any]) -> Policy:
    text = item.get("document", {}).get("S")
    if not isinstance(text, str):
        raise PolicyValidationError("document", "item has no string document attribute")
    try:
        # A hand-edited item with a repeated key must not mean "the last one wins".
        doc = loads_strict(text)
    except StrictJsonError as exc:
        raise PolicyValidationError("document", str(exc)) from None
    if not isinstance(doc, dict):
        raise PolicyValidationError("document", "must be a JSON object")
    # Validated against the largest cap, not today's: evaluation caps every TTL anyway,
    # and lowering the deployment cap must not silently disable stored policies.
    policy = Policy.from_document(doc, ttl_cap=MAX_TTL_CAP_SECONDS, stored=True)
    if policy.id != _item_id(item):
        raise PolicyValidationError("id", "document id differs from the item key")
    return policy


def _invalid_allow(item: dict[str, Any]) -> dict[str, Any] | None:
    """An invalid item's document if it still says, unambiguously, `effect: allow`."""
    try:
        document = loads_strict(item.get("document", {}).get("S", ""))
    except (StrictJsonError, AttributeError, TypeError):
        return None
    return document if isinstance(document, dict) and document.get("effect") == "allow" else None


def _decided_something(allow: dict[str, Any]) -> bool:
    """Whether an invalid allow could have been the one that decided for some caller: not
    if disabled, nor if it names no principal and no EKS workload at all, nor if it names
    no audience (an empty list: it granted none)."""
    return (
        allow.get("enabled", True) is not False
        and bool(_named(allow))
        and allow.get("audiences") != []
    )


def _named(allow: dict[str, Any]) -> dict[str, Any]:
    """Whom an invalid allow names: its principals and EKS selectors, each if not empty
    (`"principals": []` names no one: an EKS-only allow may say so)."""
    return {
        key: allow[key]
        for key in ("principals", "eks")
        if key in allow and allow[key] not in ([], {})
    }


def _blocking_deny(item_id: str, allow: dict[str, Any]) -> Policy | None:
    """A deny, named by the invalid allow's key, of whom it names (its principals, its EKS
    selectors) for its audiences (every audience if those cannot be read); None if it
    names no one that can be read."""
    names = _named(allow)
    if "eks" in names:
        names["evidence"] = [EKS] if "principals" not in names else [SIGV4, AWS_OIF, EKS]
    description = "stands in for an allow that no longer validates: fix it or delete it"
    for audiences in (allow.get("audiences"), ["*"]):
        document = {
            # Validated under an id any policy may have: the key may be one `put` refuses
            # (`orders api`, an item written by other means), and this deny must not fail
            # for it (that made every exchange answer 503).
            "id": _STAND_IN_ID,
            "effect": "deny",
            "description": description,
            "audiences": audiences,
            **names,
        }
        try:
            deny = Policy.from_document(document)
        except PolicyValidationError:
            continue
        # Named by the key all the same: the refusal it causes (the audit's reason,
        # `tokex policy explain`) names the item `tokex policy get/delete` take. A deny
        # grants nothing, so the key is never a token's `policy` claim.
        return replace(deny, id=item_id)
    return None


def _stand_in(item: dict[str, Any]) -> Policy | None:
    """What `load_all` keeps of an item that does not validate: the blocking deny of an
    allow that names callers; None for one that decided nothing (disabled, naming no one,
    no policy at all). PoliciesBlocked for one that is or may be a deny, or an allow
    whose callers cannot be read."""
    item_id = _item_id(item)
    allow = _invalid_allow(item)
    if allow is None:
        if _not_a_policy(item):
            return None
        raise _unreadable(item_id, "may be a deny")
    if not _decided_something(allow):
        return None
    blocking = _blocking_deny(item_id, allow)
    if blocking is None:
        raise _unreadable(item_id, "an allow naming no one readable")
    return blocking


def _judged(item: dict[str, Any]) -> tuple[str, bool]:
    """What `load_all` makes of an item that does not validate, in an operator's words,
    and whether that is to block every exchange."""
    try:
        stand_in = _stand_in(item)
    except PoliciesBlocked as blocked:
        return f"{_BLOCKS_EVERY_EXCHANGE} (invalid, and {blocked.what})", True
    if stand_in is None:
        return (
            "the exchange skips it (it decides nothing: disabled, naming no one, or no policy)",
            False,
        )
    return "the exchange denies the callers it names until it is fixed or deleted", False


@dataclass(frozen=True)
class Inventory:
    """The table as an operator sees it: `policies` valid as stored (no stand-ins), each
    invalid item's id with what the exchange makes of it, those of them that make every
    exchange answer 503 (`blocking`), and the revision of every item, valid or not."""

    policies: _Policies
    invalid: dict[str, str]
    blocking: list[str]
    revisions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Stored:
    """A policy as stored, and its revision (`get_stored`)."""

    policy: Policy
    revision: int


class RevisionMismatch(Exception):
    """A write on condition of a revision (`if_revision`) found another one: nothing was
    written. `revision` is the one found, None for a policy that does not exist."""

    def __init__(self, policy_id: str, expected: int | None, revision: int | None) -> None:
        found = "does not exist" if revision is None else f"is at revision {revision}"
        super().__init__(f"policy {policy_id!r} {found}, not at revision {expected}")
        self.policy_id = policy_id
        self.expected = expected
        self.revision = revision


class PoliciesBlocked(Misconfigured):
    """A stored item stops every exchange (503) until an operator fixes or deletes it: a
    misconfiguration (outcome `misconfigured`, the longer Retry-After), not an outage."""

    # Why, of one item ("may be a deny"): what `tokex policy get` and `list` say of it.
    what = ""
    # Of the load it failed (`load_all`): every item that does not validate, blocking or
    # not, as a successful load returns them (the exchange's audit names them).
    invalid_ids: tuple[str, ...] = ()


def _unreadable(item_id: str, what: str) -> PoliciesBlocked:
    blocked = PoliciesBlocked(
        "policies are being updated; retry later",
        reason=f"policy {item_id!r} is invalid and {what}: every exchange answers 503 until"
        " it is fixed or deleted (tokex policy get/delete)",
    )
    blocked.what = what
    return blocked


def _blocked(items: list[PoliciesBlocked]) -> PoliciesBlocked:
    """Every item that blocks the table, named at once: an operator fixing them one
    `tokex policy list` at a time would find the next only after each fix."""
    if len(items) == 1:
        return items[0]
    return PoliciesBlocked(
        "policies are being updated; retry later",
        reason=f"{len(items)} policies block every exchange: "
        + "; ".join(item.reason for item in items),
    )


def _not_a_policy(item: dict[str, Any]) -> bool:
    """No `document` attribute of any type, and an id that `tokex policy put` refuses."""
    return "document" not in item and not POLICY_ID.fullmatch(_item_id(item))


def _on_revision(write: dict[str, Any], revision: int) -> None:
    """Make `write` (a transaction's Update or Delete of a policy) conditional on the
    stored revision being `revision` (0: none stored), returning the item it finds when
    that fails (RevisionMismatch names its revision)."""
    if revision < 0:
        raise ValueError(f"a revision is a whole number, not {revision}")
    condition = "#r = :revision"
    if revision == 0:  # no item, or one written before revisions (it reads as 0)
        condition = f"(attribute_not_exists(#r) OR {condition})"
    existing = write.get("ConditionExpression")
    write["ConditionExpression"] = f"{existing} AND {condition}" if existing else condition
    write["ExpressionAttributeNames"] = {**write["ExpressionAttributeNames"], "#r": "revision"}
    values = write.get("ExpressionAttributeValues", {})
    write["ExpressionAttributeValues"] = {**values, ":revision": {"N": str(revision)}}
    write["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"


def _revision(item: dict[str, Any]) -> int:
    """An item's revision: 0 without the attribute (written before revisions, or by other
    means), or with one that is no whole number (hand-written)."""
    value = item.get(REVISION_ATTRIBUTE, {}).get("N")
    try:
        return int(value) if isinstance(value, str) else 0
    except ValueError:
        return 0


def _cancellation_reasons(exc: BaseException) -> list[dict[str, Any]]:
    reasons: list[dict[str, Any]] = getattr(exc, "response", {}).get("CancellationReasons") or [{}]
    return reasons


def _condition_failed(exc: BaseException) -> bool:
    """A transaction cancelled for its first write's condition (and nothing else)."""
    if not errors.is_client_error(exc, "TransactionCanceledException"):
        return False
    reasons = _cancellation_reasons(exc)
    return bool(reasons[0].get("Code") == "ConditionalCheckFailed") and all(
        reason.get("Code") in (None, "None") for reason in reasons[1:]
    )


def _conflicted(exc: BaseException) -> bool:
    """A transaction cancelled because another one was writing one of its items."""
    return errors.is_client_error(exc, "TransactionCanceledException") and any(
        reason.get("Code") == "TransactionConflict" for reason in _cancellation_reasons(exc)
    )


def _item_id(item: dict[str, Any]) -> str:
    value = item.get("id", {}).get("S")
    return value if isinstance(value, str) else "<missing id>"
