"""The token exchange use case: evidence → identity → policy → claims → signature.

Pure orchestration: every rule lives in the module named for it, every AWS call in its
adapter. `TokenExchange.exchange` reads top to bottom as the order of checks; cheap
offline checks come before the STS round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from tokex.evidence.identity import CallerIdentity, InstanceIdentity
from tokex.evidence.instance_identity import (
    CertificateStore,
    bind_instance_to_caller,
    verify_instance_identity,
)
from tokex.evidence.sigv4_request import StsRequest, verify_sts_request
from tokex.evidence.sts_endpoints import StsEndpoints
from tokex.policy.evaluate import TagLookup, evaluate
from tokex.policy.model import Policy
from tokex.settings import Settings
from tokex.token_request import TokenRequest
from tokex.tokens.claims import build_claims
from tokex.tokens.jws import encode_jwt
from tokex.tokens.signer import Signer


class CallerIdentityVerifier(Protocol):
    def get_caller_identity(self, request: StsRequest) -> CallerIdentity: ...


class PolicySource(Protocol):
    def policies(self) -> list[Policy]: ...


class RateLimiter(Protocol):
    def check(self, principal: str) -> None:
        """Raise RateLimited when `principal` is over its budget."""
        ...


class ReplayGuard(Protocol):
    def use_once(self, request: StsRequest) -> None:
        """Raise InvalidGrant if this signed request was accepted before."""
        ...


@dataclass
class ExchangeAudit:
    """What the audit log line says about one exchange (filled in as checks pass)."""

    audience: str | None = None
    principal: str | None = None
    account: str | None = None
    policy: str | None = None
    jti: str | None = None
    instance: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scopes: tuple[str, ...]

    def response(self) -> dict[str, object]:
        """RFC 8693 §2.2.1 success body."""
        body: dict[str, object] = {
            "access_token": self.access_token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if self.scopes:
            body["scope"] = " ".join(self.scopes)
        return body


class TokenExchange:
    def __init__(
        self,
        *,
        settings: Settings,
        sts: CallerIdentityVerifier,
        policies: PolicySource,
        signer: Callable[[], Signer],
        instance_certificates: Callable[[], CertificateStore],
        replay_guard: ReplayGuard | None = None,
        instance_tags: TagLookup | None = None,
        rate_limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._endpoints = StsEndpoints.from_settings(settings)
        self._sts = sts
        self._policies = policies
        self._signer = signer
        self._certificates = instance_certificates
        self._replay_guard = replay_guard
        self._instance_tags = instance_tags
        self._rate_limiter = rate_limiter
        self._clock = clock

    def exchange(self, request: TokenRequest, audit: ExchangeAudit) -> IssuedToken:
        settings = self._settings
        audit.audience = request.audience
        now = self._clock()
        sts_request = verify_sts_request(
            request.signed_request,
            issuer=settings.issuer,
            endpoints=self._endpoints,
            now=datetime.fromtimestamp(now, UTC),
            audience=request.audience,
        )
        instance = self._verify_instance(request)
        caller = self._sts.get_caller_identity(sts_request)
        audit.principal, audit.account = caller.principal_arn, caller.account
        if self._rate_limiter is not None:
            self._rate_limiter.check(caller.principal_arn)
        if instance is not None:
            instance = bind_instance_to_caller(instance, caller)
            audit.instance = instance.instance_id
        decision = evaluate(
            self._policies.policies(),
            caller,
            request.audience,
            request.scopes,
            instance,
            default_ttl=settings.default_ttl_seconds,
            ttl_cap=settings.ttl_cap_seconds,
            tag_lookup=self._instance_tags,
        )
        audit.policy = decision.policy.id
        claims = build_claims(
            issuer=settings.issuer,
            audience=request.audience,
            caller=caller,
            policy_id=decision.policy.id,
            scopes=decision.scopes,
            ttl_seconds=decision.ttl_seconds,
            extra_claims=decision.claims,
            instance=instance,
            now=int(now),
        )
        signer = self._signer()
        # Kong's open-source jwt plugin never checks `aud`; it finds its credential by one
        # claim. Keyed by audience *and* key, one consumer per audience can hold every
        # published key, and the acl plugin refuses other audiences (docs/kong.md).
        claims["aud_kid"] = f"{request.audience}.{signer.kid}"
        token = encode_jwt(claims, signer)
        # Single use is recorded last, so a refusal or an outage does not burn a signed
        # request the caller may retry. Of two concurrent uses, one records first; the
        # other's token is dropped unseen.
        if self._replay_guard is not None:
            self._replay_guard.use_once(sts_request)
        audit.jti = claims["jti"]
        return IssuedToken(token, decision.ttl_seconds, decision.scopes)

    def _verify_instance(self, request: TokenRequest) -> InstanceIdentity | None:
        if request.instance_evidence is None:
            return None
        return verify_instance_identity(request.instance_evidence, self._certificates())
