"""TokenExchange's order of checks (docs/contract.md "Order of checks, and what each
refusal costs"), driven with fakes of its interfaces: no AWS, no emulator.

Every fake writes to one log, so each test asserts the whole sequence of upstream calls:
offline checks before STS, the admission write right after STS, a replay that never
reaches the policies or the signer, a 503 after admission that releases it, a refusal
after admission that does not.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tokex.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
    RateLimited,
    TemporarilyUnavailable,
    TokexError,
)
from tokex.evidence.identity import CallerIdentity
from tokex.evidence.instance_identity import CertificateStore
from tokex.evidence.replay import replay_refusal
from tokex.evidence.sigv4_request import STS_BODY, StsRequest
from tokex.exchange import ExchangeAudit, IssuedToken, TokenExchange
from tokex.policy.model import Policy
from tokex.settings import Settings
from tokex.token_request import TokenRequest

ISSUER = "https://auth.example.com"
HOST = "sts.us-east-1.amazonaws.com"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/app"
AUDIENCE = "orders-api"
FORM = "application/x-www-form-urlencoded; charset=utf-8"


def signed_request(issuer: str = ISSUER) -> dict[str, Any]:
    """A GetCallerIdentity request signed now, as a workload signs it."""
    headers = {"Content-Type": FORM, "X-Tokex-Issuer": issuer}
    request = AWSRequest(method="POST", url=f"https://{HOST}/", data=STS_BODY, headers=headers)
    credentials = Credentials("ASIAIOSFODNN7EXAMPLE", "secret", "session-token")
    SigV4Auth(credentials, "sts", "us-east-1").add_auth(request)
    return {
        "method": "POST",
        "url": f"https://{HOST}/",
        "headers": dict(request.headers.items()),
        "body": STS_BODY,
    }


def token_request(**changes: Any) -> TokenRequest:
    fields: dict[str, Any] = {
        "signed_request": signed_request(),
        "audience": AUDIENCE,
        "scopes": None,
        "instance_evidence": None,
    }
    fields.update(changes)
    return TokenRequest(**fields)


CALLER = CallerIdentity(
    principal_arn=ROLE,
    arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/app/session",
    account=ACCOUNT,
    user_id="AROAEXAMPLEEXAMPLE:session",
    principal_id="AROAEXAMPLEEXAMPLE",
    partition="aws",
    session_name="session",
)
ALLOW = Policy.from_document(
    {
        "id": "orders",
        "effect": "allow",
        "principals": [ROLE],
        "audiences": [AUDIENCE],
        "scopes": ["orders:read"],
    }
)


class World:
    """The fakes of every interface TokenExchange uses, logging to one list."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.sts_error: Exception | None = None
        self.admit_error: Exception | None = None
        self.policies_error: Exception | None = None
        self.sign_error: Exception | None = None
        self.policies_list = [ALLOW]
        self.admitted: list[tuple[StsRequest, str]] = []
        self.released: list[object] = []

    # CallerIdentityVerifier
    def get_caller_identity(self, request: StsRequest) -> CallerIdentity:
        self.log.append("sts")
        if self.sts_error is not None:
            raise self.sts_error
        return CALLER

    # PolicySource
    def policies(self) -> list[Policy]:
        self.log.append("policies")
        if self.policies_error is not None:
            raise self.policies_error
        return list(self.policies_list)

    # AdmissionStore
    def admit(self, request: StsRequest, principal: str) -> object:
        self.log.append("admit")
        if self.admit_error is not None:
            raise self.admit_error
        self.admitted.append((request, principal))
        return ("admission", principal)

    def release(self, admission: object) -> bool:
        self.log.append("release")
        self.released.append(admission)
        return True

    # Signer (and the factory TokenExchange calls on first use)
    def signer(self) -> World:
        self.log.append("signer")
        return self

    alg = "ES256"
    kid = "kid-1"

    def public_jwk(self) -> dict[str, Any]:
        return {"kty": "EC", "kid": self.kid, "alg": self.alg}

    def sign(self, signing_input: bytes) -> bytes:
        self.log.append("sign")
        if self.sign_error is not None:
            raise self.sign_error
        return b"\x01" * 64

    def certificates(self) -> CertificateStore:
        self.log.append("certificates")
        return CertificateStore.default()

    def exchange(self, *, admission: bool = True, **changes: Any) -> IssuedToken:
        exchange = TokenExchange(
            settings=Settings(issuer=ISSUER),
            sts=self,
            policies=self,
            signer=self.signer,
            instance_certificates=self.certificates,
            admission=self if admission else None,
        )
        return exchange.exchange(token_request(**changes), ExchangeAudit())


