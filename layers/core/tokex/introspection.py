"""Token introspection (RFC 7662): is this access token one of ours, and still good?

Pure logic: the published public keys and the revocation lookup are passed in. The
verifier is `Introspector._verify`, which reads top to bottom as the list of rules; each
refusal is an `Inactive` with a short reason for the audit log. Whatever the reason, the
caller gets exactly `{"active": false}` (RFC 7662 §2.2): a guesser learns nothing about
why, and a relying party has nothing to misread.

What this deliberately does not trust (RFC 8725 §2.1, §3.1, §3.2):
- the token's `alg`: the algorithm comes from the published key named by `kid`, and the
  header must merely agree with it; `none`, HMAC and PS256 are never accepted;
- header parameters beyond `alg`, `typ`, `kid` (`jku`, `jwk`, `x5u`, `crit`, `b64`, ...):
  tokex never writes them, so a token that has one was not made by tokex;
- anything but compact, strictly base64url-encoded JSON objects without duplicate keys.

Each introspection client sees only the audiences it serves (introspection_clients.py): a verified
token of any other audience is inactive for it (RFC 7662 §4: the server may limit what a
client learns, so a gateway of one API cannot read the tokens of another).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jwt.algorithms import get_default_algorithms

from tokex import base64url, identifiers
from tokex.clock import SuspendAwareClock
from tokex.shared_load import SharedLoad
from tokex.strict_json import MAX_TOKEN_JSON_DEPTH, StrictJsonError, loads_strict
from tokex.tokens.jws import ACCESS_TOKEN_TYP

# Our tokens are small (the signing input is at most 4096 bytes, docs/contract.md
# "The access token (RFC 9068 profile)"), so 8 KiB bounds the work any input can cause
# with room to spare.
MAX_TOKEN_CHARS = 8 * 1024
# Clock difference tolerated between the Lambda that issued a token and the one checking
# it, for `iat`/`nbf` only. `exp` gets no leeway: expired means expired (RFC 7519 §4.1.4).
CLOCK_SKEW_SECONDS = 5
# The only algorithms tokex signs with (identifiers.py); anything else is not ours.
ACCEPTED_ALGS = frozenset(identifiers.SIGNING_ALGS)
# Public keys are re-read at most this often; matches the JWKS `max-age`
# (docs/contract.md "Issuer").
KEY_CACHE_SECONDS = 300
# The exact header tokex writes (jws.py); any other member means another producer.
_HEADER_MEMBERS = frozenset({"alg", "typ", "kid"})
_ALGORITHMS = get_default_algorithms()


class Inactive(Exception):
    """The token is not active; `reason` is for the audit log, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RevocationCheck(Protocol):
    def revoked(self, *, jti: str, principal: str, issued_at: int) -> str | None:
        """Why the token is revoked (`jti`, `principal`), or None. May raise
        TemporarilyUnavailable: an unknown revocation state is never "active"."""
        ...


@dataclass
class IntrospectionAudit:
    """What the audit log line says about one introspection (never the token)."""

    reason: str | None = None
    kid: str | None = None
    subject: str | None = None
    audience: str | None = None
    jti: str | None = None


class PublishedKeys:
    """The public JWKs a token may be signed with, by `kid`, re-read every few minutes.

    `fetch` returns the same keys the publisher puts in the JWKS (adapters/kms.py reads them
    from KMS). A failed fetch raises (a 503 upstream); the calls of the 5 s after it get
    the same failure without fetching, and the first call after them fetches again
    (shared_load.py FAILED_LOAD_HOLD_SECONDS). It never turns into "no keys, everything
    inactive".
    """

    def __init__(
        self,
        fetch: Callable[[], Sequence[Mapping[str, Any]]],
        *,
        ttl_seconds: float = KEY_CACHE_SECONDS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._fetch = fetch
        # A frozen environment's sleep counts towards the copy's age.
        self._fetches = SharedLoad("kms", ttl_seconds, clock or SuspendAwareClock())
        self._keys: dict[str, tuple[str, Any]] = {}

    def get(self, kid: str) -> tuple[str, Any] | None:
        """(alg, verification key) of the published key `kid`, or None. A stale copy is
        fetched again first (one fetch for the requests that find it stale together, its
        outcome theirs; a failed fetch's failure, without another, for the hold after it:
        shared_load.py)."""
        self._fetches(self._fetch_keys)
        return self._keys.get(kid)

    def _fetch_keys(self) -> None:
        self._keys = _prepare_keys(self._fetch())


def _prepare_keys(jwks: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, Any]]:
    keys: dict[str, tuple[str, Any]] = {}
    for jwk in jwks:
        alg, kid = jwk.get("alg"), jwk.get("kid")
        # Only keys tokex can sign with; the key type must match the alg (from_jwk checks).
        if alg in ACCEPTED_ALGS and isinstance(kid, str) and kid and kid not in keys:
            keys[kid] = (alg, _ALGORITHMS[alg].from_jwk(dict(jwk)))
    return keys


