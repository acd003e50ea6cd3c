"""Introspection clients in the state table: the only module that reads or writes them.

Items: `id` = `client#<client_id>` (schema.py), `name`, `secret_hash`, `created_at` (N),
`audiences` (SS). No `expires_at`: a client lives until `tokex clients remove`. What a
client is, how it authenticates and how its secret is hashed: tokex/introspection_clients.py.

Audiences are changed in one conditional write each, never read first: `update` replaces
the set, `add_audiences` and `remove_audiences` change it with DynamoDB's set `ADD` and
`DELETE` (so two operators adding an audience each at once both land, where reading the
set and writing it back with one more would let the later write undo the earlier).

A client's stored item (its secret's hash and its audiences), once read, is kept for
`VERIFIED_CACHE_SECONDS`, by client id: removing a client or changing its audiences takes
effect in warm Lambdas within that time, and presented secrets are compared with the kept
hash, so guessing a known client's secret costs no DynamoDB read per guess. An id that
names no client is read every time (nothing is kept of it: random ids would fill the
cache).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from botocore import xform_name

from tokex.adapters import errors
from tokex.adapters.state_table import schema
from tokex.clock import SuspendAwareClock
from tokex.errors import TemporarilyUnavailable
from tokex.introspection_clients import (
    CLIENT_ID,
    CLIENT_NAME,
    MAX_CACHED_CLIENTS,
    MAX_CLIENT_AUDIENCES,
    MAX_SECRET_CHARS,
    SECRET_BYTES,
    VERIFIED_CACHE_SECONDS,
    IntrospectionClient,
    InvalidClient,
    secret_hash,
    served_audiences,
)

_UNAVAILABLE = "the client store is unavailable, retry later"
# An alias because the method `ClientStore.list` shadows the builtin in the class body.
_Clients = list[IntrospectionClient]


# How often `add_audiences` writes again when the set changed between its write and the
# item that write was refused against (another operator's change at that moment).
_ADD_ATTEMPTS = 3
# A condition's operand: DynamoDB's name of the string set type (attribute_type).
_STRING_SET = {"S": "SS"}


class _ConditionFailed(TemporarilyUnavailable):
    """A conditional write found no item to update (or, for `add`, an id collision);
    `item` is the item as it was, when the write asked for it and there was one."""

    def __init__(
        self, description: str, *, reason: str, item: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description, reason=reason)
        self.item = item


class TooManyAudiences(ValueError):
    """Adding audiences would make a client serve more than MAX_CLIENT_AUDIENCES:
    `serves` is how many it serves, `adding` how many of those asked for it does not."""

    def __init__(self, client_id: str, serves: int, adding: int) -> None:
        super().__init__(
            f"a client serves at most {MAX_CLIENT_AUDIENCES} audiences: {client_id} serves "
            f"{serves}, and {adding} more would make {serves + adding}"
        )
        self.serves = serves
        self.adding = adding


class ClientStore:
    """The introspection clients of the state table (`POST /introspect` authenticates
    with `authenticate`)."""

    def __init__(
        self,
        dynamodb_client: Any,
        table_name: str,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._dynamodb = dynamodb_client
        self._table = table_name
        self._clock = clock
        # How long a verified client is trusted: a frozen environment's sleep counts.
        self._monotonic = monotonic or SuspendAwareClock()
        self._lock = threading.Lock()
        # client id -> (client, its stored secret hash, monotonic time until which kept)
        self._read: dict[str, tuple[IntrospectionClient, str, float]] = {}

    def add(self, name: str, audiences: Iterable[str]) -> tuple[IntrospectionClient, str]:
        """A new client serving `audiences` and its secret (returned once; only its hash
        is stored). Raises ValueError for a bad name or audience list."""
        if not CLIENT_NAME.fullmatch(name):
            raise ValueError("a client name is 1-64 characters of A-Z a-z 0-9 . _ -")
        served = served_audiences(audiences)
        client_id = "tc_" + secrets.token_hex(10)
        client = IntrospectionClient(client_id, name, int(self._clock()), served)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        item = {
            **schema.key(schema.client_key(client.client_id)),
            "name": {"S": client.name},
            "secret_hash": {"S": secret_hash(client.client_id, secret)},
            "created_at": {"N": str(client.created_at)},
            "audiences": {"SS": list(served)},
        }
        # 80 random bits make a collision absurd; the condition makes it harmless anyway.
        try:
            self._call(
                "PutItem",
                TableName=self._table,
                Item=item,
                ConditionExpression=f"attribute_not_exists({schema.KEY_ATTRIBUTE})",
            )
        except _ConditionFailed:
            # The SDK's retry of a write whose answer was lost finds the item it wrote:
            # the client exists, and only this caller holds its secret.
            stored = self._call(
                "GetItem",
                TableName=self._table,
                Key=schema.key(schema.client_key(client_id)),
                ConsistentRead=True,
            ).get("Item", {})
            if stored.get("secret_hash") != item["secret_hash"]:
                raise
        return client, secret

    def list(self) -> _Clients:
        """Every client, by name then id (a Scan of the state table: operators only)."""
        clients = [_client(item) for item in self._scan()]
        return sorted(clients, key=lambda c: (c.name, c.client_id))

    def update(self, client_id: str, audiences: Iterable[str]) -> IntrospectionClient | None:
        """Replace the audiences a client serves; the client as stored now, or None if
        there is no such client. Warm Lambdas see the change within
        VERIFIED_CACHE_SECONDS. Raises ValueError for a bad audience list."""
        served = served_audiences(audiences)
        if not CLIENT_ID.fullmatch(client_id):
            return None
        try:
            response = self._call(
                "UpdateItem",
                TableName=self._table,
                Key=schema.key(schema.client_key(client_id)),
                UpdateExpression="SET #a = :a",
                # Never creates an item: a client exists only as `add` made it.
                ConditionExpression=f"attribute_exists({schema.KEY_ATTRIBUTE})",
                ExpressionAttributeNames={"#a": "audiences"},
                ExpressionAttributeValues={":a": {"SS": list(served)}},
                ReturnValues="ALL_NEW",
            )
        except _ConditionFailed:
            return None
        return _client(response["Attributes"])

    def add_audiences(self, client_id: str, audiences: Iterable[str]) -> IntrospectionClient | None:
        """Add `audiences` to those a client serves, in one conditional write (`ADD`: no
        read first, so a change made at the same time is kept); the client as stored now,
        or None if there is no such client. Audiences it serves already are no change.

        Raises TooManyAudiences (a ValueError) when the client would serve more than
        MAX_CLIENT_AUDIENCES, nothing written; ValueError for a bad audience list, or for an
        item whose `audiences` is not a string set (written by other means: `update`
        replaces it)."""
        adding = served_audiences(audiences)
        if not CLIENT_ID.fullmatch(client_id):
            return None
        for _ in range(_ADD_ATTEMPTS):
            try:
                # The set stays within the limit even if none of `adding` is in it yet
                # (which the write cannot know).
                stored = self._change_audiences(
                    client_id,
                    "ADD #a :add",
                    "attribute_type(#a, :ss) AND size(#a) <= :room",
                    {
                        ":add": {"SS": list(adding)},
                        ":room": {"N": str(MAX_CLIENT_AUDIENCES - len(adding))},
                    },
                )
            except _ConditionFailed as refused:
                # Why, from the item as the refusal found it: no item (no such client),
                # or a set that would grow too large with those of `adding` it lacks.
                if refused.item is None:
                    return None
                serves = _audience_set(refused.item, client_id)
                missing = tuple(a for a in adding if a not in serves)
                if not missing:  # served already (also: the SDK's retry of this very add)
                    return _client(refused.item)
                if len(serves) + len(missing) > MAX_CLIENT_AUDIENCES:
                    raise TooManyAudiences(client_id, len(serves), len(missing)) from None
                adding = missing  # some were served already: the rest fit
                continue
            return _client(stored)
        raise TemporarilyUnavailable(
            _UNAVAILABLE, reason="dynamodb UpdateItem: the audiences kept changing"
        )

    def remove_audiences(
        self, client_id: str, audiences: Iterable[str]
    ) -> IntrospectionClient | None:
        """Remove `audiences` from those a client serves, in one conditional write
        (`DELETE`: no read first); the client as stored now, or None if there is no such
        client. Audiences it does not serve are no change; removing the last leaves a
        client that serves none (DynamoDB keeps no empty set), for which every token is
        inactive. Raises ValueError for a bad audience list, or for an item whose
        `audiences` is not a string set (`update` replaces it)."""
        removing = served_audiences(audiences)
        if not CLIENT_ID.fullmatch(client_id):
            return None
        try:
            stored = self._change_audiences(
                client_id,
                "DELETE #a :remove",
                "attribute_type(#a, :ss)",
                {":remove": {"SS": list(removing)}},
            )
        except _ConditionFailed as refused:
            if refused.item is None:
                return None
            _audience_set(refused.item, client_id)  # raises: the only other way to fail
            raise
        return _client(stored)

    def _change_audiences(
        self, client_id: str, change: str, condition: str, values: dict[str, Any]
    ) -> dict[str, Any]:
        """One `UpdateItem` of a client's audience set (`change`, with `values`), the item
        as stored after it. Never creates an item; `condition` must hold of a set that is
        there (`:ss` is the string set type). Raises _ConditionFailed with the item as it
        was (None: no such client)."""
        response = self._call(
            "UpdateItem",
            TableName=self._table,
            Key=schema.key(schema.client_key(client_id)),
            UpdateExpression=change,
            ConditionExpression=f"attribute_exists({schema.KEY_ATTRIBUTE}) AND "
            f"(attribute_not_exists(#a) OR ({condition}))",
            ExpressionAttributeNames={"#a": "audiences"},
            ExpressionAttributeValues={**values, ":ss": _STRING_SET},
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        attributes: dict[str, Any] = response["Attributes"]
        return attributes

    def remove(self, client_id: str) -> bool:
        """Delete a client; True if it existed, or may have: when the SDK retried, an
        attempt whose answer was lost may have deleted it (the client is gone either way,
        and "no such client" would be wrong)."""
        if not CLIENT_ID.fullmatch(client_id):
            return False
        response = self._call(
            "DeleteItem",
            TableName=self._table,
            Key=schema.key(schema.client_key(client_id)),
            ReturnValues="ALL_OLD",
        )
        retried = response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0
        return "Attributes" in response or retried

    def authenticate(self, client_id: str, secret: str) -> IntrospectionClient:
        """The client these credentials belong to. Raises InvalidClient (unknown id, wrong
        secret, malformed input) or TemporarilyUnavailable (DynamoDB)."""
        if not CLIENT_ID.fullmatch(client_id) or not 0 < len(secret) <= MAX_SECRET_CHARS:
            raise InvalidClient("malformed_credentials")
        presented = secret_hash(client_id, secret)
        now = self._monotonic()
        with self._lock:
            kept = self._read.get(client_id)
        if kept is not None and kept[2] > now:
            client, stored, _ = kept
        else:
            response = self._call(
                "GetItem",
                TableName=self._table,
                Key=schema.key(schema.client_key(client_id)),
                ConsistentRead=True,
            )
            item = response.get("Item")
            stored = item.get("secret_hash", {}).get("S", "") if item else ""
            if item is None:
                # Compared all the same, as a wrong secret is. (Once a client's item is
                # kept, a wrong secret for it is answered without a read, faster than an
                # unknown id: that tells only that a client id someone already has exists.)
                hmac.compare_digest(presented.encode(), b"-")
                raise InvalidClient("unknown_client")
            client = _client(item)
            with self._lock:
                if len(self._read) >= MAX_CACHED_CLIENTS:
                    self._read.clear()
                self._read[client_id] = (client, stored, now + VERIFIED_CACHE_SECONDS)
        if not hmac.compare_digest(presented.encode(), (stored or "-").encode()):
            raise InvalidClient("wrong_secret")
        return client

    def _scan(self) -> Iterator[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "ConsistentRead": True,
            "FilterExpression": "begins_with(#i, :prefix)",
            "ProjectionExpression": "#i, #n, #c, #a",
            "ExpressionAttributeNames": {
                "#i": schema.KEY_ATTRIBUTE,
                "#n": "name",
                "#c": "created_at",
                "#a": "audiences",
            },
            "ExpressionAttributeValues": {":prefix": {"S": schema.CLIENT_PREFIX}},
        }
        while True:
            page = self._call("Scan", **request)
            yield from errors.scan_items(page, _UNAVAILABLE)
            if not page.get("LastEvaluatedKey"):
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = getattr(self._dynamodb, xform_name(operation))(**kwargs)
        except errors.SDK_ERRORS as exc:
            failed = errors.unavailable(_UNAVAILABLE, "dynamodb", operation, exc)
            if errors.is_client_error(exc, "ConditionalCheckFailedException"):
                item = getattr(exc, "response", {}).get("Item")  # with ALL_OLD asked for
                raise _ConditionFailed(
                    failed.description,
                    reason=failed.reason,
                    item=item if isinstance(item, dict) else None,
                ) from None
            raise failed from None
        return response


def _audience_set(item: dict[str, Any], client_id: str) -> frozenset[str]:
    """The audiences of a stored item (none without the attribute). Raises ValueError when
    `audiences` is there but no string set: only `update` can replace it."""
    if "audiences" not in item:
        return frozenset()
    audiences = item["audiences"].get("SS")
    if not isinstance(audiences, list):
        raise ValueError(
            f"client {client_id}'s audiences are not a string set (written by other means): "
            "only replacing the whole set changes them"
        )
    return frozenset(audiences)


def _client(item: dict[str, Any]) -> IntrospectionClient:
    created = item.get("created_at", {}).get("N", "0")
    # Only a string set counts: an item without one (made before audiences existed) or
    # with another type serves no audience, so every token is inactive for it.
    audiences = item.get("audiences", {}).get("SS", [])
    return IntrospectionClient(
        client_id=item[schema.KEY_ATTRIBUTE]["S"].removeprefix(schema.CLIENT_PREFIX),
        name=item.get("name", {}).get("S", ""),
        created_at=int(created) if created.isdigit() else 0,
        audiences=tuple(sorted(audiences)),
    )
