"""Policy evaluation (docs/policies.md "Evaluation"): deny wins, the most specific allow applies."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from tokex.errors import InvalidGrant, InvalidScope, InvalidTarget, TemporarilyUnavailable
from tokex.evidence.identity import CallerIdentity, InstanceIdentity
from tokex.policy.evaluate import Decision, Explanation, TagLookup, evaluate, explain
from tokex.policy.model import Policy

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/"
CALLER = CallerIdentity(
    principal_arn=ROLE + "orders-api",
    arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-api/i-0123456789abcdef0",
    account=ACCOUNT,
    user_id="AROAORDERS:i-0123456789abcdef0",
    principal_id="AROAORDERS",
    partition="aws",
    session_name="i-0123456789abcdef0",
)
STRANGER = dataclasses.replace(CALLER, principal_arn=ROLE + "stranger", principal_id="AROASTRANGER")
INSTANCE = InstanceIdentity(
    instance_id="i-0123456789abcdef0",
    account=ACCOUNT,
    region="eu-west-1",
    availability_zone="eu-west-1a",
    image_id="ami-0abc",
    instance_type="m7g.large",
    variant="rsa2048",
    certificate="rsa2048/eu-west-1",
    bound=True,
)


def policy(policy_id: str = "p", **fields: Any) -> Policy:
    doc: dict[str, Any] = {
        "id": policy_id,
        "effect": "allow",
        "principals": [ROLE + "orders-*"],
        "audiences": ["orders-api"],
        "scopes": ["orders:read", "orders:write"],
    }
    doc.update(fields)
    if doc["effect"] == "deny":
        doc.pop("scopes", None)
    return Policy.from_document(doc)


def run(
    policies: list[Policy],
    *,
    caller: CallerIdentity = CALLER,
    audience: str = "orders-api",
    scopes: tuple[str, ...] | None = None,
    instance: InstanceIdentity | None = None,
    tag_lookup: TagLookup | None = None,
) -> Decision:
    return evaluate(
        policies,
        caller,
        audience,
        scopes,
        instance,
        default_ttl=900,
        ttl_cap=3600,
        tag_lookup=tag_lookup,
    )


def refusal(policies: list[Policy], **kwargs: Any) -> InvalidTarget:
    with pytest.raises(InvalidTarget) as info:
        run(policies, **kwargs)
    return info.value


def test_allow_grants_scopes_ttl_and_claims() -> None:
    decision = run([policy(max_ttl_seconds=600, claims={"team": "orders"})])
    assert decision.policy.id == "p"
    assert decision.scopes == ("orders:read", "orders:write")
    assert decision.ttl_seconds == 600
    assert decision.claims == {"team": "orders"}


def test_decision_claims_are_a_copy() -> None:
    chosen = policy(claims={"nested": {"k": "v"}})
    run([chosen]).claims["nested"]["k"] = "changed"
    assert chosen.claims == {"nested": {"k": "v"}}


def test_deny_wins_over_every_allow() -> None:
    deny = policy("zz-deny", effect="deny", principals=[ROLE + "*"], audiences=["orders-*"])
    error = refusal([policy("exact", principals=[ROLE + "orders-api"]), deny])
    assert error.reason == "denied by policy zz-deny"


def test_a_deny_matches_the_principal_whatever_the_case_an_allow_does_not() -> None:
    """IAM names are unique whatever their case: a deny for `Orders-API` can only mean
    `orders-api`, and a case typo must not fail open. An allow stays exact."""
    deny = policy("d", effect="deny", principals=[ROLE + "Orders-*"])
    assert refusal([policy("a"), deny]).reason == "denied by policy d"
    # And the other way round: a caller's name in another case than the deny's.
    shouting = dataclasses.replace(CALLER, principal_arn=ROLE + "ORDERS-API")
    lower_deny = policy("d", effect="deny", principals=[ROLE + "orders-api"])
    allow_all = policy("a", principals=[ROLE + "*"])
    assert refusal([allow_all, lower_deny], caller=shouting).reason == "denied by policy d"
    assert refusal([policy("a", principals=[ROLE + "Orders-api"])]).reason == (
        "no policy matches principal"
    )


def test_a_deny_for_a_user_without_a_path_denies_that_user_at_any_path() -> None:
    """IAM user names are unique in an account whatever their path (revocation keys leave
    it out too): a deny for `user/bob` let `user/ops/bob` through to an allow, and anyone
    who may change bob's path could take him out of the deny. A deny with a path, and an
    allow, match the path as written."""
    user = f"arn:aws:iam::{ACCOUNT}:user/"
    bob_in_ops = dataclasses.replace(
        CALLER, principal_arn=user + "ops/bob", arn=user + "ops/bob", principal_id="AIDABOB"
    )
    allow = policy("a", principals=[user + "*", user + "*/*"])
    assert run([allow], caller=bob_in_ops).policy.id == "a"
    for pattern in ("bob", "BOB", "b?b", "*"):
        deny = policy("d", effect="deny", principals=[user + pattern])
        assert refusal([allow, deny], caller=bob_in_ops).reason == "denied by policy d"
    # A path in the deny is part of what it names; an allow never drops a path.
    pathed_deny = policy("d", effect="deny", principals=[user + "dev/bob"])
    assert run([allow, pathed_deny], caller=bob_in_ops).policy.id == "a"
    assert refusal([policy("a", principals=[user + "bob"])], caller=bob_in_ops).reason == (
        "no policy matches principal"
    )


def test_deny_for_another_audience_does_not_apply() -> None:
    deny = policy("d", effect="deny", audiences=["billing-api"])
    assert run([policy("a"), deny]).policy.id == "a"


def test_most_specific_allow_is_chosen() -> None:
    broad = policy("a-broad", principals=[ROLE + "*"], scopes=["orders:read"])
    narrow = policy("z-narrow", principals=[ROLE + "orders-*"], scopes=["orders:write"])
    exact = policy("m-exact", principals=[ROLE + "orders-api"], scopes=[])
    assert run([broad, narrow]).policy.id == "z-narrow"
    assert run([broad, narrow, exact]).policy.id == "m-exact"


def test_specificity_uses_the_pattern_that_matched() -> None:
    # Its other pattern is long but does not match this caller.
    other = policy("a", principals=[ROLE + "*", ROLE + "orders-api-but-longer"])
    assert run([other, policy("b", principals=[ROLE + "ord*"])]).policy.id == "b"


def test_an_exact_name_beats_a_pattern_of_the_same_literal_prefix() -> None:
    """`role/orders-api` and `role/orders-api*` share a literal prefix: the read-only
    policy of that one role lost to the family's, by id, with every scope it grants."""
    family = policy("a-family", principals=[ROLE + "orders-api*"], scopes=["orders:write"])
    readonly = policy("z-readonly", principals=[ROLE + "orders-api"], scopes=["orders:read"])
    assert run([family, readonly], scopes=()).policy.id == "z-readonly"
    assert run([readonly, family], scopes=()).scopes == ("orders:read",)
    # Within one policy too: its exact pattern is the one that matched.
    both = policy("b-both", principals=[ROLE + "orders-api*", ROLE + "orders-api"], scopes=[])
    assert run([family, both], scopes=()).policy.id == "b-both"


