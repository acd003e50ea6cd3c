"""JWT claims of an issued access token (RFC 9068; see docs/contract.md
"The access token (RFC 9068 profile)")."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from tokex.errors import InvalidGrant
from tokex.evidence.identity import SIGV4, CallerIdentity, InstanceIdentity

# Claims tokex sets itself. A policy's static claims can never set or override these
# (docs/policies.md "The document": refused when the policy is written).
# fmt: off
RESERVED_CLAIMS = frozenset(
    {
        "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "policy",
        "aws", "auth_time", "acr", "amr", "azp", "cnf", "act", "may_act", "typ", "kid",
        "alg", "roles", "groups", "entitlements", "token_use", "tokex", "aud_kid",
        # RFC 7662 §2.2 response members: a gateway may map them to its own identities
        # (Kong's oauth2-introspection `consumer_by: username`).
        "active", "token_type", "username",
    }
)
# fmt: on
# 24 bytes = 192 bits from the OS CSPRNG (contract: `jti` has at least 128 random bits).
JTI_BYTES = 24


def new_jti() -> str:
    """A token id with 192 random bits (contract: at least 128), URL-safe."""
    return secrets.token_urlsafe(JTI_BYTES)


def build_claims(
    *,
    issuer: str,
    audience: str,
    caller: CallerIdentity,
    policy_id: str,
    scopes: tuple[str, ...],
    ttl_seconds: int,
    extra_claims: Mapping[str, Any],
    instance: InstanceIdentity | None,
    now: int,
    jti: str | None = None,
) -> dict[str, Any]:
    """The claims of an access token (docs/contract.md "The access token (RFC 9068 profile)").

    The policy's static claims go in first and every claim tokex sets is written after
    them, so they can never override one; reserved names are also skipped here, in case a
    policy that predates a reservation is still stored.
    """
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    if instance is not None and not instance.bound:
        # Evidence not bound to the SigV4 caller is never turned into claims
        # (docs/security.md "IMDS evidence").
        raise InvalidGrant(
            "instance identity evidence is not bound to the caller",
            reason="instance_identity_unbound",
        )
    claims: dict[str, Any] = {
        name: value
        for name, value in extra_claims.items()
        if isinstance(name, str) and name not in RESERVED_CLAIMS
    }
    aws = aws_claim(caller)
    if instance is not None:
        aws["instance"] = instance.claims()
    claims.update(
        iss=issuer,
        sub=caller.principal_arn,
        client_id=caller.principal_arn,
        aud=audience,
        iat=now,
        nbf=now,
        exp=now + ttl_seconds,
        jti=jti if jti is not None else new_jti(),
        policy=policy_id,
        aws=aws,
    )
    if scopes:
        claims["scope"] = " ".join(scopes)
    return claims


def aws_claim(caller: CallerIdentity) -> dict[str, Any]:
    """The `aws` claim (docs/contract.md "The access token (RFC 9068 profile)"): who the
    evidence proved, and which evidence it was. `principal_id` and `session_name` come
    only from STS's GetCallerIdentity (SigV4 evidence); a JWT carries neither."""
    aws: dict[str, Any] = {"account": caller.account, "evidence": caller.evidence}
    if caller.evidence == SIGV4:
        # The STS UserId (`AROA...:session` or the user's id), as the contract names it.
        aws.update(arn=caller.arn, principal_id=caller.user_id)
        if caller.session_name is not None:
            aws["session_name"] = caller.session_name
    elif caller.eks is not None:
        eks = caller.eks
        aws["eks"] = {
            "region": eks.region,
            "cluster": eks.cluster,
            "namespace": eks.namespace,
            "service_account": eks.service_account,
            **({"pod": eks.pod} if eks.pod is not None else {}),
        }
    else:
        aws["arn"] = caller.arn
        if caller.workload is not None:
            aws.update(_workload_claims(caller))
    return aws


def _workload_claims(caller: CallerIdentity) -> dict[str, Any]:
    """An AWS OIF session's attributes, each only when the token carried it. Request tags
    are what the workload asked to be put in its token: named as such, never trusted as
    more."""
    workload = caller.workload
    assert workload is not None
    claims: dict[str, Any] = {
        "source_region": workload.source_region,
        "org_id": workload.org_id,
        "ou_paths": list(workload.ou_paths) or None,
        "lambda_function_arn": workload.lambda_function_arn,
        "ec2_instance_arn": workload.ec2_instance_arn,
        "source_vpc": workload.source_vpc,
        "imds_version": workload.imds_version,
        "source_identity": workload.source_identity,
        "principal_tags": dict(workload.principal_tags) or None,
        "request_tags": dict(workload.request_tags) or None,
    }
    return {name: value for name, value in claims.items() if value is not None}
