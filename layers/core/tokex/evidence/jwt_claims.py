"""Who a verified JWT says the caller is (docs/contract.md "JWT evidence").

Runs only on claims whose signature, issuer, audience and times were already verified
(evidence/jwt_evidence.py); here each kind's claims become a `CallerIdentity`, and every
claim that reaches a policy or a token is checked for shape first. Refusals are
`invalid_grant` with the reason naming the claim.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from tokex import identifiers
from tokex.errors import InvalidGrant
from tokex.evidence.identity import AWS_OIF, EKS, CallerIdentity, EksWorkload, WorkloadAttributes
from tokex.evidence.trusted_issuers import TrustedIssuer

# AWS outbound identity federation puts its own claims under this namespace (IAM User
# Guide, "Understanding token claims").
STS_NAMESPACE = "https://sts.amazonaws.com/"
# The only subject mode whose token is about the calling AWS principal itself.
AWS_IDENTITY_SUBJECT_MODE = "AWSIdentity"
# Kubernetes service-account tokens (projected volumes) carry their own under this claim.
K8S_NAMESPACE_CLAIM = "kubernetes.io"
MAX_TAGS = 50
MAX_TAG_KEY_LENGTH = 128
MAX_TAG_VALUE_LENGTH = 256
MAX_ATTRIBUTE_LENGTH = 2048
MAX_OU_PATHS = 10
# An account number names an account in one partition only, and an issuer's domain says
# which: one under AWS's commercial domain vouches for `aws` accounts (of other issuers'
# domains tokex knows none, and does not guess).
ISSUER_DOMAIN_PARTITIONS = ((".api.aws", "aws"),)


def caller_from_claims(issuer: TrustedIssuer, claims: Mapping[str, Any]) -> CallerIdentity:
    """The caller a verified token of `issuer` names."""
    if issuer.kind == AWS_OIF:
        return caller_from_oif_claims(issuer, claims)
    return caller_from_eks_claims(issuer, claims)


def caller_from_oif_claims(issuer: TrustedIssuer, claims: Mapping[str, Any]) -> CallerIdentity:
    """An AWS OIF token: the principal is `principal_id` (the requesting principal's ARN;
    for a role session, the role's), never `sub`, which another subject mode fills with a
    propagated identity. The token's `scope` is not read: tokex grants scopes by policy."""
    sts = claims.get(STS_NAMESPACE)
    if not isinstance(sts, Mapping):
        raise _refused(f"the token has no {STS_NAMESPACE} claims", "oif_claims")
    for mode in (claims.get("subject_mode"), sts.get("subject_mode")):
        if mode is not None and mode != AWS_IDENTITY_SUBJECT_MODE:
            raise _refused(
                "only tokens with subject mode AWSIdentity are accepted", "oif_subject_mode"
            )
    account = sts.get("aws_account")
    if account != issuer.account:
        raise _refused("the token's account is not its issuer's account", "oif_account")
    principal = sts.get("principal_id")
    if not isinstance(principal, str):
        raise _refused("the token names no principal_id", "oif_principal")
    role = identifiers.ROLE_ARN.fullmatch(principal)
    matched = role or identifiers.USER_ARN.fullmatch(principal)
    if matched is None:
        raise _refused("principal_id is not an IAM role or user ARN", "oif_principal")
    partition, principal_account = matched.group(1), matched.group(2)
    if principal_account != account:
        raise _refused("principal_id is not in the token's account", "oif_principal")
    if _issuer_partition(issuer.issuer) not in (None, partition):
        raise _refused("principal_id is not in its issuer's partition", "oif_principal")
    if role is not None:
        # The canonical principal is path-less (`role/Name`), as SigV4 evidence names it
        # (STS never reveals a role's path), so one policy pattern matches both.
        principal = f"arn:{partition}:iam::{account}:role/{role.group(4)}"
    return CallerIdentity(
        principal_arn=principal,
        arn=principal,
        account=account,
        user_id="",
        principal_id="",
        partition=partition,
        evidence=AWS_OIF,
        workload=_workload(sts, account),
    )


def _issuer_partition(issuer: str) -> str | None:
    """The partition `issuer`'s domain belongs to, if tokex knows it. A configured issuer
    is a valid URL (trusted_issuers.py); `tokex policy explain` takes the `iss` of any
    claims file, "https://[::1" among them: a URL that does not parse has no known domain."""
    try:
        host = urllib.parse.urlsplit(issuer).hostname or ""
    except ValueError:  # "Invalid IPv6 URL"
        return None
    for suffix, partition in ISSUER_DOMAIN_PARTITIONS:
        if host.endswith(suffix):
            return partition
    return None


def caller_from_eks_claims(issuer: TrustedIssuer, claims: Mapping[str, Any]) -> CallerIdentity:
    """An EKS service-account token: namespace and service account from its
    `kubernetes.io` claim, which `sub` must agree with."""
    k8s = claims.get(K8S_NAMESPACE_CLAIM)
    if not isinstance(k8s, Mapping):
        raise _refused("the token is not a Kubernetes service-account token", "eks_claims")
    namespace = k8s.get("namespace")
    account = k8s.get("serviceaccount")
    name = account.get("name") if isinstance(account, Mapping) else None
    if not (isinstance(namespace, str) and identifiers.K8S_NAMESPACE.fullmatch(namespace)):
        raise _refused("the token names no valid namespace", "eks_namespace")
    if not (isinstance(name, str) and identifiers.K8S_NAME.fullmatch(name)):
        raise _refused("the token names no valid service account", "eks_service_account")
    if claims.get("sub") != f"system:serviceaccount:{namespace}:{name}":
        raise _refused("the token's sub does not name its service account", "eks_subject")
    pod = k8s.get("pod")
    pod_name = pod.get("name") if isinstance(pod, Mapping) else None
    if pod_name is not None and not (
        isinstance(pod_name, str) and identifiers.K8S_NAME.fullmatch(pod_name)
    ):
        raise _refused("the token's pod name is not valid", "eks_pod")
    assert issuer.region is not None and issuer.cluster is not None
    workload = EksWorkload(
        account=issuer.account,
        region=issuer.region,
        cluster=issuer.cluster,
        namespace=namespace,
        service_account=name,
        pod=pod_name,
    )
    return CallerIdentity(
        principal_arn=workload.principal,
        arn="",
        account=issuer.account,
        user_id="",
        principal_id="",
        partition=identifiers.partition_of_region(issuer.region) or "aws",
        evidence=EKS,
        eks=workload,
    )


def _workload(sts: Mapping[str, Any], account: str) -> WorkloadAttributes:
    """The session attributes of an OIF token, each checked for shape (a malformed one
    refuses the token: a policy must never match on a value it cannot read)."""
    lambda_arn = _optional(sts, "lambda_source_function_arn", identifiers.LAMBDA_FUNCTION_ARN)
    instance_arn = _optional(sts, "ec2_source_instance_arn", identifiers.EC2_INSTANCE_ARN)
    for name, arn in (
        ("lambda_source_function_arn", lambda_arn),
        ("ec2_source_instance_arn", instance_arn),
    ):
        if arn is not None and arn.split(":")[4] != account:
            raise _refused(f"{name} is not in the token's account", "oif_claims")
    org_id = _optional(sts, "org_id", identifiers.ORG_ID)
    return WorkloadAttributes(
        source_region=_optional(sts, "source_region", identifiers.REGION),
        org_id=org_id,
        ou_paths=_ou_paths(sts.get("ou_path")),
        principal_tags=_tags(sts, "principal_tags"),
        request_tags=_tags(sts, "request_tags"),
        lambda_function_arn=lambda_arn,
        ec2_instance_arn=instance_arn,
        source_vpc=_optional(sts, "ec2_instance_source_vpc", identifiers.VPC_ID),
        imds_version=_optional(sts, "ec2_role_delivery", None),
        source_identity=_optional(sts, "source_identity", None),
    )


def _optional(sts: Mapping[str, Any], name: str, pattern: Any) -> str | None:
    value = sts.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ATTRIBUTE_LENGTH:
        raise _refused(f"the token's {name} is not a string", "oif_claims")
    if pattern is not None and not pattern.fullmatch(value):
        raise _refused(f"the token's {name} is malformed", "oif_claims")
    return value


def _ou_paths(value: object) -> tuple[str, ...]:
    """`ou_path`: one path, or a list of them (tokens have been seen with either)."""
    if value is None:
        return ()
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or len(paths) > MAX_OU_PATHS:
        raise _refused("the token's ou_path is malformed", "oif_claims")
    for path in paths:
        if not (isinstance(path, str) and identifiers.OU_PATH.fullmatch(path)):
            raise _refused("the token's ou_path is malformed", "oif_claims")
    return tuple(paths)


def _tags(sts: Mapping[str, Any], name: str) -> dict[str, str]:
    value = sts.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > MAX_TAGS:
        raise _refused(f"the token's {name} are malformed", "oif_claims")
    tags: dict[str, str] = {}
    for key, tag in value.items():
        if not (
            isinstance(key, str)
            and isinstance(tag, str)
            and 0 < len(key) <= MAX_TAG_KEY_LENGTH
            and len(tag) <= MAX_TAG_VALUE_LENGTH
        ):
            raise _refused(f"the token's {name} are malformed", "oif_claims")
        tags[key] = tag
    return tags


def _refused(description: str, reason: str) -> InvalidGrant:
    return InvalidGrant(description, reason=reason)