def test_ties_are_broken_by_id() -> None:
    first, second = policy("alpha", scopes=["x"]), policy("beta", scopes=["y"])
    assert run([second, first]).policy.id == "alpha"
    assert run([first, second]).policy.id == "alpha"


def test_scopes_none_requested_means_all_of_the_policy() -> None:
    assert run([policy()], scopes=()).scopes == ("orders:read", "orders:write")


def test_scopes_subset_is_granted() -> None:
    decision = run([policy()], scopes=("orders:write", "orders:write"))
    assert decision.scopes == ("orders:write",)


def test_scopes_not_granted_are_invalid_scope() -> None:
    with pytest.raises(InvalidScope) as info:
        run([policy()], scopes=("orders:read", "orders:admin"))
    assert info.value.description == "requested scope not granted: orders:admin"
    assert "policy p" in info.value.reason


def test_invalid_scope_description_is_capped() -> None:
    requested = (*(f"s{i}-" + "x" * 500 for i in range(50)), '"\\')
    with pytest.raises(InvalidScope) as info:
        run([policy()], scopes=requested)
    assert len(info.value.description) < 400
    assert "(and 46 more)" in info.value.description


def test_scopes_come_from_the_chosen_policy_only() -> None:
    broad = policy("broad", principals=[ROLE + "*"], scopes=["orders:admin"])
    with pytest.raises(InvalidScope):
        run([broad, policy("narrow")], scopes=("orders:admin",))


def test_ttl_defaults_and_is_capped() -> None:
    assert run([policy()]).ttl_seconds == 900
    long = Policy.from_document({**policy().to_document(), "max_ttl_seconds": 7200}, ttl_cap=43200)
    assert run([long]).ttl_seconds == 3600


