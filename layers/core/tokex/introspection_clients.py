"""Introspection clients: who may call `POST /introspect` (RFC 7662 §2.1), and how they
authenticate (HTTP Basic, RFC 6749 §2.3.1). The client record, Basic parsing and secret
hashing; the records live in the state table (adapters/state_table/
introspection_clients.py, the only module that reads or writes them).

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
Comparison is constant-time (`hmac.compare_digest`, in `ClientStore.authenticate`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from tokex import identifiers
from tokex.errors import TokexError

CLIENT_ID = re.compile(r"tc_[0-9a-f]{20}")
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SECRET_BYTES = 32
# token_urlsafe(32) is 43 characters; anything much longer is not one of ours.
MAX_SECRET_CHARS = 128
MAX_AUTHORIZATION_CHARS = 512
VERIFIED_CACHE_SECONDS = 30
MAX_CACHED_CLIENTS = 256
# As many as a policy may name (policy/fields.py MAX_LIST_ITEMS); keeps the item small.
MAX_CLIENT_AUDIENCES = 100
HASH_SCHEME = "sha256"
_HASH_DOMAIN = b"tokex introspection client secret\x00"


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


def served_audiences(audiences: Iterable[str]) -> tuple[str, ...]:
    """The distinct audiences, sorted, each of the form the exchange accepts
    (token_request.py); at least one. Raises ValueError."""
    served = tuple(sorted(set(audiences)))
    if not served:
        raise ValueError("a client serves at least one audience")
    if len(served) > MAX_CLIENT_AUDIENCES:
        raise ValueError(f"a client serves at most {MAX_CLIENT_AUDIENCES} audiences")
    for audience in served:
        if not identifiers.is_audience(audience):
            raise ValueError(f"audience {audience!r}: {identifiers.AUDIENCE_RULE}")
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
