"""Introspection clients in the state table: the only module that reads or writes them.

Items: `id` = `client#<client_id>` (schema.py), `name`, `secret_hash`, `created_at` (N),
`audiences` (SS). No `expires_at`: a client lives until `tokex clients remove`. What a
client is, how it authenticates and how its secret is hashed: tokex/introspection_clients.py.

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


class _ConditionFailed(TemporarilyUnavailable):
    """A conditional write found no item to update (or, for `add`, an id collision)."""


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
                raise _ConditionFailed(failed.description, reason=failed.reason) from None
            raise failed from None
        return response


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