def test_principal_ids_pin_the_principal() -> None:
    pinned = policy(principal_ids=["AROAOLDROLE"])
    recreated = refusal([pinned])
    assert "principal id" in recreated.reason
    assert run([policy(principal_ids=["AROAOLDROLE", "AROAORDERS"])]).policy.id == "p"


def test_disabled_policies_are_ignored() -> None:
    refusal([policy(enabled=False)])
    deny = policy("d", effect="deny", enabled=False)
    assert run([policy(), deny]).policy.id == "p"


def test_audience_globs() -> None:
    assert run([policy(audiences=["orders-*"])], audience="orders-v2").policy.id == "p"
    refusal([policy(audiences=["orders-*"])], audience="billing")
    refusal([policy(audiences=["orders-api"])], audience="orders-*")  # caller `*` is data


def test_same_description_for_unknown_denied_and_near_miss_callers() -> None:
    deny = policy("d", effect="deny", principals=[ROLE + "orders-api"])
    unknown = refusal([policy()], caller=STRANGER)
    denied = refusal([policy(), deny])
    instance_missing = refusal([policy(instance={"required": True})])
    no_policies = refusal([])
    descriptions = {e.description for e in (unknown, denied, instance_missing, no_policies)}
    assert descriptions == {"no policy allows this caller a token for audience 'orders-api'"}
    assert unknown.reason == no_policies.reason == "no policy matches principal"
    assert denied.reason == "denied by policy d"
    assert instance_missing.reason == "policy p requires instance evidence"


def test_odd_audience_is_not_echoed() -> None:
    error = refusal([policy()], audience="<script>\n")
    assert error.description == "no policy allows this caller a token for this audience"


def test_instance_required_without_evidence() -> None:
    required = policy(instance={"required": True})
    refusal([required])
    assert run([required], instance=INSTANCE).policy.id == "p"


def test_unbound_evidence_does_not_count() -> None:
    unbound = dataclasses.replace(INSTANCE, bound=False)
    error = refusal([policy(instance={"required": True})], instance=unbound)
    assert "bound to the caller" in error.reason


def test_any_condition_needs_evidence_even_when_not_required() -> None:
    conditional = policy(instance={"required": False, "regions": ["eu-*"]})
    refusal([conditional])
    assert run([conditional], instance=INSTANCE).policy.id == "p"


def test_policy_without_instance_ignores_evidence() -> None:
    unbound = dataclasses.replace(INSTANCE, bound=False)
    assert run([policy()], instance=unbound).policy.id == "p"


@pytest.mark.parametrize(
    ("conditions", "matches"),
    [
        ({"regions": ["eu-west-1"]}, True),
        ({"regions": ["us-*", "eu-*"]}, True),
        ({"regions": ["us-*"]}, False),
        ({"availability_zones": ["eu-west-1?"]}, True),
        ({"availability_zones": ["eu-west-1b"]}, False),
        ({"image_ids": ["ami-0abc"]}, True),
        ({"image_ids": ["ami-0ab"]}, False),
        ({"instance_types": ["m7g.*"]}, True),
        ({"instance_types": ["m7g.*"], "regions": ["us-east-1"]}, False),
        ({"instance_types": ["t3.*"]}, False),
        ({"accounts": [ACCOUNT]}, True),
        ({"accounts": ["210987654321"]}, False),
    ],
)
def test_instance_attribute_globs(conditions: dict[str, Any], matches: bool) -> None:
    candidate = policy(instance={"required": True, **conditions})
    if matches:
        assert run([candidate], instance=INSTANCE).policy.id == "p"
    else:
        assert "does not match" in refusal([candidate], instance=INSTANCE).reason


def test_tag_conditions_use_the_lookup_once() -> None:
    calls: list[str] = []

    def lookup(instance: InstanceIdentity) -> Mapping[str, str]:
        calls.append(instance.instance_id)
        return {"team": "orders-blue", "env": "prod"}

    tagged = [
        policy("a", instance={"tags": {"team": ["orders-*"], "env": ["prod"]}}),
        policy("b", instance={"tags": {"team": ["billing"]}}),
    ]
    assert run(tagged, instance=INSTANCE, tag_lookup=lookup).policy.id == "a"
    assert calls == [INSTANCE.instance_id]
    error = refusal(tagged[1:], instance=INSTANCE, tag_lookup=lookup)
    assert "tag 'team'" in error.reason
    # No lookup configured: tag conditions cannot hold.
    assert "no tag lookup" in refusal(tagged[:1], instance=INSTANCE).reason