class Introspector:
    def __init__(
        self,
        *,
        issuer: str,
        keys: PublishedKeys,
        revocations: RevocationCheck | None,
        ttl_cap_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuer = issuer
        self._keys = keys
        self._revocations = revocations
        self._ttl_cap = ttl_cap_seconds
        self._clock = clock

    def introspect(
        self, token: str, audit: IntrospectionAudit, *, audiences: Collection[str]
    ) -> dict[str, Any]:
        """The RFC 7662 §2.2 response for `token`, asked by a client serving `audiences`:
        its claims with `active: true`, or exactly `{"active": false}`. Raises only
        TemporarilyUnavailable (keys or revocations unreadable), never for anything about
        the token itself. `audiences` is required: no default may serve every audience."""
        if isinstance(audiences, str):  # `in` would match any substring of it
            raise TypeError("audiences is a collection of audiences, not one string")
        try:
            claims = self._verify(token, audit, frozenset(audiences))
        except Inactive as inactive:
            audit.reason = inactive.reason
            return {"active": False}
        # `active` and `token_type` are written last: a policy's static claims can never
        # make a response say something else about them.
        response: dict[str, Any] = {"active": True, **claims}
        response["active"] = True
        response["token_type"] = "Bearer"  # RFC 7662 §2.2, RFC 6750
        # RFC 7662 `username`: the principal itself, so that a gateway mapping consumers
        # by username (Kong `consumer_by: username`) maps tokex's subject, nothing else.
        response["username"] = claims.get("sub")
        return response

    def _verify(
        self, token: str, audit: IntrospectionAudit, audiences: Collection[str]
    ) -> dict[str, Any]:
        if not isinstance(token, str) or not token:
            raise Inactive("empty")
        if len(token) > MAX_TOKEN_CHARS:
            raise Inactive("too_large")
        parts = token.split(".")
        if len(parts) != 3:
            raise Inactive("not_compact_jws")
        header_b64, payload_b64, _ = parts
        header_bytes, payload_bytes, signature = (_b64url_decode(part) for part in parts)
        header = _json_object(header_bytes, "header")
        if set(header) != _HEADER_MEMBERS:
            raise Inactive("header_members")
        if header["typ"] != ACCESS_TOKEN_TYP:  # RFC 9068 §4: not an access token
            raise Inactive("typ")
        kid, header_alg = header["kid"], header["alg"]
        if not isinstance(kid, str) or not isinstance(header_alg, str):
            raise Inactive("header_types")
        audit.kid = kid[:100]
        published = self._keys.get(kid)
        if published is None:
            raise Inactive("unknown_kid")
        alg, key = published
        # The published key decides the algorithm; the header may only agree with it.
        if header_alg != alg:
            raise Inactive("alg_mismatch")
        # ASCII by now: every segment matched the base64url alphabet.
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        if not _ALGORITHMS[alg].verify(signing_input, key, signature):
            raise Inactive("bad_signature")

        claims = _json_object(payload_bytes, "payload")
        if claims.get("iss") != self._issuer:
            raise Inactive("issuer")
        subject, audience, jti = (_string(claims, name) for name in ("sub", "aud", "jti"))
        audit.subject, audit.audience, audit.jti = subject, audience, jti
        iat, nbf, exp = (_seconds(claims, name) for name in ("iat", "nbf", "exp"))
        now = self._clock()
        if now >= exp:
            raise Inactive("expired")
        if nbf > now + CLOCK_SKEW_SECONDS:
            raise Inactive("not_yet_valid")
        if iat > now + CLOCK_SKEW_SECONDS:
            raise Inactive("issued_in_future")
        # No token of ours outlives the deployment's cap; revocation records rely on it.
        if not iat <= nbf < exp or exp - iat > self._ttl_cap:
            raise Inactive("lifetime")
        # RFC 7662 §4: the client sees only the audiences it serves. Checked once the token
        # is verified (so the audit reason names a real token's audience), and before the
        # revocation read, which a token the client may not see need not cost.
        if audience not in audiences:
            raise Inactive("audience_not_served")
        if self._revocations is not None:
            revoked = self._revocations.revoked(jti=jti, principal=subject, issued_at=iat)
            if revoked is not None:
                raise Inactive(f"revoked_{revoked}")
        return claims


def _b64url_decode(segment: str) -> bytes:
    """A non-empty, strictly encoded segment (so one token has exactly one spelling)."""
    try:
        if segment:
            return base64url.decode(segment)
    except ValueError:
        pass
    raise Inactive("base64url")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    # RFC 7515 §5.2 / RFC 8725 §3.2: a repeated member must not mean "the last one wins".
    try:
        value = loads_strict(data.decode("utf-8"), max_depth=MAX_TOKEN_JSON_DEPTH)
    except (UnicodeDecodeError, StrictJsonError):
        raise Inactive(f"{what}_json") from None
    if not isinstance(value, dict):
        raise Inactive(f"{what}_json")
    return value


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise Inactive(f"claim_{name}")
    return value


def _seconds(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    # tokex writes integer seconds (docs/contract.md "The access token (RFC 9068 profile)");
    # bool is an int in Python, refuse it.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Inactive(f"claim_{name}")
    return value
