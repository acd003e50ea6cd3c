"""The token exchange use case: evidence → identity → policy → claims → signature.

Pure orchestration: every rule lives in the module named for it, every AWS call in its
adapter. `TokenExchange.exchange` reads top to bottom as the order of checks
(docs/contract.md "Order of checks, and what each refusal costs"): cheap offline checks
come before the STS round trip (SigV4 evidence) or instead of it (JWT evidence, verified
offline against its issuer's cached keys); then the policy decision (in memory when
warm); then one write that uses the evidence up and charges the caller's budget,
overlapping the one KMS Sign, so a warm exchange waits for two round trips with SigV4
evidence (STS, then the slower of the write and Sign) and one with a JWT. The token
leaves only once the write succeeded: a replay or a 429 costs at most one Sign, whose
signature is discarded, and never a budget unit. A new environment's first exchange
loads its signing key and policies while STS answers (`_load_ahead`): a cold start waits
for the same round trips.
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from tokex.errors import (
    InvalidGrant,
    InvalidRequest,
    RateLimited,
    TemporarilyUnavailable,
    TokexError,
)
from tokex.evidence.identity import AWS_OIF, SIGV4, CallerIdentity, InstanceIdentity
from tokex.evidence.replay import RecentlyUsed, UsedEvidence, used_signature
from tokex.evidence.sigv4_request import StsRequest, verify_sts_request
from tokex.evidence.sts_endpoints import StsEndpoints
from tokex.policy.evaluate import Decision, TagLookup, evaluate
from tokex.policy.model import Policy
from tokex.settings import Settings
from tokex.token_request import TokenRequest
from tokex.tokens.claims import build_claims
from tokex.tokens.jws import encode_jwt
from tokex.tokens.signer import Signer

if TYPE_CHECKING:
    # Loaded when such evidence first arrives (below): a cold start with a signed request
    # alone parses neither instance documents nor JWTs (issue 11).
    from tokex.evidence.instance_identity import CertificateStore
    from tokex.evidence.jwt_evidence import IssuerKeys

log = logging.getLogger(__name__)


class CallerIdentityVerifier(Protocol):
    def get_caller_identity(self, request: StsRequest) -> CallerIdentity: ...


class PolicySource(Protocol):
    def policies(self) -> list[Policy]: ...

    @property
    def invalid_ids(self) -> tuple[str, ...]:
        """Ids of the stored policies the last load could not read (policy/cache.py)."""
        ...


class AdmissionStore(Protocol):
    """Single use and the rate limit, decided by one write (adapters/state_table/admission.py)."""

    def admit(self, used: UsedEvidence | None, principal: str) -> Any:
        """Use the evidence up (None: evidence that is not single use) and charge
        `principal`'s budget. Raises InvalidGrant (a replay), RateLimited (over budget;
        the evidence is used up) or TemporarilyUnavailable. Returns what `release`
        needs."""
        ...

    def release(self, admission: Any) -> bool:
        """Undo `admit` (the compensating write); False if it could not. Never raises."""
        ...


@dataclass
class ExchangeAudit:
    """What the audit log line says about one exchange (filled in as checks pass)."""

    audience: str | None = None
    evidence: str | None = None
    principal: str | None = None
    account: str | None = None
    # The caller's role session name (SigV4 assumed roles): `principal` is the path-less
    # role, so this says which session of it asked (an instance profile's: its instance).
    session_name: str | None = None
    policy: str | None = None
    jti: str | None = None
    # Instance evidence's instance, account and Region, once its AWS signature verified
    # and before it is bound to the caller: a refused binding's line says whose document
    # was presented. Only fields verify_instance_identity matched against strict patterns.
    instance: str | None = None
    instance_account: str | None = None
    instance_region: str | None = None
    # A signed request's: the STS endpoint it was forwarded to (its Region), and the
    # access key id that signed it (its Credential scope: not secret, CloudTrail records
    # it), so that STS throttling can be traced to a Region and to the account asking.
    sts_host: str | None = None
    access_key_id: str | None = None
    # The stored policies that no longer validate, as the policies decided from (their
    # load's `invalid_ids`): each one skipped, or standing in as a deny, until fixed.
    invalid_policies: tuple[str, ...] = ()


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
        issuer_keys: Callable[[], IssuerKeys] | None = None,
        background: Executor | None = None,
        load_ahead: bool = False,
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
        # The trusted JWT issuers' keys (settings.trusted_issuers); None: SigV4 only.
        self._issuer_keys = issuer_keys
        # Runs the admission write while KMS signs, and a cold environment's loads ahead
        # (wiring.py: one per process).
        self._background = background
        # `_load_ahead` still to do (wiring.py turns it on; it needs the executor).
        self._load_ahead_pending = load_ahead and background is not None
        self._clock = clock
        # Replays this environment has seen used up: refused before they cost anything.
        self._used = RecentlyUsed()

    def exchange(self, request: TokenRequest, audit: ExchangeAudit) -> IssuedToken:
        audit.audience = request.audience
        now = self._clock()
        instance: InstanceIdentity | None = None
        used: UsedEvidence | None
        if request.subject_jwt is None:
            caller, used, instance = self._sigv4_caller(request, now, audit)
        else:
            caller, used = self._jwt_caller(request.subject_jwt, now, audit)
        audit.principal, audit.account = caller.principal_arn, caller.account
        audit.session_name = caller.session_name
        try:
            decision, claims = self._decide(request, caller, instance, now, audit)
        except Exception as exc:
            # A refusal past the evidence uses it up all the same: the write alone, never
            # a Sign (a replay or 429 it reports wins). A 503 here wrote nothing.
            if self._admission is not None and not _leaves_request_usable(exc):
                self._admit_alone(used, caller.principal_arn)
            raise
        if self._admission is None:
            token = self._sign(claims, request.audience)
        else:
            token = self._sign_while_admitting(
                self._admission, used, caller.principal_arn, claims, request.audience
            )
        audit.jti = claims["jti"]
        # RFC 6749 §5.1 counts `expires_in` from the answer: the token is dated to the
        # second before the request began, and STS, the write and Sign took time since, so
        # a client adding `expires_in` to when it received the answer stays within `exp`.
        expires_in = max(0, claims["exp"] - math.ceil(self._clock()))
        return IssuedToken(token, expires_in, decision.scopes)

    def _sigv4_caller(
        self, request: TokenRequest, now: float, audit: ExchangeAudit
    ) -> tuple[CallerIdentity, UsedEvidence | None, InstanceIdentity | None]:
        """SigV4 evidence: the request's offline checks, then the one STS round trip."""
        audit.evidence = SIGV4
        assert request.signed_request is not None
        sts_request = verify_sts_request(
            request.signed_request,
            issuer=self._settings.issuer,
            endpoints=self._endpoints,
            now=datetime.fromtimestamp(now, UTC),
            audience=request.audience,
            require_audience=self._settings.require_signed_audience,
        )
        audit.sts_host, audit.access_key_id = sts_request.host, sts_request.access_key_id
        # Single use off (TOKEX_SINGLE_USE=false): nothing is used up, here or in the table.
        used = used_signature(sts_request) if self._settings.single_use else None
        if used is not None and self._admission is not None and used in self._used:
            raise used.replay_refusal()
        instance = self._verify_instance(request)
        if instance is not None:
            audit.instance = instance.instance_id
            audit.instance_account, audit.instance_region = instance.account, instance.region
        self._load_ahead()
        return self._sts.get_caller_identity(sts_request), used, instance

    def _jwt_caller(
        self, token: str, now: float, audit: ExchangeAudit
    ) -> tuple[CallerIdentity, UsedEvidence | None]:
        """JWT evidence, verified offline against its trusted issuer's keys (fetched once,
        then cached): no STS call. An AWS OIF token is single use by its `jti`; an EKS
        token is not (a pod presents the same one until it is rotated)."""
        settings = self._settings
        if self._issuer_keys is None or not settings.trusted_issuers:
            raise InvalidRequest(
                "this deployment trusts no JWT issuers; use a signed request",
                reason="jwt_not_configured",
            )
        self._load_ahead()  # while the issuer's keys are fetched (a cold start's)
        from tokex.evidence.jwt_evidence import CLOCK_SKEW_SECONDS, verify_jwt_evidence

        verified = verify_jwt_evidence(
            token,
            issuers=settings.trusted_issuers,
            keys=self._issuer_keys(),
            audience=settings.issuer,
            now=now,
        )
        audit.evidence = verified.caller.evidence
        self._check_region(verified.caller)
        digest = verified.single_use_digest()
        if digest is None or not settings.single_use:
            return verified.caller, None
        # No copy of the token passes verification after exp + the allowed skew.
        last_accepted = verified.expires_at + CLOCK_SKEW_SECONDS
        used = UsedEvidence.accepted_until(digest, last_accepted, what="token")
        if self._admission is not None and used in self._used:
            raise used.replay_refusal()
        return verified.caller, used

    def _check_region(self, caller: CallerIdentity) -> None:
        """A Regional exchange takes an AWS OIF token only from its own Region (the
        token's `source_region`), as it takes signed requests only for its own Region's
        STS: a token used up here is never accepted by another Region's exchange before
        the state table's replication reaches it (docs/security.md "Regional
        exchanges"). EKS tokens are multi-use anyway: rate-limited per Region."""
        serving = self._settings.serving_region
        if not serving or caller.evidence != AWS_OIF:
            return
        source = caller.workload.source_region if caller.workload else None
        if source != serving:
            raise InvalidGrant(
                f"this exchange serves Region {serving}; exchange the token in the Region"
                " where it was issued",
                reason="oif_region",
            )

    def _sign_while_admitting(
        self,
        admission_store: AdmissionStore,
        used: UsedEvidence | None,
        principal: str,
        claims: dict[str, Any],
        audience: str,
    ) -> str:
        """One write uses the evidence up and charges the caller's budget while KMS signs
        (one round trip after STS's, not two). The token is returned only once the write
        succeeded: a signature made while a refused write was in flight is discarded,
        never returned, logged or stored."""
        admitting = self._start(admission_store.admit, used, principal)
        try:
            token = self._sign(claims, audience)
        except Exception as exc:
            try:
                admission = self._admitted(admitting.result, used)  # its refusal wins
            except TokexError:
                if not isinstance(exc, TokexError):
                    # A bug of signing: the caller gets the write's refusal, and the bug
                    # would be nothing but that refusal's context, never logged.
                    log.error("signing failed unexpectedly", exc_info=exc)
                raise
            # Only a failure of tokex's own upstreams gives the evidence back (and the
            # budget unit), with one compensating write; an unknown write (timeout,
            # raised above) is never released.
            released = _leaves_request_usable(exc) and admission_store.release(admission)
            if released and used is not None:
                self._used.forget(used)
            raise
        self._admitted(admitting.result, used)  # a replay, 429 or 503 discards it
        return token

    def _admit_alone(self, used: UsedEvidence | None, principal: str) -> None:
        admission = self._admission
        assert admission is not None
        self._admitted(lambda: admission.admit(used, principal), used)

    def _admitted(self, admitting: Callable[[], Any], used: UsedEvidence | None) -> Any:
        """The write's outcome; remembers the evidence when the table says it is used up
        (admitted, a replay, or over budget), so this environment refuses its replays
        before they cost anything."""
        try:
            admission = admitting()
        except (InvalidGrant, RateLimited):
            if used is not None:
                self._used.add(used)
            raise
        if used is not None:
            self._used.add(used)
        return admission

    def _decide(
        self,
        request: TokenRequest,
        caller: CallerIdentity,
        instance: InstanceIdentity | None,
        now: float,
        audit: ExchangeAudit,
    ) -> tuple[Decision, dict[str, Any]]:
        """The policy decision and the token's claims: in memory on a warm function."""
        settings = self._settings
        if instance is not None:
            from tokex.evidence.instance_identity import bind_instance_to_caller

            instance = bind_instance_to_caller(instance, caller)  # audited as it was verified
        try:
            policies = self._policies.policies()
        finally:
            # Also when the load fails: an invalid item that may be a deny blocks every
            # exchange (503 misconfigured), and the audit line names the invalid ones.
            audit.invalid_policies = self._policies.invalid_ids
        decision = evaluate(
            policies,
            caller,
            request.audience,
            request.scopes,
            instance,
            default_ttl=settings.default_ttl_seconds,
            ttl_cap=settings.ttl_cap_seconds,
            tag_lookup=self._instance_tags,
            now=now,
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
        return decision, claims

    def _sign(self, claims: dict[str, Any], audience: str) -> str:
        """The one KMS `Sign` (and, on first use only, `GetPublicKey` for the kid)."""
        signer = self._signer()
        # Kong's open-source jwt plugin never checks `aud`; it finds its credential by one
        # claim. Keyed by audience *and* key, one consumer per audience can hold every
        # published key, and the acl plugin refuses other audiences (docs/kong.md).
        # Ahead of the policy's claims, as tokex's own are (tokens/claims.py build_claims).
        signed = {"aud_kid": f"{audience}.{signer.kid}", **claims}
        return encode_jwt(signed, signer)

    def _load_ahead(self) -> None:
        """Once per environment, as its first exchange reaches the network: the signing
        key (KMS GetPublicKey, for the kid) and the policies (a DynamoDB read) load in the
        background while STS answers (or the JWT issuer's keys arrive), where they would
        otherwise be two more round trips after it. Each loads once whoever asks first
        (their own locks: the exchange then waits for that load); a failure here is
        dropped: the exchange loads again what it asks for after it, and the signing key
        while it is in flight (the policies' load it shares, failure and all, in flight
        or failed within FAILED_LOAD_HOLD_SECONDS: shared_load.py). Once per
        environment, so requests that get no further than STS cannot make tokex call
        KMS or DynamoDB again and again."""
        if not self._load_ahead_pending:
            return
        self._load_ahead_pending = False
        self._start(self._signer)
        self._start(self._policies.policies)

    def _start(self, work: Callable[..., Any], *args: Any) -> Future[Any]:
        """`work` on the background executor, under this request's deadline (a context
        variable: copied into the worker); without an executor, run now."""
        if self._background is None:
            done: Future[Any] = Future()
            try:
                done.set_result(work(*args))
            except Exception as exc:
                done.set_exception(exc)
            return done
        return self._background.submit(contextvars.copy_context().run, work, *args)

    def _verify_instance(self, request: TokenRequest) -> InstanceIdentity | None:
        if request.instance_evidence is None:
            return None
        from tokex.evidence.instance_identity import verify_instance_identity

        return verify_instance_identity(request.instance_evidence, self._certificates())


def _leaves_request_usable(exc: Exception) -> bool:
    """503s (KMS, the policy table, the deadline, a bug) but not 429 nor any refusal."""
    if isinstance(exc, RateLimited):
        return False
    return isinstance(exc, TemporarilyUnavailable) or not isinstance(exc, TokexError)