def test_no_tag_lookup_when_no_policy_reaches_tags() -> None:
    def lookup(instance: InstanceIdentity) -> Mapping[str, str]:
        raise AssertionError("must not be called")

    tagged = policy(instance={"tags": {"team": ["orders"]}}, audiences=["other"])
    assert run([policy("plain"), tagged], instance=INSTANCE, tag_lookup=lookup)


@pytest.mark.parametrize(
    "failure",
    [
        InvalidGrant("instance i-0123456789abcdef0 is not running", reason="instance_not_running"),
        TemporarilyUnavailable("instance tags cannot be read right now, retry later"),
    ],
)
def test_a_denied_caller_is_refused_before_any_tag_lookup(failure: Exception) -> None:
    """Tags were looked up for an allow before denies were weighed: a denied caller with
    a stopped instance heard "not running" (or a 503 while EC2 throttled) instead of
    invalid_target, which told it an allow with tag conditions names it, and cost an
    AssumeRole and a DescribeInstances."""

    def lookup(instance: InstanceIdentity) -> Mapping[str, str]:
        raise failure

    tagged = policy("a-tagged", instance={"tags": {"team": ["orders"]}})
    deny = policy("z-deny", effect="deny", principals=[CALLER.principal_arn])
    error = refusal([tagged, deny], instance=INSTANCE, tag_lookup=lookup)
    assert error.reason == "denied by policy z-deny"
    lines = explain(
        [tagged, deny], CALLER, "orders-api", None, INSTANCE,
        default_ttl=900, ttl_cap=3600, tag_lookup=lookup,
    ).lines  # fmt: skip
    assert lines[0].detail == "has tag conditions, not looked up: a deny applies"
    with pytest.raises(type(failure)):  # no deny: the lookup's answer, as before
        run([tagged], instance=INSTANCE, tag_lookup=lookup)


MONDAY_NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()
LOOKUP_FAILURES = [
    InvalidGrant("instance i-0123456789abcdef0 is not running", reason="instance_not_running"),
    TemporarilyUnavailable("instance tags cannot be read right now, retry later"),
]
TAGS = {"tags": {"team": ["orders"]}}
# Policies with tag conditions that cannot apply whatever the tags: a time window closed on
# Mondays; a workload selector that a SigV4 caller (no workload attributes) cannot meet.
CANNOT_APPLY = {
    "closed time window": {"instance": TAGS, "conditions": {"time_window": {"days": ["sat"]}}},
    "workload selector": {
        "instance": TAGS,
        "evidence": ["sigv4", "aws-oif"],
        "workload": {"ec2_instance_arns": [f"arn:aws:ec2:*:{ACCOUNT}:instance/*"]},
    },
}


def explained(policies: list[Policy], tag_lookup: TagLookup | None) -> Explanation:
    return explain(
        policies, CALLER, "orders-api", None, INSTANCE,
        default_ttl=900, ttl_cap=3600, tag_lookup=tag_lookup, now=MONDAY_NOON,
    )  # fmt: skip


def failing(failure: Exception, calls: list[str]) -> TagLookup:
    def lookup(instance: InstanceIdentity) -> Mapping[str, str]:
        calls.append(instance.instance_id)
        raise failure

    return lookup


@pytest.mark.parametrize("failure", LOOKUP_FAILURES)
@pytest.mark.parametrize("cannot_apply", CANNOT_APPLY.values(), ids=list(CANNOT_APPLY))
def test_no_tag_lookup_for_a_policy_that_cannot_apply_otherwise(
    cannot_apply: dict[str, Any], failure: Exception
) -> None:
    """A policy's tags were looked up before its workload selectors and conditions were
    judged: a lookup's failure (EC2 throttling, a stopped instance) refused an exchange
    that a tag-free allow grants, for a policy that could not have applied anyway."""
    calls: list[str] = []
    policies = [policy("a-tagged", **cannot_apply), policy("b-plain", scopes=["orders:read"])]
    result = explained(policies, failing(failure, calls))
    assert result.decision is not None and result.decision.policy.id == "b-plain"
    assert calls == []
    assert not result.lines[0].applies
    assert result.lines[0].detail.split()[0] in ("condition", "workload")


