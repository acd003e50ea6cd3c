"""Policies over JWT evidence (docs/policies.md "JWT evidence", "Workload selectors",
"Conditions"): which evidence a policy accepts, EKS selectors, workload selectors and
conditions, each refused when written if it could never hold, and never a pass when the
caller's evidence does not carry its signal."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from tokex.errors import InvalidTarget
from tokex.evidence.identity import (
    CallerIdentity,
    EksWorkload,
    InstanceIdentity,
    WorkloadAttributes,
)
from tokex.policy.evaluate import Decision, Explanation, evaluate, explain
from tokex.policy.model import (
    Conditions,
    EksSelectors,
    Policy,
    PolicyValidationError,
    TimeWindow,
    WorkloadSelectors,
    canonical_json,
)

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/"
FUNCTION = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:orders-a"
INSTANCE_ARN = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0123456789abcdef0"
VPC = "vpc-0123456789abcdef0"
ORG = "o-abc1234567"
OU = f"{ORG}/r-ab12/ou-ab12-11111111/"
CLUSTER = f"{ACCOUNT}:us-east-1:prod"
# Monday 2026-11-30, 12:00 UTC.
MONDAY_NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()

SIGV4_CALLER = CallerIdentity(
    principal_arn=ROLE + "orders-api",
    arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-api/worker-1",
    account=ACCOUNT,
    user_id="AROAORDERS:worker-1",
    principal_id="AROAORDERS",
    partition="aws",
    session_name="worker-1",
)
ATTRIBUTES = WorkloadAttributes(
    source_region="us-east-1",
    org_id=ORG,
    ou_paths=(OU,),
    principal_tags={"team": "payments"},
    request_tags={"job": "nightly-7"},
    lambda_function_arn=FUNCTION,
    ec2_instance_arn=INSTANCE_ARN,
    source_vpc=VPC,
    imds_version="2.0",
    source_identity="alice@example.com",
)
OIF_CALLER = CallerIdentity(
    principal_arn=ROLE + "orders-api",
    arn=ROLE + "orders-api",
    account=ACCOUNT,
    user_id="",
    principal_id="",
    partition="aws",
    evidence="aws-oif",
    workload=ATTRIBUTES,
)
POD = EksWorkload(ACCOUNT, "us-east-1", "prod", "payments", "api", "api-7d9f")
EKS_CALLER = CallerIdentity(
    principal_arn=POD.principal,
    arn="",
    account=ACCOUNT,
    user_id="",
    principal_id="",
    partition="aws",
    evidence="eks",
    eks=POD,
)
EKS_SELECTORS = {"clusters": [CLUSTER], "namespaces": ["payments"], "service_accounts": ["api"]}


def doc(**fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": "p",
        "effect": "allow",
        "principals": [ROLE + "orders-*"],
        "audiences": ["orders-api"],
        "scopes": ["orders:read"],
    }
    if fields.get("evidence") == ["eks"] and "principals" not in fields:
        del document["principals"]
    document.update(fields)
    return {k: v for k, v in document.items() if v is not None}


def policy(**fields: Any) -> Policy:
    return Policy.from_document(doc(**fields))


def eks_policy(**fields: Any) -> Policy:
    return policy(evidence=["eks"], eks=EKS_SELECTORS, **fields)


def run(policies: list[Policy], caller: CallerIdentity, now: float = MONDAY_NOON) -> Decision:
    return evaluate(
        policies, caller, "orders-api", None, None, default_ttl=900, ttl_cap=3600, now=now
    )


def explained(
    policies: list[Policy], caller: CallerIdentity, now: float = MONDAY_NOON
) -> Explanation:
    return explain(
        policies, caller, "orders-api", None, None, default_ttl=900, ttl_cap=3600, now=now
    )


def refusal(
    policies: list[Policy], caller: CallerIdentity, now: float = MONDAY_NOON
) -> InvalidTarget:
    with pytest.raises(InvalidTarget) as info:
        run(policies, caller, now)
    return info.value


def applies(candidate: Policy, caller: CallerIdentity, now: float = MONDAY_NOON) -> bool:
    return explained([candidate], caller, now).lines[0].applies


def refused_field(document: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(PolicyValidationError) as info:
        Policy.from_document(document)
    return info.value.field, info.value.message


# --- the document -------------------------------------------------------------------------

FULL_OIF = doc(
    evidence=["aws-oif"],
    workload={
        "lambda_function_arns": [f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:orders-*"],
        "ec2_instance_arns": [f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-*"],
        "principal_tags": {"team": ["payments"]},
        "request_tags": {"job": ["nightly-*"]},
        "source_identities": ["alice@example.com"],
    },
    conditions={
        "time_window": {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": ["08:00-18:00"]},
        "imds_v2": True,
        "source_vpcs": [VPC],
        "org_ids": [ORG],
        "ou_paths": [f"{ORG}/r-ab12/ou-ab12-11111111/*"],
    },
)
FULL_EKS = doc(evidence=["eks"], eks={**EKS_SELECTORS, "service_accounts": ["api", "worker-*"]})


@pytest.mark.parametrize("document", [FULL_OIF, FULL_EKS], ids=["aws-oif", "eks"])
def test_documents_round_trip(document: dict[str, Any]) -> None:
    parsed = Policy.from_document(document)
    assert Policy.from_document(parsed.to_document()) == parsed
    stored = parsed.to_document()
    for key in ("evidence", "eks", "workload", "conditions"):
        if key in document:
            assert stored[key] == document[key]


def test_the_parsed_selectors() -> None:
    parsed = Policy.from_document(FULL_OIF)
    assert parsed.evidence == ("aws-oif",) and parsed.evidence_kinds == ("aws-oif",)
    assert parsed.workload == WorkloadSelectors(
        lambda_function_arns=(f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:orders-*",),
        ec2_instance_arns=(f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-*",),
        principal_tags={"team": ("payments",)},
        request_tags={"job": ("nightly-*",)},
        source_identities=("alice@example.com",),
    )
    assert parsed.conditions == Conditions(
        time_window=TimeWindow(days=("mon", "tue", "wed", "thu", "fri"), hours=("08:00-18:00",)),
        imds_v2=True,
        source_vpcs=(VPC,),
        org_ids=(ORG,),
        ou_paths=(f"{ORG}/r-ab12/ou-ab12-11111111/*",),
    )
    eks = Policy.from_document(FULL_EKS)
    assert eks.principals == () and "principals" not in eks.to_document()
    assert eks.eks == EksSelectors((CLUSTER,), ("payments",), ("api", "worker-*"))


def test_documents_without_the_new_keys_are_stored_as_before() -> None:
    """Byte for byte: the stored form of a document that names none of the new keys."""
    old = {
        "id": "orders-reader", "description": "", "effect": "allow",
        "principals": [ROLE + "orders-*"], "audiences": ["orders-api"], "enabled": True,
        "scopes": ["orders:read"], "claims": {},
    }  # fmt: skip
    parsed = Policy.from_document(old)
    assert parsed.evidence is None and parsed.evidence_kinds == ("sigv4", "aws-oif")
    assert canonical_json(parsed.to_document()) == canonical_json(old)
    assert list(parsed.to_document()) == list(old)
    # Earlier versions stored every allow with "principal_ids": [] (any id): read back
    # from the table it still means that, and is stored again without it.
    stored = Policy.from_document({**old, "principal_ids": []}, stored=True)
    assert stored == parsed
    deny = {"id": "d", "description": "", "effect": "deny", "principals": [ROLE + "x"],
            "audiences": ["*"], "enabled": True}  # fmt: skip
    assert Policy.from_document(deny).to_document() == deny


def test_an_explicit_default_evidence_is_kept() -> None:
    parsed = policy(evidence=["sigv4", "aws-oif"])
    assert parsed.to_document()["evidence"] == ["sigv4", "aws-oif"]
    assert Policy.from_document(parsed.to_document()) == parsed


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        ({"evidence": []}, "evidence", "must not be empty"),
        ({"evidence": "sigv4"}, "evidence", "list"),
        ({"evidence": ["sigv4", "sigv4"]}, "evidence", "duplicate"),
        ({"evidence": ["sigv4", "oidc"]}, "evidence[1]", "one of sigv4, aws-oif, eks"),
        ({"evidence": [7]}, "evidence[0]", "string"),
        # principals: required for IAM evidence, refused on an EKS-only policy
        ({"evidence": ["aws-oif"], "principals": None}, "principals", "is required"),
        ({"evidence": ["sigv4", "eks"], "eks": EKS_SELECTORS, "principals": []},
         "principals", "empty"),
        ({"evidence": ["eks"], "eks": EKS_SELECTORS, "principals": [ROLE + "x"]},
         "principals", "only eks"),
        # eks: required iff evidence includes eks
        ({"evidence": ["eks"]}, "eks", "is required when evidence includes eks"),
        ({"evidence": ["aws-oif", "eks"]}, "eks", "is required"),
        ({"eks": EKS_SELECTORS}, "eks", "only for a policy whose evidence includes eks"),
        ({"evidence": ["eks"], "eks": []}, "eks", "must be an object"),
        ({"evidence": ["eks"], "eks": {**EKS_SELECTORS, "pods": ["x"]}}, "eks.pods", "unknown key"),
        *[
            ({"evidence": ["eks"], "eks": {k: v for k, v in EKS_SELECTORS.items() if k != key}},
             f"eks.{key}", "is required")
            for key in EKS_SELECTORS
        ],
        *[
            ({"evidence": ["eks"], "eks": {**EKS_SELECTORS, key: []}}, f"eks.{key}", "empty")
            for key in EKS_SELECTORS
        ],
        ({"evidence": ["eks"], "eks": {**EKS_SELECTORS, "clusters": ["prod"]}},
         "eks.clusters[0]", "ACCOUNT:REGION:CLUSTER"),
        ({"evidence": ["eks"], "eks": {**EKS_SELECTORS, "clusters": ["*:us-east-1:prod"]}},
         "eks.clusters[0]", "account must be 12 digits, no wildcard"),
        ({"evidence": ["eks"], "eks": {**EKS_SELECTORS, "clusters": [f"{ACCOUNT}:US:prod"]}},
         "eks.clusters[0]", "region"),
        ({"evidence": ["eks"], "eks": {**EKS_SELECTORS, "clusters": [f"{ACCOUNT}:*:pr od"]}},
         "eks.clusters[0]", "cluster"),
        ({"evidence": ["eks"], "eks": {**EKS_SELECTORS, "namespaces": ["Pay"]}},
         "eks.namespaces[0]", "namespace glob"),
        ({"evidence": ["eks"], "eks": {**EKS_SELECTORS, "service_accounts": ["a_b"]}},
         "eks.service_accounts[0]", "service account glob"),
        # selectors that no accepted evidence carries
        ({"evidence": ["aws-oif"], "principal_ids": ["AROAX"]}, "principal_ids", "only sigv4"),
        ({"evidence": ["aws-oif"], "instance": {"required": True}}, "instance", "only sigv4"),
        ({"evidence": ["sigv4"], "workload": {"source_identities": ["a"]}},
         "workload", "only aws-oif"),
        ({"evidence": ["eks"], "eks": EKS_SELECTORS, "workload": {"source_identities": ["a"]}},
         "workload", "only aws-oif"),
        *[
            ({"evidence": ["sigv4", "eks"], "eks": EKS_SELECTORS, "conditions": {name: value}},
             f"conditions.{name}", "only aws-oif")
            for name, value in (
                ("imds_v2", True), ("source_vpcs", [VPC]), ("org_ids", [ORG]), ("ou_paths", [OU]),
            )
        ],
        # workload
        ({"workload": []}, "workload", "must be an object"),
        ({"workload": {}}, "workload", "at least one selector"),
        ({"workload": {"lambda_arns": ["x"]}}, "workload.lambda_arns", "unknown key"),
        ({"workload": {"lambda_function_arns": []}}, "workload.lambda_function_arns", "empty"),
        ({"workload": {"lambda_function_arns": ["orders-*"]}},
         "workload.lambda_function_arns[0]", "Lambda function ARN glob"),
        ({"workload": {"lambda_function_arns": [f"arn:aws:lambda:us-east-1:{ACCOUNT}:layer:x"]}},
         "workload.lambda_function_arns[0]", "Lambda function ARN glob"),
        ({"workload": {"ec2_instance_arns": [FUNCTION]}},
         "workload.ec2_instance_arns[0]", "EC2 instance ARN glob"),
        ({"workload": {"source_identities": ["a b"]}}, "workload.source_identities[0]", "1-64"),
        ({"workload": {"principal_tags": {}}}, "workload.principal_tags", "empty"),
        ({"workload": {"request_tags": {"job": []}}}, "workload.request_tags.job", "at least one"),
        # AWS documents no session_tags claim: a session's tags are its principal_tags.
        ({"workload": {"session_tags": {"env": ["prod"]}}}, "workload.session_tags",
         "AWS OIF tokens carry no session_tags claim: a session's tags are in principal_tags"),
        ({"workload": {"request_tags": {"job": "x"}}}, "workload.request_tags.job", "list"),
        ({"workload": {"principal_tags": {"bad\nkey": ["x"]}}},
         "workload.principal_tags.bad\nkey", "tag key"),
        ({"workload": {"principal_tags": {"team": ["bad\tvalue"]}}},
         "workload.principal_tags.team[0]", "tag value glob"),
        # conditions
        ({"conditions": {}}, "conditions", "at least one condition"),
        ({"conditions": {"vpcs": [VPC]}}, "conditions.vpcs", "unknown key"),
        ({"conditions": {"imds_v2": False}}, "conditions.imds_v2", "false is not a condition"),
        ({"conditions": {"imds_v2": "true"}}, "conditions.imds_v2", "true or false"),
        ({"conditions": {"source_vpcs": []}}, "conditions.source_vpcs", "empty"),
        ({"conditions": {"source_vpcs": ["sg-1"]}}, "conditions.source_vpcs[0]", "VPC id glob"),
        ({"conditions": {"org_ids": ["r-ab12"]}}, "conditions.org_ids[0]", "organization id"),
        ({"conditions": {"ou_paths": ["ou-ab12-11111111"]}}, "conditions.ou_paths[0]", "OU path"),
        ({"conditions": {"ou_paths": [f"{ORG}/r-ab12"]}}, "conditions.ou_paths[0]", "end with /"),
        # time windows
        ({"conditions": {"time_window": {}}}, "conditions.time_window", "days, hours or both"),
        ({"conditions": {"time_window": []}}, "conditions.time_window", "object"),
        ({"conditions": {"time_window": {"tz": "x"}}}, "conditions.time_window.tz", "unknown key"),
        ({"conditions": {"time_window": {"days": []}}}, "conditions.time_window.days", "empty"),
        ({"conditions": {"time_window": {"days": ["Mon"]}}},
         "conditions.time_window.days[0]", "one of mon tue wed thu fri sat sun"),
        ({"conditions": {"time_window": {"days": ["mon", "mon"]}}},
         "conditions.time_window.days", "duplicate"),
        ({"conditions": {"time_window": {"hours": []}}}, "conditions.time_window.hours", "empty"),
        *[
            ({"conditions": {"time_window": {"hours": [hours]}}},
             "conditions.time_window.hours[0]", why)
            for hours, why in (
                ("8:00-18:00", "HH:MM-HH:MM"),
                ("08:00-18:00Z", "HH:MM-HH:MM"),
                ("08:60-18:00", "HH:MM-HH:MM"),
                ("24:00-24:00", "HH:MM-HH:MM"),
                ("08:00-24:01", "at 24:00 at the latest"),
                ("22:00-06:00", "may not wrap midnight"),
                ("08:00-08:00", "must end after it starts"),
            )
        ],
    ],
)  # fmt: skip
def test_every_refusal_names_its_field(fields: dict[str, Any], field: str, why: str) -> None:
    got_field, message = refused_field(doc(**fields))
    assert got_field == field
    assert why in message


@pytest.mark.parametrize(
    "fields",
    [
        {"evidence": ["sigv4", "aws-oif", "eks"], "eks": EKS_SELECTORS},
        {"evidence": ["eks"], "eks": EKS_SELECTORS, "principals": []},  # as empty as absent
        {"evidence": ["eks"], "eks": EKS_SELECTORS,
         "conditions": {"time_window": {"days": ["sat"]}}},
        {"conditions": {"time_window": {"hours": ["00:00-24:00", "22:00-24:00"]}}},
        {"eks": None},
    ],
)  # fmt: skip
def test_accepted(fields: dict[str, Any]) -> None:
    parsed = Policy.from_document(doc(**fields))
    assert Policy.from_document(parsed.to_document()) == parsed


# --- deny ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        ({"workload": {"principal_tags": {"team": ["x"]}}}, "workload", "not allowed on a deny"),
        ({"conditions": {"time_window": {"days": ["mon"]}}}, "conditions", "not allowed on a deny"),
        ({"evidence": ["sigv4"]}, "evidence", "must name both"),
        ({"evidence": ["aws-oif", "eks"], "eks": EKS_SELECTORS}, "evidence", "must name both"),
    ],
)
def test_deny_refuses_what_a_caller_could_escape(
    fields: dict[str, Any], field: str, why: str
) -> None:
    got_field, message = refused_field(doc(effect="deny", scopes=None, **fields))
    assert got_field == field and why in message


def test_deny_by_evidence_and_eks_workload() -> None:
    deny_eks = Policy.from_document(
        {"id": "no-sandbox", "effect": "deny", "evidence": ["eks"], "audiences": ["*"],
         "eks": {"clusters": [f"{ACCOUNT}:*:*"], "namespaces": ["payments"],
                 "service_accounts": ["*"]}}
    )  # fmt: skip
    assert Policy.from_document(deny_eks.to_document()) == deny_eks
    assert refusal([eks_policy(), deny_eks], EKS_CALLER).reason == "denied by policy no-sandbox"
    # A deny that names only EKS workloads leaves IAM callers alone.
    assert run([policy(id="a"), deny_eks], OIF_CALLER).policy.id == "a"


def test_a_deny_without_evidence_covers_both_iam_kinds() -> None:
    deny = policy(id="d", effect="deny", scopes=None, principals=[ROLE + "orders-api"])
    allow = policy(id="a", evidence=["sigv4", "aws-oif"])
    for caller in (SIGV4_CALLER, OIF_CALLER):
        assert refusal([allow, deny], caller).reason == "denied by policy d"
    all_kinds = policy(id="a", evidence=["sigv4", "aws-oif", "eks"], eks=EKS_SELECTORS)
    assert run([all_kinds, deny], EKS_CALLER).policy.id == "a"


# --- evidence -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("evidence", "accepted"),
    [
        (None, {"sigv4", "aws-oif"}),
        (["sigv4"], {"sigv4"}),
        (["aws-oif"], {"aws-oif"}),
        (["eks"], {"eks"}),
        (["sigv4", "eks"], {"sigv4", "eks"}),
        (["sigv4", "aws-oif", "eks"], {"sigv4", "aws-oif", "eks"}),
    ],
)
def test_a_policy_applies_only_to_the_evidence_it_names(
    evidence: list[str] | None, accepted: set[str]
) -> None:
    fields: dict[str, Any] = {"evidence": evidence}
    if evidence and "eks" in evidence:
        fields["eks"] = EKS_SELECTORS
    candidate = policy(**fields)
    for caller in (SIGV4_CALLER, OIF_CALLER, EKS_CALLER):
        line = explained([candidate], caller).lines[0]
        assert line.applies is (caller.evidence in accepted), caller.evidence
        if caller.evidence not in accepted:
            assert line.detail == f"does not accept {caller.evidence} evidence"


def test_an_eks_principal_never_matches_principals() -> None:
    """Principals are not consulted for an EKS caller, even a pattern naming its account."""
    both = policy(
        evidence=["sigv4", "eks"],
        principals=[ROLE + "*"],
        eks={**EKS_SELECTORS, "namespaces": ["other"]},
    )
    line = explained([both], EKS_CALLER).lines[0]
    assert (line.applies, line.detail) == (False, "does not match the EKS workload")


@pytest.mark.parametrize(
    ("selectors", "matches"),
    [
        ({}, True),
        ({"clusters": [f"{ACCOUNT}:*:prod"]}, True),
        ({"clusters": [f"{ACCOUNT}:us-*:pr?d"]}, True),
        ({"clusters": [f"{ACCOUNT}:eu-*:prod"]}, False),
        ({"clusters": ["210987654321:us-east-1:prod"]}, False),
        ({"clusters": [f"{ACCOUNT}:us-east-1:prod-*"]}, False),
        ({"clusters": [f"{ACCOUNT}:*:*"]}, True),
        ({"namespaces": ["pay*"]}, True),
        ({"namespaces": ["default"]}, False),
        ({"service_accounts": ["worker-*", "api"]}, True),
        ({"service_accounts": ["api-*"]}, False),
    ],
)
def test_eks_selectors_all_must_match(selectors: dict[str, list[str]], matches: bool) -> None:
    candidate = policy(evidence=["eks"], eks={**EKS_SELECTORS, **selectors})
    assert applies(candidate, EKS_CALLER) is matches


def test_a_cluster_wildcard_never_crosses_a_colon() -> None:
    # `*` in the region part cannot swallow ":prod" and match cluster "prod-x".
    candidate = policy(evidence=["eks"], eks={**EKS_SELECTORS, "clusters": [f"{ACCOUNT}:*:prod"]})
    other = dataclasses.replace(POD, cluster="x")
    caller = dataclasses.replace(EKS_CALLER, eks=other, principal_arn=other.principal)
    assert not applies(candidate, caller)


def test_eks_specificity_is_the_literal_prefix_of_the_selectors() -> None:
    broad = policy(id="a-broad", evidence=["eks"], eks={**EKS_SELECTORS, "service_accounts": ["*"]})
    exact = policy(id="z-exact", evidence=["eks"], eks=EKS_SELECTORS)
    tie = policy(
        id="m-tie", evidence=["eks"], eks={**EKS_SELECTORS, "namespaces": ["payments*", "payments"]}
    )
    assert run([broad, exact], EKS_CALLER).policy.id == "z-exact"
    lines = {line.policy_id: line for line in explained([broad, exact, tie], EKS_CALLER).lines}
    whole = len(POD.principal)
    assert lines["z-exact"].specificity == whole
    assert lines["z-exact"].detail == f"eks {POD.principal!r} (literal prefix {whole})"
    assert lines["a-broad"].specificity == whole - len("api")
    # `payments*` and `payments` tie on their own; the literal one lets the prefix run on.
    assert lines["m-tie"].specificity == whole
    assert run([exact, tie], EKS_CALLER).policy.id == "m-tie"  # tie: the smallest id


def test_principal_ids_cannot_be_checked_for_jwt_callers() -> None:
    pinned = policy(principal_ids=["AROAORDERS"])
    assert run([pinned], SIGV4_CALLER).policy.id == "p"
    error = refusal([pinned], OIF_CALLER)
    assert error.reason == "policy p has principal_ids, which aws-oif evidence cannot show"
    with_eks = policy(evidence=["sigv4", "eks"], eks=EKS_SELECTORS, principal_ids=["AROAORDERS"])
    assert not applies(with_eks, EKS_CALLER)


def test_instance_conditions_need_sigv4_evidence() -> None:
    instance = InstanceIdentity(
        "i-0123456789abcdef0", ACCOUNT, "us-east-1", "us-east-1a", "ami-1", "t4g.micro",
        "rsa2048", "rsa2048/us-east-1", bound=True,
    )  # fmt: skip
    required = policy(instance={"required": True})
    decision = evaluate(
        [required], SIGV4_CALLER, "orders-api", None, instance, default_ttl=900, ttl_cap=3600
    )
    assert decision.policy.id == "p"
    error = refusal([required], OIF_CALLER)
    assert (
        error.reason == "policy p requires instance evidence, which aws-oif evidence cannot bring"
    )


@pytest.mark.parametrize(
    ("instance", "field", "why"),
    [
        ({}, "instance", "names no condition"),
        ({"required": False}, "instance", "names no condition"),
        ({"required": False, "session_binding": False}, "instance", "names no condition"),
        ({"image_ids": []}, "instance.image_ids", "must not be empty"),
        ({"required": True, "regions": []}, "instance.regions", "must not be empty"),
        ({"regions": ["us-*"], "instance_types": []}, "instance.instance_types", "must not"),
        ({"tags": {}}, "instance.tags", "must not be empty"),
        ({"tags": {"team": []}}, "instance.tags.team", "at least one value glob"),
    ],
)
def test_an_instance_block_that_asks_for_nothing_is_refused(instance, field, why) -> None:
    """`instance` makes a policy apply only with instance evidence: a block or a list that
    names nothing (a template's empty value) was read as "any", so the policy applied to
    callers with no instance evidence, aws-oif callers included."""
    got_field, message = refused_field(doc(instance=instance))
    assert (got_field, why in message) == (field, True), message


# --- workload selectors: ok, no, no signal ------------------------------------------------

WORKLOAD_CASES = [
    ("lambda_function_arns", [f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:orders-*"],
     [f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:billing-*"], "lambda_function_arn", FUNCTION),
    ("ec2_instance_arns", [f"arn:aws:ec2:*:{ACCOUNT}:instance/i-*"],
     [f"arn:aws:ec2:*:{ACCOUNT}:instance/i-1*"], "ec2_instance_arn", INSTANCE_ARN),
    ("source_identities", ["*@example.com"], ["bob@*"], "source_identity", "alice@example.com"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "ok", "no", "attribute", "value"), WORKLOAD_CASES)
def test_workload_list_selectors(
    name: str, ok: list[str], no: list[str], attribute: str, value: str
) -> None:
    holds = policy(workload={name: ok})
    assert applies(holds, OIF_CALLER)
    assert explained([holds], OIF_CALLER).lines[0].workload == (f"{name} ok",)
    misses = explained([policy(workload={name: no})], OIF_CALLER).lines[0]
    assert (misses.applies, misses.detail) == (False, f"workload {name} not met")
    assert misses.workload == (f"{name} no ({value})",)
    # The token does not carry it: no signal, never a pass.
    without = dataclasses.replace(
        OIF_CALLER, workload=dataclasses.replace(ATTRIBUTES, **{attribute: None})
    )
    line = explained([holds], without).lines[0]
    assert (line.applies, line.detail, line.workload) == (
        False, f"workload {name} has no signal", (f"{name} no signal",),
    )  # fmt: skip


@pytest.mark.parametrize("name", ["principal_tags", "request_tags"])
def test_workload_tag_selectors(name: str) -> None:
    key, value = next(iter(getattr(ATTRIBUTES, name).items()))
    holds = policy(workload={name: {key: ["x", value[:3] + "*"]}})
    assert explained([holds], OIF_CALLER).lines[0].workload == (f"{name}.{key} ok",)
    wrong = explained([policy(workload={name: {key: ["x"]}})], OIF_CALLER).lines[0]
    assert (wrong.applies, wrong.workload) == (False, (f"{name}.{key} no ({value})",))
    absent = explained([policy(workload={name: {key: ["*"], "other": ["*"]}})], OIF_CALLER).lines[0]
    assert absent.applies is False
    assert absent.workload == (f"{name}.{key} ok", f"{name}.other no (absent)")
    assert absent.detail == f"workload {name}.other not met"
    # A token with no tags of this kind (the claim absent or empty): no signal.
    untagged = dataclasses.replace(
        OIF_CALLER, workload=dataclasses.replace(ATTRIBUTES, **{name: {}})
    )
    line = explained([holds], untagged).lines[0]
    assert (line.applies, line.detail, line.workload) == (
        False, f"workload {name}.{key} has no signal", (f"{name}.{key} no signal",),
    )  # fmt: skip


@pytest.mark.parametrize(
    "selector",
    [
        {"lambda_function_arns": [f"arn:aws:lambda:*:{ACCOUNT}:function:*"]},
        {"ec2_instance_arns": [f"arn:aws:ec2:*:{ACCOUNT}:instance/*"]},
        {"principal_tags": {"team": ["*"]}},
        {"request_tags": {"job": ["*"]}},
        {"source_identities": ["*"]},
    ],
)
def test_no_workload_selector_holds_without_an_oif_token(selector: dict[str, Any]) -> None:
    """A SigV4 caller carries no workload attributes; an EKS caller neither."""
    assert applies(policy(workload=selector), OIF_CALLER)
    line = explained([policy(workload=selector)], SIGV4_CALLER).lines[0]
    assert line.applies is False and line.detail.endswith("has no signal")
    both = policy(evidence=["aws-oif", "eks"], eks=EKS_SELECTORS, workload=selector)
    line = explained([both], EKS_CALLER).lines[0]
    assert line.applies is False and line.detail.endswith("has no signal")


# --- conditions ---------------------------------------------------------------------------

CONDITION_CASES = [
    ("source_vpcs", ["vpc-0123*"], ["vpc-1*"], "source_vpc", VPC),
    ("org_ids", [ORG], ["o-zzz*"], "org_id", ORG),
]


@pytest.mark.parametrize(("name", "ok", "no", "attribute", "value"), CONDITION_CASES)
def test_attribute_conditions(
    name: str, ok: list[str], no: list[str], attribute: str, value: str
) -> None:
    assert explained([policy(conditions={name: ok})], OIF_CALLER).lines[0].conditions == (
        f"{name} ok",
    )
    misses = explained([policy(conditions={name: no})], OIF_CALLER).lines[0]
    assert (misses.applies, misses.detail) == (False, f"condition {name} not met")
    assert misses.conditions == (f"{name} no ({value})",)
    without = dataclasses.replace(
        OIF_CALLER, workload=dataclasses.replace(ATTRIBUTES, **{attribute: None})
    )
    line = explained([policy(conditions={name: ok})], without).lines[0]
    assert (line.applies, line.conditions) == (False, (f"{name} no signal",))
    assert line.detail == f"condition {name} has no signal"


@pytest.mark.parametrize(
    ("globs", "paths", "verdict"),
    [
        ([f"{ORG}/r-ab12/ou-ab12-11111111/*"], (OU,), "ok"),  # the OU itself
        ([f"{ORG}/r-ab12/*"], (f"{ORG}/r-ab12/ou-ab12-22222222/ou-ab12-33333333/",), "ok"),
        ([f"{ORG}/r-ab12/ou-ab12-2*"], (OU, f"{ORG}/r-ab12/ou-ab12-22222222/"), "ok"),  # any
        ([f"{ORG}/r-ab12/ou-ab12-11111111/"], (f"{ORG}/r-ab12/ou-ab12-11111111/ou-ab12-4/",),
         f"no ({ORG}/r-ab12/ou-ab12-11111111/ou-ab12-4/)"),
        ([f"{ORG}/*"], (), "no signal"),
    ],
)  # fmt: skip
def test_ou_paths(globs: list[str], paths: tuple[str, ...], verdict: str) -> None:
    caller = dataclasses.replace(
        OIF_CALLER, workload=dataclasses.replace(ATTRIBUTES, ou_paths=paths)
    )
    line = explained([policy(conditions={"ou_paths": globs})], caller).lines[0]
    assert line.conditions == (f"ou_paths {verdict}",)
    assert line.applies is (verdict == "ok")


@pytest.mark.parametrize(
    ("version", "verdict"), [("2.0", "ok"), ("1.0", "no (1.0)"), (None, "no signal")]
)
def test_imds_v2(version: str | None, verdict: str) -> None:
    caller = dataclasses.replace(
        OIF_CALLER, workload=dataclasses.replace(ATTRIBUTES, imds_version=version)
    )
    line = explained([policy(conditions={"imds_v2": True})], caller).lines[0]
    assert (line.applies, line.conditions) == (verdict == "ok", (f"imds_v2 {verdict}",))


@pytest.mark.parametrize(
    "condition",
    [{"imds_v2": True}, {"source_vpcs": ["vpc-*"]}, {"org_ids": ["o-*"]}, {"ou_paths": ["o-*"]}],
)
def test_no_attribute_condition_holds_without_an_oif_token(condition: dict[str, Any]) -> None:
    assert applies(policy(conditions=condition), OIF_CALLER)
    line = explained([policy(conditions=condition)], SIGV4_CALLER).lines[0]
    assert line.applies is False and line.detail.endswith("has no signal")
    assert line.conditions == (f"{next(iter(condition))} no signal",)


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("window", "when", "holds"),
    [
        ({"hours": ["08:00-18:00"]}, "2026-11-30T08:00:00Z", True),  # the start is in
        ({"hours": ["08:00-18:00"]}, "2026-11-30T07:59:59.999Z", False),
        ({"hours": ["08:00-18:00"]}, "2026-11-30T17:59:59.999Z", True),
        ({"hours": ["08:00-18:00"]}, "2026-11-30T18:00:00Z", False),  # the end is out
        ({"hours": ["08:00-18:00"]}, "2026-11-30T09:00:00+02:00", False),  # 07:00 UTC
        ({"hours": ["22:00-24:00", "00:00-06:00"]}, "2026-11-30T23:59:59Z", True),
        ({"hours": ["22:00-24:00", "00:00-06:00"]}, "2026-12-01T00:00:00Z", True),
        ({"hours": ["22:00-24:00", "00:00-06:00"]}, "2026-12-01T06:00:00Z", False),
        ({"days": ["mon"]}, "2026-11-30T00:00:00Z", True),
        ({"days": ["mon"]}, "2026-11-30T23:59:59Z", True),
        ({"days": ["mon"]}, "2026-12-01T00:00:00Z", False),  # Tuesday
        ({"days": ["sat", "sun"]}, "2026-11-29T12:00:00Z", True),  # Sunday
        ({"days": ["mon"], "hours": ["08:00-18:00"]}, "2026-11-30T12:00:00Z", True),
        ({"days": ["mon"], "hours": ["08:00-18:00"]}, "2026-12-01T12:00:00Z", False),
        ({"days": ["mon"], "hours": ["08:00-18:00"]}, "2026-11-30T20:00:00Z", False),
    ],
)
def test_time_windows_at_their_boundaries(window: dict[str, Any], when: str, holds: bool) -> None:
    candidate = policy(conditions={"time_window": window})
    for caller in (SIGV4_CALLER, OIF_CALLER):  # every kind of evidence has a clock
        line = explained([candidate], caller, at(when)).lines[0]
        assert line.applies is holds
        assert (line.conditions[0] == "time_window ok") is holds
    eks_window = eks_policy(conditions={"time_window": window})
    assert applies(eks_window, EKS_CALLER, at(when)) is holds


def test_a_time_window_verdict_shows_the_time_judged() -> None:
    line = explained([policy(conditions={"time_window": {"days": ["sat"]}})], OIF_CALLER).lines[0]
    assert line.conditions == ("time_window no (mon 12:00 UTC)",)
    assert line.detail == "condition time_window not met"


def test_now_defaults_to_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tokex.policy.evaluate.time.time", lambda: at("2026-12-05T12:00:00Z"))
    weekdays = policy(conditions={"time_window": {"days": ["mon", "tue", "wed", "thu", "fri"]}})
    with pytest.raises(InvalidTarget):
        evaluate([weekdays], OIF_CALLER, "orders-api", None, None, default_ttl=900, ttl_cap=3600)
    assert run([weekdays], OIF_CALLER, now=MONDAY_NOON).policy.id == "p"


# --- explanations -------------------------------------------------------------------------


def test_explanation_shows_every_verdict_and_the_audit_reason_stays_short() -> None:
    odd = dataclasses.replace(
        OIF_CALLER,
        workload=dataclasses.replace(
            ATTRIBUTES, source_vpc="vpc-1", request_tags={"job": "x\n" * 100}
        ),
    )
    full = Policy.from_document(FULL_OIF)
    result = explained([full], odd)
    line = result.lines[0]
    assert line.workload == (
        "lambda_function_arns ok",
        "ec2_instance_arns ok",
        "principal_tags.team ok",
        "request_tags.job no ('" + "x\\n" * 32 + "…')",
        "source_identities ok",
    )
    assert line.conditions == (
        "time_window ok", "imds_v2 ok", "source_vpcs no (vpc-1)", "org_ids ok", "ou_paths ok",
    )  # fmt: skip
    text = result.render()
    assert "\n" not in text.splitlines()[0] and len(text.splitlines()) == 2
    assert (
        "p  allow  skipped: workload request_tags.job not met; workload: lambda_function_arns ok, "
        in text
    )
    assert (
        "; conditions: time_window ok, imds_v2 ok, source_vpcs no (vpc-1), org_ids ok, ou_paths ok"
        in text
    )
    assert result.error is not None
    assert result.error.reason == "policy p workload request_tags.job not met"
    assert "x" not in result.error.reason.replace("request_tags", "")


def test_an_applying_line_shows_its_verdicts() -> None:
    result = explained([Policy.from_document(FULL_OIF)], OIF_CALLER)
    assert result.decision is not None and result.decision.policy.id == "p"
    first = result.render().splitlines()[0]
    assert first.startswith(f"p  allow  applies: principal '{ROLE}orders-*' (literal prefix ")
    assert first.endswith(
        "; conditions: time_window ok, imds_v2 ok, source_vpcs ok, org_ids ok, ou_paths ok"
    )


def test_near_misses_name_conditions_and_evidence_misses_stay_out() -> None:
    error = refusal(
        [
            policy(id="a", conditions={"source_vpcs": ["vpc-9*"]}),
            policy(id="b", evidence=["sigv4"]),
        ],
        OIF_CALLER,
    )
    assert error.reason == "policy a condition source_vpcs not met"
    assert refusal([policy(evidence=["sigv4"])], OIF_CALLER).reason == "no policy matches principal"
