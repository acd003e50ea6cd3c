"""Claims of an issued access token (docs/contract.md "The access token (RFC 9068 profile)")."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from tokex.errors import InvalidGrant
from tokex.evidence.identity import CallerIdentity, InstanceIdentity
from tokex.tokens.claims import RESERVED_CLAIMS, build_claims

NOW = 1_800_000_000
ROLE_CALLER = CallerIdentity(
    principal_arn="arn:aws:iam::123456789012:role/team/demo-workload",
    arn="arn:aws:sts::123456789012:assumed-role/demo-workload/i-0abc1234def567890",
    account="123456789012",
    user_id="AROAEXAMPLEROLEID:i-0abc1234def567890",
    principal_id="AROAEXAMPLEROLEID",
    partition="aws",
    session_name="i-0abc1234def567890",
)
USER_CALLER = CallerIdentity(
    principal_arn="arn:aws:iam::123456789012:user/alice",
    arn="arn:aws:iam::123456789012:user/alice",
    account="123456789012",
    user_id="AIDAEXAMPLEUSERID",
    principal_id="AIDAEXAMPLEUSERID",
    partition="aws",
)
INSTANCE = InstanceIdentity(
    instance_id="i-0abc1234def567890",
    account="123456789012",
    region="us-east-1",
    availability_zone="us-east-1a",
    image_id="ami-0123456789abcdef0",
    instance_type="t3.micro",
    variant="rsa2048",
    certificate="rsa2048/us-east-1",
    bound=True,
)


def claims(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "issuer": "https://auth.example.com",
        "audience": "demo-api",
        "caller": ROLE_CALLER,
        "policy_id": "demo",
        "scopes": ("demo:read", "demo:write"),
        "ttl_seconds": 900,
        "extra_claims": {},
        "instance": None,
        "now": NOW,
    }
    return build_claims(**{**arguments, **overrides})


def test_claims_for_an_assumed_role() -> None:
    assert claims(jti="fixed") == {
        "iss": "https://auth.example.com",
        "sub": "arn:aws:iam::123456789012:role/team/demo-workload",
        "client_id": "arn:aws:iam::123456789012:role/team/demo-workload",
        "aud": "demo-api",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 900,
        "jti": "fixed",
        "policy": "demo",
        "scope": "demo:read demo:write",
        "aws": {
            "account": "123456789012",
            "evidence": "sigv4",
            "arn": "arn:aws:sts::123456789012:assumed-role/demo-workload/i-0abc1234def567890",
            "principal_id": "AROAEXAMPLEROLEID:i-0abc1234def567890",
            "session_name": "i-0abc1234def567890",
        },
    }


def test_user_has_no_session_name() -> None:
    issued = claims(caller=USER_CALLER)
    assert issued["sub"] == issued["client_id"] == USER_CALLER.principal_arn
    assert issued["aws"] == {
        "account": "123456789012",
        "evidence": "sigv4",
        "arn": "arn:aws:iam::123456789012:user/alice",
        "principal_id": "AIDAEXAMPLEUSERID",
    }


@pytest.mark.parametrize("ttl", [60, 900, 3600])
def test_times(ttl: int) -> None:
    issued = claims(ttl_seconds=ttl)
    assert issued["nbf"] == issued["iat"] == NOW
    assert issued["exp"] - issued["iat"] == ttl
    assert all(type(issued[name]) is int for name in ("iat", "nbf", "exp"))


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        claims(ttl_seconds=0)


def test_scope_only_when_granted() -> None:
    assert "scope" not in claims(scopes=())
    assert claims(scopes=("demo:read",))["scope"] == "demo:read"


def test_jti_is_random_and_unique() -> None:
    jtis = {claims()["jti"] for _ in range(1000)}
    assert len(jtis) == 1000
    for jti in list(jtis)[:10]:
        assert len(base64.urlsafe_b64decode(jti + "=" * (-len(jti) % 4))) * 8 >= 128


def test_instance_claims_only_with_instance_evidence() -> None:
    assert "instance" not in claims()["aws"]
    assert claims(instance=INSTANCE)["aws"]["instance"] == {
        "id": "i-0abc1234def567890",
        "account": "123456789012",
        "region": "us-east-1",
        "availability_zone": "us-east-1a",
        "image_id": "ami-0123456789abcdef0",
        "instance_type": "t3.micro",
    }


def test_unbound_instance_evidence_is_refused() -> None:
    with pytest.raises(InvalidGrant):
        claims(instance=dataclasses.replace(INSTANCE, bound=False))


def test_extra_claims_are_added() -> None:
    issued = claims(extra_claims={"team": "payments", "tier": 2, "tags": ["a", "b"]})
    assert (issued["team"], issued["tier"], issued["tags"]) == ("payments", 2, ["a", "b"])


def test_reserved_claims_can_never_be_overridden() -> None:
    hostile = {name: "evil" for name in RESERVED_CLAIMS}
    issued = claims(extra_claims={**hostile, "team": "payments"}, scopes=())
    honest = claims(scopes=(), jti=issued["jti"])
    assert issued == {**honest, "team": "payments"}
    assert not any(value == "evil" for value in issued.values())


# A policy stored before these names were reserved (or written by hand) still has them:
# each would stand in for a claim tokex sets at some reader (mod_auth_openidc reads
# `aws.account` as a top-level key, a case-insensitive reader `SUB` as `sub`, Spring
# `scp` in place of an absent `scope`, .NET `role` as `roles`).
STANDING_IN = {
    "aws.account": "999999999999",
    "aws.evidence": "eks",
    "aws.instance.id": "i-0123456789abcdef0",
    "AWS": {"account": "999999999999"},
    "SCOPE": "demo:admin",
    "Scope:demo": "admin",
    "Sub": "arn:aws:iam::999999999999:role/admin",
    "ISS": "https://evil.example.com",
    "Client_ID": "admin",
    "scp": "demo:write",
    "role": "admin",
}


def test_claims_standing_in_for_reserved_ones_are_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="tokex.tokens.claims"):
        issued = claims(extra_claims={**STANDING_IN, "team": "payments"}, scopes=())
    honest = claims(scopes=(), jti=issued["jti"])
    assert issued == {**honest, "team": "payments"}
    assert issued["aws"]["account"] == "123456789012" and "aws.account" not in issued
    assert not {name.casefold() for name in issued} & {"scp", "role"}
    [warning] = [r for r in caplog.records if r.name == "tokex.tokens.claims"]
    assert warning.levelname == "WARNING" and "policy demo" in warning.getMessage()
    assert "'aws.account'" in warning.getMessage() and "'team'" not in warning.getMessage()


def test_a_policy_s_left_out_claims_are_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="tokex.tokens.claims"):
        for _ in range(3):
            claims(policy_id="warned-once", extra_claims={"aws.region": "x"})
    assert len([r for r in caplog.records if "warned-once" in r.getMessage()]) == 1


def test_tokex_s_claims_come_first_then_the_policy_s() -> None:
    """A reader that takes the first of two names it cannot tell apart finds tokex's."""
    issued = claims(extra_claims={"team": "payments", "tier": 2}, jti="fixed")
    assert list(issued) == [
        "iss", "sub", "client_id", "aud", "iat", "nbf", "exp", "jti", "policy", "aws",
        "scope", "team", "tier",
    ]  # fmt: skip
