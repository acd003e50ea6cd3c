"""Policy `instance.tags` conditions: evaluate() with real policies and InstanceTagLookup
against moto's STS and EC2 (in process). DescribeInstances calls are counted with a
botocore hook on the real EC2 client."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tokex.adapters.ec2 import (
    AssumedCredentials,
    Ec2ClientFactory,
    InstanceTagLookup,
    default_ec2_client_factory,
)
from tokex.errors import InvalidGrant, InvalidTarget
from tokex.evidence.identity import CallerIdentity, InstanceIdentity
from tokex.policy.evaluate import Decision, TagLookup, evaluate, explain
from tokex.policy.model import Policy

ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-west-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/orders-api"


@pytest.fixture(scope="module")
def ec2() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


@pytest.fixture(scope="module")
def image(ec2: Any) -> str:
    return str(ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])


@pytest.fixture(scope="module")
def create_ec2() -> Ec2ClientFactory:
    return default_ec2_client_factory()


@pytest.fixture
def describes() -> list[Any]:
    return []


@pytest.fixture
def lookup(ec2: Any, create_ec2: Ec2ClientFactory, describes: list[Any]) -> InstanceTagLookup:
    def factory(region: str, credentials: AssumedCredentials) -> Any:
        client = create_ec2(region, credentials)
        event = "before-call.ec2.DescribeInstances"
        client.meta.events.register(event, lambda **kwargs: describes.append(kwargs))
        return client

    sts = boto3.client("sts", region_name="us-east-1")
    return InstanceTagLookup(sts, role_name="tokex-tag-reader", ec2_client_factory=factory)


def launch(ec2: Any, image: str, **tags: str) -> str:
    response = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="m7g.large",
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )  # fmt: skip
    return str(response["Instances"][0]["InstanceId"])


def caller(instance_id: str) -> CallerIdentity:
    return CallerIdentity(
        principal_arn=ROLE, arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-api/{instance_id}",
        account=ACCOUNT, user_id=f"AROAORDERS:{instance_id}", principal_id="AROAORDERS",
        partition="aws", session_name=instance_id,
    )  # fmt: skip


def instance(instance_id: str) -> InstanceIdentity:
    return InstanceIdentity(
        instance_id=instance_id, account=ACCOUNT, region=REGION, availability_zone="eu-west-1a",
        image_id="ami-0123456789abcdef0", instance_type="m7g.large", variant="rsa2048",
        certificate=f"rsa2048/{REGION}", bound=True,
    )  # fmt: skip


def policy(policy_id: str = "orders-tagged", **instance_conditions: Any) -> Policy:
    return Policy.from_document(
        {
            "id": policy_id,
            "effect": "allow",
            "principals": [f"arn:aws:iam::{ACCOUNT}:role/orders-*"],
            "audiences": ["orders-api"],
            "scopes": ["orders:read"],
            "instance": {"required": True, **instance_conditions},
        }
    )


TAGGED = policy(tags={"team": ["orders"], "env": ["prod", "staging-*"]})


def decide(policies: list[Policy], instance_id: str, lookup: TagLookup | None) -> Decision:
    return evaluate(
        policies, caller(instance_id), "orders-api", None, instance(instance_id),
        default_ttl=900, ttl_cap=3600, tag_lookup=lookup,
    )  # fmt: skip


def test_matching_tags_grant(ec2, image, lookup):
    instance_id = launch(ec2, image, team="orders", env="staging-2", other="x")
    decision = decide([TAGGED], instance_id, lookup)
    assert (decision.policy.id, decision.scopes) == ("orders-tagged", ("orders:read",))


@pytest.mark.parametrize(
    "tags",
    [{"team": "billing", "env": "prod"}, {"team": "orders"}, {"team": "orders", "env": "dev"}],
    ids=["wrong-value", "missing-key", "glob-miss"],
)
def test_tag_mismatch_is_invalid_target(ec2, image, lookup, tags):
    instance_id = launch(ec2, image, **tags)
    with pytest.raises(InvalidTarget) as info:
        decide([TAGGED], instance_id, lookup)
    assert "does not match" in info.value.reason
    assert "tag" not in info.value.description  # the caller learns nothing about policies


def test_tags_of_a_stopped_instance_do_not_grant(ec2, image, lookup):
    instance_id = launch(ec2, image, team="orders", env="prod")
    ec2.stop_instances(InstanceIds=[instance_id])
    # Not even through a policy without tags: the evidence is of a stopped instance.
    with pytest.raises(InvalidGrant, match=f"instance {instance_id} is not running"):
        decide([TAGGED, policy("orders-any")], instance_id, lookup)


def test_a_policy_that_cannot_apply_otherwise_reads_no_tags(ec2, image, lookup, describes):
    """Its time window closed (a Monday noon, a Saturday window), a policy with tag
    conditions must not look the tags up: for a stopped instance the lookup refuses the
    exchange, which the tag-free policy grants."""
    instance_id = launch(ec2, image, team="orders", env="prod")
    ec2.stop_instances(InstanceIds=[instance_id])
    weekend = Policy.from_document(
        {**TAGGED.to_document(), "conditions": {"time_window": {"days": ["sat"]}}}
    )
    monday_noon = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
    decision = evaluate(
        [weekend, policy("z-orders-any")], caller(instance_id), "orders-api", None,
        instance(instance_id), default_ttl=900, ttl_cap=3600, tag_lookup=lookup, now=monday_noon,
    )  # fmt: skip
    assert decision.policy.id == "z-orders-any"
    assert describes == []


def test_unknown_instance_is_refused(lookup):
    with pytest.raises(InvalidGrant, match="is not running"):
        decide([TAGGED], "i-0fedcba9876543210", lookup)


def test_the_lookup_is_cached_across_exchanges(ec2, image, lookup, describes):
    instance_id = launch(ec2, image, team="orders", env="prod")
    for _ in range(3):
        assert decide([TAGGED], instance_id, lookup).policy.id == "orders-tagged"
    assert len(describes) == 1


def test_no_lookup_unless_a_policy_reaches_its_tag_conditions(ec2, image, lookup, describes):
    instance_id = launch(ec2, image, team="orders", env="prod")
    other_type = policy(instance_types=["c7g.*"], tags={"team": ["orders"]})
    with pytest.raises(InvalidTarget):
        decide([other_type], instance_id, lookup)
    assert decide([policy("orders-any")], instance_id, lookup).policy.id == "orders-any"
    assert describes == []


def test_unreadable_tags_fail_closed_but_other_policies_still_apply(ec2, image):
    # The role in the target account is missing (AssumeRole is refused).
    sts = boto3.client("sts", region_name="us-east-1")
    stub = Stubber(sts)
    stub.add_client_error("assume_role", service_error_code="AccessDenied", http_status_code=403)
    stub.activate()
    lookup = InstanceTagLookup(sts, role_name="tokex-tag-reader")
    instance_id = launch(ec2, image, team="orders", env="prod")
    with pytest.raises(InvalidTarget):
        decide([TAGGED], instance_id, lookup)
    untagged = policy("z-orders-any")
    explanation = explain(
        [TAGGED, untagged], caller(instance_id), "orders-api", None, instance(instance_id),
        default_ttl=900, ttl_cap=3600, tag_lookup=lookup,
    )  # fmt: skip
    assert explanation.decision is not None
    assert explanation.decision.policy.id == "z-orders-any"
    assert "instance tag" in explanation.render()
