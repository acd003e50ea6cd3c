"""The token exchange use case: evidence → identity → policy → claims → signature.

Pure orchestration: every rule lives in the module named for it, every AWS call in its
adapter. `TokenExchange.exchange` reads top to bottom as the order of checks
(docs/contract.md "Order of checks, and what each refusal costs"): cheap offline checks
come before the STS round trip; right after STS one write uses the signed request up and
charges the caller's budget, so a replay is refused before it can spend the budget or
reach KMS; then the policy decision and the one KMS Sign.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from tokex.errors import RateLimited, TemporarilyUnavailable, TokexError
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


class AdmissionStore(Protocol):
    """Single use and the rate limit, decided by one write (adapters/state_table/admission.py)."""

    def admit(self, request: StsRequest, principal: str) -> Any:
        """Use the signed request up and charge `principal`'s budget. Raises
        InvalidGrant (a replay), RateLimited (over budget; the request is used up) or
        TemporarilyUnavailable. Returns what `release` needs."""
        ...

    def release(self, admission: Any) -> bool:
        """Undo `admit` (the compensating write); False if it could not. Never raises."""
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
        admission: AdmissionStore | None = None,
        instance_tags: TagLookup | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._endpoints = StsEndpoints.from_settings(settings)
        self._sts = sts
        self._policies = policies
        self._signer = signer
        self._certificates = instance_certificates
        self._admission = admission
        self._instance_tags = instance_tags
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
        if self._admission is None:
            return self._issue(request, caller, instance, now, audit)
        # One write uses the signed request up and charges the caller's budget: a replay
        # stops here, before it can spend the budget or reach the policies and KMS.
        admission = self._admission.admit(sts_request, caller.principal_arn)
        try:
            return self._issue(request, caller, instance, now, audit)
        except Exception as exc:
            # Only a failure of tokex's own upstreams gives the signed request back (and
            # the budget unit): every refusal keeps it used up.
            if _leaves_request_usable(exc):
                self._admission.release(admission)
            raise

    def _issue(
        self,
        request: TokenRequest,
        caller: CallerIdentity,
        instance: InstanceIdentity | None,
        now: float,
        audit: ExchangeAudit,
    ) -> IssuedToken:
        settings = self._settings
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
        audit.jti = claims["jti"]
        return IssuedToken(token, decision.ttl_seconds, decision.scopes)

    def _verify_instance(self, request: TokenRequest) -> InstanceIdentity | None:
        if request.instance_evidence is None:
            return None
        return verify_instance_identity(request.instance_evidence, self._certificates())


def _leaves_request_usable(exc: Exception) -> bool:
    """503s (KMS, the policy table, the deadline, a bug) but not 429 nor any refusal."""
    if isinstance(exc, RateLimited):
        return False
    return isinstance(exc, TemporarilyUnavailable) or not isinstance(exc, TokexError)