@pytest.fixture
def world() -> World:
    return World()


def refused(world: World, error: type[TokexError], **changes: Any) -> TokexError:
    with pytest.raises(error) as caught:
        world.exchange(**changes)
    return caught.value


def test_an_exchange_calls_sts_then_admits_then_decides_then_signs(world: World) -> None:
    issued = world.exchange()
    assert world.log == ["sts", "admit", "policies", "signer", "sign"]
    assert world.admitted[0][1] == ROLE  # charged to the principal STS named
    assert issued.scopes == ("orders:read",) and not world.released


def test_without_an_admission_store_the_policies_follow_sts(world: World) -> None:
    world.exchange(admission=False)
    assert world.log == ["sts", "policies", "signer", "sign"]


def test_a_bad_signed_request_is_refused_before_sts(world: World) -> None:
    error = refused(world, InvalidGrant, signed_request=signed_request("https://other.example"))
    assert (error.status, error.error) == (400, "invalid_grant")
    assert error.reason == "X-Tokex-Issuer does not name this issuer"
    assert world.log == []  # nothing upstream was called


def test_bad_instance_evidence_is_refused_before_sts(world: World) -> None:
    error = refused(world, InvalidRequest, instance_evidence={"document": "x"})
    assert (error.status, error.error) == (400, "invalid_request")
    assert error.reason == "aws_instance_identity needs exactly one of rsa2048, pkcs7, signature"
    assert world.log == ["certificates"]  # verified offline, before STS


def test_an_sts_refusal_costs_no_admission(world: World) -> None:
    world.sts_error = InvalidGrant("STS refused the signature", reason="sts_refused:403")
    error = refused(world, InvalidGrant)
    assert error.reason == "sts_refused:403"
    assert world.log == ["sts"]


def test_a_replay_never_reaches_the_policies_or_the_signer(world: World) -> None:
    world.admit_error = replay_refusal()
    error = refused(world, InvalidGrant)
    assert (error.status, error.error, error.reason) == (400, "invalid_grant", "replay")
    assert world.log == ["sts", "admit"]


def test_over_the_budget_never_reaches_the_policies_and_releases_nothing(world: World) -> None:
    world.admit_error = RateLimited("too many", reason="rate_limited", retry_after=5)
    error = refused(world, RateLimited)
    assert (error.status, error.reason) == (429, "rate_limited")
    assert world.log == ["sts", "admit"]


@pytest.mark.parametrize(
    ("failing", "expected_log"),
    [
        ("policies_error", ["sts", "admit", "policies", "release"]),
        ("sign_error", ["sts", "admit", "policies", "signer", "sign", "release"]),
    ],
)
def test_a_503_after_admission_releases_it(
    world: World, failing: str, expected_log: list[str]
) -> None:
    setattr(world, failing, TemporarilyUnavailable("down", reason="kms Sign: Throttling"))
    error = refused(world, TemporarilyUnavailable)
    assert (error.status, error.reason) == (503, "kms Sign: Throttling")
    assert world.log == expected_log
    assert world.released == [("admission", ROLE)]  # what admit returned


def test_a_bug_after_admission_releases_it(world: World) -> None:
    world.sign_error = RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        world.exchange()
    assert world.log[-1] == "release"


def test_a_refusal_after_admission_keeps_the_request_used(world: World) -> None:
    error = refused(world, InvalidTarget, audience="billing-api")  # no policy for it
    assert (error.status, error.error) == (400, "invalid_target")
    assert error.reason == "policy orders does not cover the audience"
    assert world.log == ["sts", "admit", "policies"]
    assert not world.released
