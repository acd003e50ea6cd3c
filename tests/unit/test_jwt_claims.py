"""Who a verified JWT names (docs/contract.md "JWT evidence"): the principal from
`principal_id`, never `sub`; the account bound by configuration; every attribute checked
for shape; the EKS principal never an ARN."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tokex.errors import InvalidGrant
from tokex.evidence.identity import EksWorkload
from tokex.evidence.jwt_claims import STS_NAMESPACE, caller_from_claims
from tokex.evidence.trusted_issuers import TrustedIssuer
from tokex.policy.evaluate import evaluate
from tokex.policy.globs import principal_matches
from tokex.policy.model import Policy
from tokex.tokens.claims import aws_claim

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/orders"
OIF = TrustedIssuer("aws-oif", "https://abc.tokens.sts.global.api.aws", ACCOUNT)
EKS = TrustedIssuer(
    "eks", "https://oidc.eks.eu-west-1.amazonaws.com/id/X", ACCOUNT, "eu-west-1", "prod"
)
FUNCTION = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:orders-a"


def oif_claims(**sts: Any) -> dict[str, Any]:
    return {
        "iss": OIF.issuer,
        "sub": ROLE,
        "jti": "j",
        STS_NAMESPACE: {"aws_account": ACCOUNT, "principal_id": ROLE, **sts},
    }


def eks_claims(**changes: Any) -> dict[str, Any]:
    claims = {
        "iss": EKS.issuer,
        "sub": "system:serviceaccount:payments:api",
        "kubernetes.io": {
            "namespace": "payments",
            "serviceaccount": {"name": "api", "uid": "u"},
            "pod": {"name": "api-7d9f", "uid": "p"},
        },
    }
    claims.update(changes)
    return claims


def test_oif_principal_and_workload_attributes() -> None:
    caller = caller_from_claims(
        OIF,
        oif_claims(
            source_region="us-east-1",
            org_id="o-abc1234567",
            ou_path="o-abc1234567/r-ab12/ou-ab12-11111111/",
            principal_tags={"team": "orders"},
            request_tags={"job": "nightly"},
            lambda_source_function_arn=FUNCTION,
            ec2_role_delivery="2.0",
        ),
    )
    assert (caller.principal_arn, caller.arn, caller.account) == (ROLE, ROLE, ACCOUNT)
    assert (caller.evidence, caller.principal_id, caller.user_id) == ("aws-oif", "", "")
    assert caller.workload is not None
    assert caller.workload.lambda_function_arn == FUNCTION
    assert caller.workload.ou_paths == ("o-abc1234567/r-ab12/ou-ab12-11111111/",)
    assert caller.workload.request_tags == {"job": "nightly"}
    aws = aws_claim(caller)
    assert aws["evidence"] == "aws-oif" and aws["arn"] == ROLE
    assert aws["lambda_function_arn"] == FUNCTION and aws["imds_version"] == "2.0"
    assert "principal_id" not in aws and "session_name" not in aws


@pytest.mark.parametrize("session_tags", [{"team": "payments"}, {"k": 1}, "x"])
def test_a_session_tags_claim_is_ignored_as_any_undocumented_claim(session_tags: Any) -> None:
    """AWS documents no `session_tags` claim (IAM User Guide, "Understanding token
    claims": a session's tags are in `principal_tags`): one in a token, whatever its
    shape, reaches neither the caller nor the issued token."""
    caller = caller_from_claims(OIF, oif_claims(principal_tags={"team": "orders"}))
    with_claim = caller_from_claims(
        OIF, oif_claims(principal_tags={"team": "orders"}, session_tags=session_tags)
    )
    assert with_claim == caller
    aws = aws_claim(with_claim)
    assert aws == aws_claim(caller) and "session_tags" not in aws
    assert aws["principal_tags"] == {"team": "orders"}


def test_a_tagged_sessions_tags_are_its_principal_tags() -> None:
    """The role is tagged team=orders; whoever assumed it passed session tags
    (sts:TagSession) team=payments. AWS puts the session's tags in the token's
    `principal_tags` (IAM User Guide, "Understanding token claims": "When a token is
    requested where the requesting IAM principal has both principal tags and session
    tags, the session tags will be present in the JWT"; they map to aws:PrincipalTag),
    so a `principal_tags` selector matches them: it is as trustworthy as who may tag the
    session (docs/policies.md "Workload selectors")."""
    caller = caller_from_claims(OIF, oif_claims(principal_tags={"team": "payments"}))
    payments = Policy.from_document(
        {
            "id": "payments-roles",
            "effect": "allow",
            "evidence": ["aws-oif"],
            "principals": [f"arn:aws:iam::{ACCOUNT}:role/*"],
            "workload": {"principal_tags": {"team": ["payments"]}},
            "audiences": ["payments-api"],
            "scopes": ["payments:write"],
        }
    )
    decision = evaluate(
        [payments], caller, "payments-api", None, None, default_ttl=900, ttl_cap=3600
    )
    assert (decision.policy.id, decision.scopes) == ("payments-roles", ("payments:write",))
    assert aws_claim(caller)["principal_tags"] == {"team": "payments"}


def test_a_role_path_is_dropped_as_sigv4_evidence_drops_it() -> None:
    claims = oif_claims(principal_id=f"arn:aws:iam::{ACCOUNT}:role/teams/orders/orders")
    assert caller_from_claims(OIF, claims).principal_arn == ROLE


def test_the_principal_is_principal_id_never_sub() -> None:
    claims = oif_claims()
    claims["sub"] = f"arn:aws:iam::{ACCOUNT}:role/admin"
    assert caller_from_claims(OIF, claims).principal_arn == ROLE


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda c: c.pop(STS_NAMESPACE), "oif_claims"),
        (lambda c: c.update({STS_NAMESPACE: "x"}), "oif_claims"),
        (lambda c: c[STS_NAMESPACE].update(aws_account="210987654321"), "oif_account"),
        (lambda c: c[STS_NAMESPACE].pop("aws_account"), "oif_account"),
        (lambda c: c.update(subject_mode="OriginIdentity"), "oif_subject_mode"),
        (lambda c: c[STS_NAMESPACE].update(subject_mode="OriginIdentity"), "oif_subject_mode"),
        (lambda c: c[STS_NAMESPACE].pop("principal_id"), "oif_principal"),
        (lambda c: c[STS_NAMESPACE].update(principal_id="alice"), "oif_principal"),
        (
            lambda c: c[STS_NAMESPACE].update(
                principal_id=f"arn:aws:sts::{ACCOUNT}:assumed-role/orders/s"
            ),
            "oif_principal",
        ),
        (
            lambda c: c[STS_NAMESPACE].update(principal_id="arn:aws:iam::210987654321:role/x"),
            "oif_principal",
        ),
        (  # an account of the issuer's number in another partition is another account
            lambda c: c[STS_NAMESPACE].update(principal_id=f"arn:aws-cn:iam::{ACCOUNT}:role/x"),
            "oif_principal",
        ),
        (lambda c: c[STS_NAMESPACE].update(lambda_source_function_arn="nope"), "oif_claims"),
        (
            lambda c: c[STS_NAMESPACE].update(
                lambda_source_function_arn=FUNCTION.replace(ACCOUNT, "210987654321")
            ),
            "oif_claims",
        ),
        (lambda c: c[STS_NAMESPACE].update(principal_tags=["x"]), "oif_claims"),
        (lambda c: c[STS_NAMESPACE].update(request_tags={"k": 1}), "oif_claims"),
        (lambda c: c[STS_NAMESPACE].update(ou_path=["bad"]), "oif_claims"),
        (lambda c: c[STS_NAMESPACE].update(ec2_instance_source_vpc="vpc-XYZ"), "oif_claims"),
        (lambda c: c[STS_NAMESPACE].update(source_region="x" * 5000), "oif_claims"),
    ],
)
def test_oif_refusals(mutate: Any, reason: str) -> None:
    claims = copy.deepcopy(oif_claims())
    mutate(claims)
    with pytest.raises(InvalidGrant) as refused:
        caller_from_claims(OIF, claims)
    assert refused.value.reason == reason


def test_eks_principal_is_bound_by_configuration_and_never_an_arn() -> None:
    caller = caller_from_claims(EKS, eks_claims())
    assert caller.eks == EksWorkload(ACCOUNT, "eu-west-1", "prod", "payments", "api", "api-7d9f")
    assert caller.principal_arn == f"eks:{ACCOUNT}:eu-west-1:prod:payments:api"
    assert caller.evidence == "eks" and caller.arn == ""
    for pattern in ("*", "arn:*", f"arn:aws:iam::{ACCOUNT}:role/*"):
        assert not principal_matches(pattern, caller.principal_arn)
    aws = aws_claim(caller)
    assert aws == {
        "account": ACCOUNT,
        "evidence": "eks",
        "eks": {
            "region": "eu-west-1",
            "cluster": "prod",
            "namespace": "payments",
            "service_account": "api",
            "pod": "api-7d9f",
        },
    }


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kubernetes.io": None}, "eks_claims"),
        ({"sub": "system:serviceaccount:payments:admin"}, "eks_subject"),
        (
            {"kubernetes.io": {"namespace": "Pay:ments", "serviceaccount": {"name": "api"}}},
            "eks_namespace",
        ),
        ({"kubernetes.io": {"namespace": "payments", "serviceaccount": {}}}, "eks_service_account"),
        (
            {
                "kubernetes.io": {
                    "namespace": "payments",
                    "serviceaccount": {"name": "api"},
                    "pod": {"name": "Bad Pod"},
                }
            },
            "eks_pod",
        ),
    ],
)
def test_eks_refusals(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidGrant) as refused:
        caller_from_claims(EKS, eks_claims(**changes))
    assert refused.value.reason == reason