@pytest.mark.parametrize("failure", LOOKUP_FAILURES)
def test_a_policy_that_otherwise_applies_still_fails_closed_on_its_tag_lookup(
    failure: Exception,
) -> None:
    calls: list[str] = []
    weekday = {"time_window": {"days": ["mon", "tue", "wed", "thu", "fri"]}}
    tagged = policy("a-tagged", instance=TAGS, conditions=weekday)
    with pytest.raises(type(failure)) as raised:
        explained([tagged, policy("b-plain")], failing(failure, calls))
    assert raised.value is failure  # the lookup's own answer, unchanged
    assert calls == [INSTANCE.instance_id]


def test_explain_judges_tags_after_workload_and_conditions() -> None:
    """Each verdict is still shown: a policy whose tags do not match shows its conditions'
    verdicts too (they are judged first now), one whose window is closed shows that."""
    calls: list[str] = []

    def lookup(instance: InstanceIdentity) -> Mapping[str, str]:
        calls.append(instance.instance_id)
        return {"team": "billing"}

    closed = policy("a-weekend", instance=TAGS, conditions={"time_window": {"days": ["sat"]}})
    open_ = policy("b-weekday", instance=TAGS, conditions={"time_window": {"days": ["mon"]}})
    result = explained([closed], lookup)
    assert calls == []
    assert result.render() == (
        "a-weekend  allow  skipped: condition time_window not met;"
        " conditions: time_window no (mon 12:00 UTC)\n"
        "=> refused (invalid_target): policy a-weekend condition time_window not met"
    )
    result = explained([closed, open_], lookup)
    assert calls == [INSTANCE.instance_id]
    assert result.render() == (
        "a-weekend  allow  skipped: condition time_window not met;"
        " conditions: time_window no (mon 12:00 UTC)\n"
        "b-weekday  allow  skipped: instance tag 'team' does not match;"
        " conditions: time_window ok\n"
        "=> refused (invalid_target): policy a-weekend condition time_window not met;"
        " policy b-weekday instance tag 'team' does not match"
    )


def test_explain_agrees_with_evaluate() -> None:
    policies = [
        policy("a-allow"),
        policy("b-off", enabled=False),
        policy("c-other", principals=[ROLE + "billing-*"]),
        policy("d-audience", audiences=["billing"]),
        policy("e-deny", effect="deny", audiences=["billing"]),
    ]
    result = explain(policies, CALLER, "orders-api", None, None, default_ttl=900, ttl_cap=3600)
    assert isinstance(result, Explanation)
    assert result.decision == run(policies)
    assert [(line.policy_id, line.applies) for line in result.lines] == [
        ("a-allow", True), ("b-off", False), ("c-other", False),
        ("d-audience", False), ("e-deny", False),
    ]  # fmt: skip
    text = result.render()
    assert "disabled" in text and "does not cover the audience" in text
    assert "=> allowed by a-allow" in text

    refused = explain(policies, CALLER, "billing", None, None, default_ttl=900, ttl_cap=3600)
    assert refused.decision is None
    assert isinstance(refused.error, InvalidTarget)
    assert refused.error.reason == "denied by policy e-deny"
    assert "=> refused (invalid_target): denied by policy e-deny" in refused.render()


def test_session_binding_requires_the_instance_profile_session_itself() -> None:
    policy = Policy.from_document(
        {
            "id": "bound",
            "effect": "allow",
            "principals": ["arn:aws:iam::123456789012:role/app"],
            "audiences": ["api"],
            "instance": {"session_binding": True},
        }
    )
    assert policy.to_document()["instance"]["session_binding"] is True
    instance = InstanceIdentity(
        instance_id="i-0123456789abcdef0",
        account="123456789012",
        region="us-east-1",
        availability_zone="us-east-1a",
        image_id="ami-0123456789abcdef0",
        instance_type="t4g.micro",
        variant="rsa2048",
        certificate="rsa2048/us-east-1",
        bound=True,
    )
    session = CallerIdentity(
        principal_arn="arn:aws:iam::123456789012:role/app",
        arn="arn:aws:sts::123456789012:assumed-role/app/i-0123456789abcdef0",
        account="123456789012",
        user_id="AROAEXAMPLE:i-0123456789abcdef0",
        principal_id="AROAEXAMPLE",
        partition="aws",
        session_name="i-0123456789abcdef0",
    )
    ttl = {"default_ttl": 900, "ttl_cap": 3600}
    assert evaluate([policy], session, "api", None, instance, **ttl).policy.id == "bound"
    other_session = dataclasses.replace(session, session_name="ci-job-42")
    with pytest.raises(InvalidTarget):
        evaluate([policy], other_session, "api", None, instance, **ttl)
    with pytest.raises(InvalidTarget):
        evaluate([policy], session, "api", None, None, **ttl)
