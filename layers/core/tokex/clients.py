"""Introspection clients: who may call `POST /introspect` (RFC 7662 §2.1), and how they
authenticate (HTTP Basic, RFC 6749 §2.3.1). The only module that reads or writes them.

Items in the state table: `id` = `client#<client_id>`, `name`, `secret_hash`,
`created_at` (N), `audiences` (SS). No `expires_at`: a client lives until
`tokex clients remove`.

Each client serves the audiences it is registered for, and introspection answers
`{"active": false}` for a token of any other audience (RFC 7662 §4 lets the server limit
what a client may learn; introspection.py). An item without `audiences` (a client made
before audiences existed) serves none: it is authenticated, and every token is inactive
for it, until an operator runs `tokex clients update ID --audience AUD` (fail closed).

Secrets are made by tokex (`secrets.token_urlsafe(32)`: 256 random bits), shown once and
stored only as a hash. Why SHA-256 and not a password hash (scrypt, bcrypt, Argon2): a
slow hash buys time against guessing *low-entropy* secrets from a stolen table; nothing
guesses 256 random bits, so its cost would only be paid by every Lambda cold request.
The hash is domain-separated and bound to the client id, so a hash copied onto another
item does not verify; it carries its scheme name (`sha256:`) to allow a change later.
Comparison is constant-time (`hmac.compare_digest`).

Successful authentications, with the client's audiences, are cached for
`VERIFIED_CACHE_SECONDS`: removing a client or changing its audiences takes effect in warm
Lambdas within that time. Failures are never cached.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from tokex.errors import TemporarilyUnavailable, TokexError
from tokex.token_request import _AUDIENCE

CLIENT_PREFIX = "client#"
CLIENT_ID = re.compile(r"tc_[0-9a-f]{20}")
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SECRET_BYTES = 32
# token_urlsafe(32) is 43 characters; anything much longer is not one of ours.
MAX_SECRET_CHARS = 128
MAX_AUTHORIZATION_CHARS = 512
VERIFIED_CACHE_SECONDS = 30
MAX_CACHED_CLIENTS = 256
# As many as a policy may name (policy/model.py MAX_LIST_ITEMS); keeps the item small.
MAX_CLIENT_AUDIENCES = 100
HASH_SCHEME = "sha256"
_HASH_DOMAIN = b"tokex introspection client secret\x00"
_UNAVAILABLE = "the client store is unavailable, retry later"
# An alias because the method `ClientStore.list` shadows the builtin in the class body.
_Clients = list["IntrospectionClient"]


class InvalidClient(TokexError):
    """Client authentication failed (RFC 6749 §5.2): 401 with a Basic challenge."""

    error = "invalid_client"
    status = 401

    def __init__(self, reason: str) -> None:
        # One description for every failure: which part was wrong is for the log only.
        super().__init__("client authentication failed", reason=reason)

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="tokex"'}


@dataclass(frozen=True)
class IntrospectionClient:
    client_id: str
    name: str
    created_at: int
    # The audiences whose tokens this client may introspect, sorted; () serves none.
    audiences: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "name": self.name,
            "created_at": self.created_at,
            "audiences": list(self.audiences),
        }


class _ConditionFailed(TemporarilyUnavailable):
    """A conditional write found no item to update (or, for `add`, an id collision)."""


def served_audiences(audiences: Iterable[str]) -> tuple[str, ...]:
    """The distinct audiences, sorted, each of the form the exchange accepts
    (token_request.py); at least one. Raises ValueError."""
    served = tuple(sorted(set(audiences)))
    if not served:
        raise ValueError("a client serves at least one audience")
    if len(served) > MAX_CLIENT_AUDIENCES:
        raise ValueError(f"a client serves at most {MAX_CLIENT_AUDIENCES} audiences")
    for audience in served:
        if not _AUDIENCE.fullmatch(audience):
            raise ValueError(f"audience {audience!r}: 1-256 characters of A-Za-z0-9._:/-")
    return served


def basic_authorization(client_id: str, secret: str) -> str:
    """The `Authorization` header value for a client (what Kong's `authorization_value`
    holds). Our ids and secrets are URL-safe, so the §2.3.1 form-encoding is the identity."""
    raw = f"{client_id}:{secret}".encode("ascii")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_basic_authorization(header: str | None) -> tuple[str, str]:
    """(client_id, secret) from `Authorization: Basic ...` (RFC 7617, RFC 6749 §2.3.1:
    both form-urlencoded, then joined by `:` and base64-encoded). Raises InvalidClient."""
    if not header:
        raise InvalidClient("no_credentials")
    if len(header) > MAX_AUTHORIZATION_CHARS:
        raise InvalidClient("credentials_too_large")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise InvalidClient("not_basic")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidClient("malformed_basic") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise InvalidClient("malformed_basic")
    return unquote_plus(client_id), unquote_plus(secret)


def secret_hash(client_id: str, secret: str) -> str:
    digest = hashlib.sha256(
        _HASH_DOMAIN + client_id.encode("utf-8") + b"\x00" + secret.encode("utf-8")
    ).hexdigest()
    return f"{HASH_SCHEME}:{digest}"


class ClientStore:
    def __init__(
        self,
        dynamodb_client: Any,
        table_name: str,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dynamodb = dynamodb_client
        self._table = table_name
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # secret hash -> (client, monotonic time until which it is trusted)
        self._verified: dict[str, tuple[IntrospectionClient, float]] = {}

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
            "id": {"S": CLIENT_PREFIX + client.client_id},
            "name": {"S": client.name},
            "secret_hash": {"S": secret_hash(client.client_id, secret)},
            "created_at": {"N": str(client.created_at)},
            "audiences": {"SS": list(served)},
        }
        # 80 random bits make a collision absurd; the condition makes it harmless anyway.
        self._call(
            "put_item",
            TableName=self._table,
            Item=item,
            ConditionExpression="attribute_not_exists(id)",
        )
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
                "update_item",
                TableName=self._table,
                Key={"id": {"S": CLIENT_PREFIX + client_id}},
                UpdateExpression="SET #a = :a",
                # Never creates an item: a client exists only as `add` made it.
                ConditionExpression="attribute_exists(id)",
                ExpressionAttributeNames={"#a": "audiences"},
                ExpressionAttributeValues={":a": {"SS": list(served)}},
                ReturnValues="ALL_NEW",
            )
        except _ConditionFailed:
            return None
        return _client(response["Attributes"])

    def remove(self, client_id: str) -> bool:
        """Delete a client; True if it existed."""
        if not CLIENT_ID.fullmatch(client_id):
            return False
        response = self._call(
            "delete_item",
            TableName=self._table,
            Key={"id": {"S": CLIENT_PREFIX + client_id}},
            ReturnValues="ALL_OLD",
        )
        return "Attributes" in response

    def authenticate(self, client_id: str, secret: str) -> IntrospectionClient:
        """The client these credentials belong to. Raises InvalidClient (unknown id, wrong
        secret, malformed input) or TemporarilyUnavailable (DynamoDB)."""
        if not CLIENT_ID.fullmatch(client_id) or not 0 < len(secret) <= MAX_SECRET_CHARS:
            raise InvalidClient("malformed_credentials")
        presented = secret_hash(client_id, secret)
        now = self._monotonic()
        with self._lock:
            cached = self._verified.get(presented)
        if cached is not None and cached[1] > now:
            return cached[0]
        response = self._call(
            "get_item",
            TableName=self._table,
            Key={"id": {"S": CLIENT_PREFIX + client_id}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        stored = item.get("secret_hash", {}).get("S", "") if item else ""
        # Compared even for an unknown id, so both failures take the same path.
        matches = hmac.compare_digest(presented.encode(), (stored or "-").encode())
        if item is None:
            raise InvalidClient("unknown_client")
        if not matches:
            raise InvalidClient("wrong_secret")
        client = _client(item)
        with self._lock:
            if len(self._verified) >= MAX_CACHED_CLIENTS:
                self._verified.clear()
            self._verified[presented] = (client, now + VERIFIED_CACHE_SECONDS)
        return client

    def _scan(self) -> Iterator[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "ConsistentRead": True,
            "FilterExpression": "begins_with(#i, :prefix)",
            "ProjectionExpression": "#i, #n, #c, #a",
            "ExpressionAttributeNames": {
                "#i": "id",
                "#n": "name",
                "#c": "created_at",
                "#a": "audiences",
            },
            "ExpressionAttributeValues": {":prefix": {"S": CLIENT_PREFIX}},
        }
        while True:
            page = self._call("scan", **request)
            yield from page.get("Items", [])
            if not page.get("LastEvaluatedKey"):
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = getattr(self._dynamodb, operation)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            failed = (
                _ConditionFailed
                if code == "ConditionalCheckFailedException"
                else TemporarilyUnavailable
            )
            raise failed(_UNAVAILABLE, reason=f"dynamodb {operation}: {code}") from None
        except BotoCoreError as exc:
            raise TemporarilyUnavailable(
                _UNAVAILABLE, reason=f"dynamodb {operation}: {type(exc).__name__}"
            ) from None
        return response


def _client(item: dict[str, Any]) -> IntrospectionClient:
    created = item.get("created_at", {}).get("N", "0")
    # Only a string set counts: an item without one (made before audiences existed) or
    # with another type serves no audience, so every token is inactive for it.
    audiences = item.get("audiences", {}).get("SS", [])
    return IntrospectionClient(
        client_id=item["id"]["S"].removeprefix(CLIENT_PREFIX),
        name=item.get("name", {}).get("S", ""),
        created_at=int(created) if created.isdigit() else 0,
        audiences=tuple(sorted(audiences)),
    )
