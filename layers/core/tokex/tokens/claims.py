"""JWT claims of an issued access token (RFC 9068; see docs/contract.md
"The access token (RFC 9068 profile)")."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any

from tokex.errors import InvalidGrant
from tokex.evidence.identity import SIGV4, CallerIdentity, InstanceIdentity

log = logging.getLogger(__name__)

# Claims tokex sets itself, and claims relying parties give a meaning of their own
# (identity, authorization). A policy's static claims can never set, override or stand in
# for these (docs/policies.md "The document"): `reserved_claim` says which names do,
# refused when the policy is written, left out of the token when a stored one has them.
# fmt: off
RESERVED_CLAIMS = frozenset(
    {
        "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "policy",
        "aws", "auth_time", "acr", "amr", "azp", "cnf", "act", "may_act", "typ", "kid",
        "alg", "roles", "groups", "entitlements", "token_use", "tokex", "aud_kid",
        # RFC 7662 §2.2 response members: a gateway may map them to its own identities
        # (Kong's oauth2-introspection `consumer_by: username`).
        "active", "token_type", "username",
        # Read in place of `scope` and `roles`: Spring Security's default authorities
        # converter reads `scp` when a token has no `scope` (tokex leaves `scope` out when
        # it grants none), and .NET maps `role` to its role claim type as it maps `roles`.
        "scp", "role",
    }
)
# fmt: on
# Where a claim name's first segment ends. Relying parties that address claims by path
# read a dotted name as the top-level key that spells it, or as a member:
# mod_auth_openidc's `Require claim aws.account:...` matched a top-level "aws.account".
# `_CLAIM_NAME` (policy/model.py) allows `.` and `:` in names; `/` is listed too, for a
# name that never went through it.
_SEGMENT_END = re.compile(r"[.:/]")


def reserved_claim(name: str) -> str | None:
    """The reserved claim `name` would set or stand in for, None if none: compared
    case-insensitively (a reader that ignores case finds `SUB` as it finds `sub`), the
    name itself, or its first segment before `.`, `:` or `/` (`aws.account`,
    `scope:admin`)."""
    folded = name.casefold()
    if folded in RESERVED_CLAIMS:
        return folded
    first = _SEGMENT_END.split(folded, maxsplit=1)[0]
    return first if first in RESERVED_CLAIMS else None


def reserved_claim_reason(name: str) -> str | None:
    """Why `name` is reserved, for a refusal (`claims.<name>: reserved claim (...)`)."""
    reserved = reserved_claim(name)
    if reserved is None:
        return None
    if name == reserved:
        return "tokex sets it, or relying parties give it a meaning of their own"
    if name.casefold() == reserved:
        return f"{reserved!r} in another case, which a reader that ignores case takes for it"
    return (
        f"names beginning '{reserved}.' or '{reserved}:' stand in for {reserved!r} at "
        "relying parties that read them as paths"
    )


# Policies whose reserved claim names were left out of a token, and which: warned about
# once per environment (up to _MAX_WARNED of them remembered, then at every token).
_WARNED: set[tuple[str, tuple[str, ...]]] = set()
_MAX_WARNED = 1024
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

    tokex's own claims come first, then the policy's static claims: a reader that takes
    the first of two names it cannot tell apart finds tokex's. A policy's claim whose name
    is reserved (`reserved_claim`) is left out, with a warning: `put` refuses one, but a
    policy stored by an earlier version, or by hand, may still have it, and it must
    neither stand in for a claim of tokex's nor make the policy deny (docs/policies.md).
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
    aws = aws_claim(caller)
    if instance is not None:
        aws["instance"] = instance.claims()
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": caller.principal_arn,
        "client_id": caller.principal_arn,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": jti if jti is not None else new_jti(),
        "policy": policy_id,
        "aws": aws,
    }
    if scopes:
        claims["scope"] = " ".join(scopes)
    left_out: list[str] = []
    for name, value in extra_claims.items():
        if isinstance(name, str) and reserved_claim(name) is None and name not in claims:
            claims[name] = value
        else:
            left_out.append(str(name))
    if left_out:
        _warn_left_out(policy_id, left_out)
    return claims


def _warn_left_out(policy_id: str, names: list[str]) -> None:
    key = (policy_id, tuple(names))
    if key in _WARNED:
        return
    if len(_WARNED) < _MAX_WARNED:
        _WARNED.add(key)
    log.warning(
        "policy %s: claims %s left out of its tokens: reserved claim names "
        "(docs/policies.md); remove them from the policy",
        policy_id,
        ", ".join(repr(name[:64]) for name in names),
    )


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
