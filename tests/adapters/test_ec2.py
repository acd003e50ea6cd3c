"""InstanceTagLookup against moto's STS and EC2 (in process): state handling, caching of
tags and of assumed credentials, error mapping (adapters/ec2.py)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber
from moto import mock_aws

from tokex import identifiers
from tokex.adapters import ec2 as ec2_tags
from tokex.adapters.ec2 import (
    AssumedCredentials,
    InstanceTagLookup,
    default_ec2_client_factory,
)
from tokex.errors import ConfigurationError, InvalidGrant, TemporarilyUnavailable
from tokex.evidence.identity import InstanceIdentity
from tokex.settings import Settings
from tokex.wiring import build_token_exchange

ACCOUNT = "123456789012"  # moto's default account: where the instances are
REGION = "eu-west-1"
UNKNOWN_ID = "i-0123456789abcdef0"
ROLE_NAME = "tokex-tag-reader"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        yield {"ec2": ec2, "image": image}


def run_instance(aws: dict[str, Any], **tags: str) -> str:
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    response = aws["ec2"].run_instances(
        ImageId=aws["image"], MinCount=1, MaxCount=1, InstanceType="t3.micro",
        TagSpecifications=spec if tags else [],
    )  # fmt: skip
    return str(response["Instances"][0]["InstanceId"])


def identity(instance_id: str = UNKNOWN_ID, **changes: Any) -> InstanceIdentity:
    base = InstanceIdentity(
        instance_id=instance_id, account=ACCOUNT, region=REGION, availability_zone="eu-west-1a",
        image_id="ami-0123456789abcdef0", instance_type="t3.micro", variant="rsa2048",
        certificate="rsa2048/eu-west-1", bound=True,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """API parameters of each call the real botocore client makes (a hook, not a mock)."""
    seen: list[dict[str, Any]] = []
    event = f"before-parameter-build.{client.meta.service_model.service_name}.{operation}"
    client.meta.events.register(event, lambda params, **_: seen.append(dict(params)))
    return seen


@pytest.fixture
def sts(aws: dict[str, Any]) -> Any:
    return boto3.client("sts", region_name="us-east-1")


@pytest.fixture
def describes() -> list[dict[str, Any]]:
    return []


@pytest.fixture(scope="module")
def create_ec2() -> ec2_tags.Ec2ClientFactory:
    return default_ec2_client_factory()  # shared: its first client loads the EC2 model


def slow(client: Any, operation: str, seconds: float = 0.2) -> None:
    """Each `operation` call of the real client waits `seconds` before it is made: callers
    that arrive together are all still waiting for it when it answers."""
    event = f"before-call.{client.meta.service_model.service_name}.{operation}"
    client.meta.events.register(event, lambda **_: time.sleep(seconds))


def counting_lookup(
    sts: Any,
    describes: list[dict[str, Any]],
    create_ec2: ec2_tags.Ec2ClientFactory,
    *,
    describe_delay: float = 0.0,
) -> InstanceTagLookup:
    """A lookup on a fake clock whose EC2 clients record the API parameters of each
    DescribeInstances in `describes` (and make it wait `describe_delay` seconds)."""

    def factory(region: str, credentials: AssumedCredentials) -> Any:
        client = create_ec2(region, credentials)
        event = "before-parameter-build.ec2.DescribeInstances"
        client.meta.events.register(event, lambda params, **_: describes.append(dict(params)))
        if describe_delay:
            slow(client, "DescribeInstances", describe_delay)
        return client

    return InstanceTagLookup(sts, role_name=ROLE_NAME, clock=Clock(), ec2_client_factory=factory)


@pytest.fixture
def lookup(
    sts: Any, describes: list[dict[str, Any]], create_ec2: ec2_tags.Ec2ClientFactory
) -> InstanceTagLookup:
    return counting_lookup(sts, describes, create_ec2)


def test_running_instance_tags(aws, lookup, sts):
    instance_id = run_instance(aws, team="orders", env="prod")
    assumed = calls(sts, "AssumeRole")
    assert lookup(identity(instance_id)) == {"team": "orders", "env": "prod"}
    assert assumed == [
        {
            "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}",
            "RoleSessionName": "tokex-tags",
            "DurationSeconds": 900,
        }
    ]


@pytest.mark.parametrize("action", ["stop_instances", "terminate_instances"])
def test_stopped_or_terminated_instance_is_invalid_grant(aws, lookup, action):
    instance_id = run_instance(aws, team="orders")
    getattr(aws["ec2"], action)(InstanceIds=[instance_id])
    with pytest.raises(InvalidGrant, match=f"instance {instance_id} is not running"):
        lookup(identity(instance_id))


def test_unknown_instance_is_invalid_grant(aws, lookup):
    with pytest.raises(InvalidGrant, match="is not running") as info:
        lookup(identity())
    assert "not-found" in info.value.reason


def test_the_lookup_runs_in_the_instance_account(aws, lookup, sts):
    # The same instance id claimed for another account: that account's EC2 does not know it.
    instance_id = run_instance(aws, team="orders")
    assumed = calls(sts, "AssumeRole")
    with pytest.raises(InvalidGrant):
        lookup(identity(instance_id, account="111111111111"))
    assert assumed[0]["RoleArn"] == f"arn:aws:iam::111111111111:role/{ROLE_NAME}"


@pytest.mark.parametrize("state,granted", [
    ("pending", True), ("running", True), ("stopping", False), ("stopped", False),
    ("shutting-down", False), ("terminated", False), (None, False),
])  # fmt: skip
def test_only_pending_and_running_grant(sts, state, granted):
    instance_id = UNKNOWN_ID
    described = {"InstanceId": instance_id, "Tags": [{"Key": "team", "Value": "orders"}]}
    if state is not None:
        described["State"] = {"Name": state}
    ec2, stub = stubbed_ec2()
    stub.add_response("describe_instances", {"Reservations": [{"Instances": [described]}]})
    lookup = InstanceTagLookup(sts, role_name=ROLE_NAME, ec2_client_factory=lambda *_: ec2)
    if granted:
        assert lookup(identity(instance_id)) == {"team": "orders"}
    else:
        with pytest.raises(InvalidGrant):
            lookup(identity(instance_id))


def test_tags_are_cached_per_instance_for_the_ttl(aws, lookup, describes):
    clock = lookup._clock
    first, second = run_instance(aws, team="orders"), run_instance(aws, team="billing")
    assert lookup(identity(first)) == {"team": "orders"}
    aws["ec2"].create_tags(Resources=[first], Tags=[{"Key": "team", "Value": "changed"}])
    clock.now += 59
    assert lookup(identity(first)) == {"team": "orders"}  # cached
    assert lookup(identity(second)) == {"team": "billing"}  # another instance: its own entry
    assert len(describes) == 2
    clock.now += 1
    assert lookup(identity(first)) == {"team": "changed"}
    assert len(describes) == 3


def test_a_refusal_is_cached_and_a_caller_cannot_change_the_cache(aws, lookup, describes):
    running, stopped = run_instance(aws, team="orders"), run_instance(aws)
    aws["ec2"].stop_instances(InstanceIds=[stopped])
    for _ in range(2):
        with pytest.raises(InvalidGrant):
            lookup(identity(stopped))
        tags = lookup(identity(running))
        tags["team"] = "forged"  # type: ignore[index]
    assert len(describes) == 2


def test_assumed_credentials_are_reused_until_shortly_before_expiry(aws, lookup, sts):
    clock = lookup._clock
    assumed = calls(sts, "AssumeRole")
    instance_id = run_instance(aws, team="orders")
    lookup(identity(instance_id))
    clock.now += 900 - 120 - 1  # tags expired, credentials still good
    lookup(identity(instance_id))
    lookup(identity(run_instance(aws)))
    assert len(assumed) == 1
    clock.now += 1
    lookup(identity(run_instance(aws)))
    assert len(assumed) == 2


def test_partition_follows_the_region():
    assert identifiers.partition_of_region("eu-west-1") == "aws"
    assert identifiers.partition_of_region("cn-north-1") == "aws-cn"
    assert identifiers.partition_of_region("us-gov-west-1") == "aws-us-gov"
    lookup = InstanceTagLookup(object(), role_name="path/reader")
    assert (
        lookup.role_arn(ACCOUNT, "cn-northwest-1") == f"arn:aws-cn:iam::{ACCOUNT}:role/path/reader"
    )


@pytest.mark.parametrize("region", ["cn-north-1", "cn-northwest-1", "us-gov-west-1"])
def test_an_instance_of_another_partition_is_not_looked_up(
    aws, sts, describes, create_ec2, region, caplog
):
    """An exchange in aws serving aws-cn or aws-us-gov callers (stsPartitions): its STS
    cannot give credentials for a role of another partition, and the stack grants
    AssumeRole on its own partition's roles only, so tags read as empty, as they did after
    a refused AssumeRole, but without the call and with the reason in the warning."""
    assumed = calls(sts, "AssumeRole")
    lookup = counting_lookup(sts, describes, create_ec2)
    instance = identity(region=region, availability_zone=f"{region}a")
    with caplog.at_level(logging.WARNING, logger=ec2_tags.__name__):
        assert lookup(instance) == {}
        assert lookup(instance) == {}
    assert assumed == [] and describes == []
    partition = identifiers.partition_of_region(region)
    assert (
        caplog.text.count(
            f"instance tags not looked up: instance {UNKNOWN_ID} ({ACCOUNT} {region}) is in the"
            f" {partition} partition, and tags are read only in the exchange's own (aws)"
        )
        == 2
    )
    # The exchange's own partition's instances are still looked up.
    assert lookup(identity(run_instance(aws, team="orders"))) == {"team": "orders"}
    assert len(assumed) == 1


@pytest.mark.parametrize("changes", [
    {"region": "eu-west-1.evil.example"}, {"region": "eu-west-1/"}, {"region": "us-iso-east-1"},
    {"account": "12345678901"}, {"instance_id": "i-0123456789ABCDEF0"}, {"bound": False},
])  # fmt: skip
def test_unexpected_evidence_is_never_looked_up(sts, changes, caplog):
    assumed = calls(sts, "AssumeRole")
    lookup = InstanceTagLookup(sts, role_name=ROLE_NAME)
    with caplog.at_level(logging.WARNING, logger=ec2_tags.__name__):
        assert lookup(identity(**changes)) == {}
    assert assumed == []
    assert "not looked up" in caplog.text


@pytest.mark.parametrize("role_name", ["", "a b", "role*", "x" * 65, "/lead", "rôle"])
def test_role_name_is_validated(role_name):
    with pytest.raises(ConfigurationError):
        InstanceTagLookup(object(), role_name=role_name)


def test_ttl_is_at_most_a_minute():
    with pytest.raises(ValueError):
        InstanceTagLookup(object(), role_name=ROLE_NAME, ttl_seconds=61)


def stubbed_ec2() -> tuple[Any, Stubber]:
    client = boto3.client(
        "ec2", region_name=REGION, aws_access_key_id="a", aws_secret_access_key="b",
        config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip
    stub = Stubber(client)
    stub.activate()
    return client, stub


def stubbed_sts(code: str) -> Any:
    client = boto3.client(
        "sts", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    stub = Stubber(client)
    for _ in range(3):
        stub.add_client_error("assume_role", service_error_code=code, http_status_code=403)
    stub.activate()
    return client


def test_role_that_cannot_be_assumed_means_no_tags(caplog):
    sts = stubbed_sts("AccessDenied")
    lookup = InstanceTagLookup(sts, role_name=ROLE_NAME)
    with caplog.at_level(logging.WARNING, logger=ec2_tags.__name__):
        assert lookup(identity()) == {}
        assert lookup(identity()) == {}  # cached: one attempt
    assert caplog.text.count("AccessDenied") == 1
    assert f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}" in caplog.text


def test_throttled_assume_role_is_unavailable_and_not_cached():
    sts = stubbed_sts("Throttling")
    lookup = InstanceTagLookup(sts, role_name=ROLE_NAME)
    for _ in range(2):
        with pytest.raises(TemporarilyUnavailable) as info:
            lookup(identity())
        assert info.value.reason == "sts AssumeRole: Throttling"
        assert ACCOUNT not in info.value.description


@pytest.mark.parametrize("code,outcome", [
    ("UnauthorizedOperation", "unreadable"), ("AuthFailure", "unreadable"),
    ("OptInRequired", "unreadable"), ("InvalidInstanceID.NotFound", "refused"),
    ("RequestLimitExceeded", "unavailable"), ("InternalError", "unavailable"),
])  # fmt: skip
def test_describe_instances_errors(sts, code, outcome):
    ec2, stub = stubbed_ec2()
    stub.add_client_error("describe_instances", service_error_code=code, http_status_code=400)
    lookup = InstanceTagLookup(sts, role_name=ROLE_NAME, ec2_client_factory=lambda *_: ec2)
    if outcome == "unreadable":
        assert lookup(identity()) == {}
    else:
        expected = InvalidGrant if outcome == "refused" else TemporarilyUnavailable
        with pytest.raises(expected):
            lookup(identity())


LAUNCHED = datetime(2026, 1, 1, tzinfo=UTC)
RUNNING = {"Reservations": [{"Instances": [{
    "InstanceId": UNKNOWN_ID, "State": {"Name": "running"},
    "Tags": [{"Key": "team", "Value": "orders"}],
}]}]}  # fmt: skip


def answer_not_found(stub: Stubber, form: str) -> None:
    """EC2 does not know the instance: the error, or an answer that leaves it out."""
    if form == "error":
        stub.add_client_error(
            "describe_instances",
            service_error_code="InvalidInstanceID.NotFound",
            service_message=f"The instance ID '{UNKNOWN_ID}' does not exist",
            http_status_code=400,
        )
    else:
        stub.add_response("describe_instances", {"Reservations": []})


def lookup_at(sts: Any, ec2: Any, seconds_after_launch: float) -> InstanceTagLookup:
    """A lookup whose wall clock reads LAUNCHED + `seconds_after_launch`; its cache's
    clock stands still, so whatever it cached would still be fresh."""
    return InstanceTagLookup(
        sts, role_name=ROLE_NAME, clock=Clock(), ec2_client_factory=lambda *_: ec2,
        wall_clock=lambda: LAUNCHED.timestamp() + seconds_after_launch,
    )  # fmt: skip


@pytest.mark.parametrize("form", ["error", "missing"])
@pytest.mark.parametrize("seconds_after_launch", [0, 5, 299, -30])
def test_an_instance_ec2_does_not_know_yet_after_launch_is_retried_not_refused(
    sts, form, seconds_after_launch
):
    """EC2's eventual consistency: right after RunInstances, DescribeInstances may say
    InvalidInstanceID.NotFound for a live instance. A 503, not cached: the next request
    asks EC2 again. A pendingTime in the future (clock skew) counts as just launched."""
    ec2, stub = stubbed_ec2()
    answer_not_found(stub, form)
    stub.add_response("describe_instances", RUNNING)
    lookup = lookup_at(sts, ec2, seconds_after_launch)
    just_launched = identity(pending_time=LAUNCHED)
    with pytest.raises(TemporarilyUnavailable) as info:
        lookup(just_launched)
    assert type(info.value) is TemporarilyUnavailable
    assert info.value.description == (
        f"instance {UNKNOWN_ID} is not yet known to EC2, retry shortly"
    )
    assert info.value.headers() == {"Retry-After": "2"}
    assert lookup(just_launched) == {"team": "orders"}
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("form", ["error", "missing"])
@pytest.mark.parametrize("pending_time", [LAUNCHED - timedelta(seconds=300), None])
def test_an_instance_ec2_does_not_know_otherwise_is_refused_and_cached(sts, form, pending_time):
    """Launched (or started) 300 s ago or more, or a document without pendingTime: not
    found is final, as for a terminated instance, and cached like every refusal."""
    ec2, stub = stubbed_ec2()
    answer_not_found(stub, form)
    described = calls(ec2, "DescribeInstances")
    lookup = lookup_at(sts, ec2, 0)
    for _ in range(2):
        with pytest.raises(InvalidGrant, match=f"instance {UNKNOWN_ID} is not running"):
            lookup(identity(pending_time=pending_time))
    assert len(described) == 1


def test_unreachable_ec2_is_unavailable(sts):
    ec2 = boto3.client(
        "ec2", region_name=REGION, aws_access_key_id="a", aws_secret_access_key="b",
        config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip

    def refuse(request: Any, **_: Any) -> None:
        raise EndpointConnectionError(endpoint_url=request.url)

    ec2.meta.events.register("before-send.ec2.DescribeInstances", refuse)
    lookup = InstanceTagLookup(sts, role_name=ROLE_NAME, ec2_client_factory=lambda *_: ec2)
    with pytest.raises(TemporarilyUnavailable, match="retry later"):
        lookup(identity())


def test_concurrent_lookups_of_one_instance_make_one_call(aws, sts, describes, create_ec2):
    """Eight callers miss the cache for one instance at once, and its DescribeInstances is
    slowed so that all of them arrive while it is in flight: the instance's lock lets one
    call EC2 and the others share its answer (single flight), not one call each."""
    instance_id = run_instance(aws, team="orders")
    lookup = counting_lookup(sts, describes, create_ec2, describe_delay=0.2)
    start = threading.Barrier(8, timeout=10)

    def look(_: int) -> Mapping[str, str]:
        start.wait()
        return lookup(identity(instance_id))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(look, range(8)))
    assert results == [{"team": "orders"}] * 8
    assert len(describes) == 1


def test_concurrent_lookups_in_one_account_assume_its_role_once(aws, sts, lookup, describes):
    """Eight different instances of one account, looked up at once on an empty cache, and
    AssumeRole slowed so that every caller needs the account's credentials while they are
    being fetched: the account's lock lets one caller assume the role and the others reuse
    its credentials, while each instance still gets its own DescribeInstances and tags,
    cached under that instance."""
    instances = {run_instance(aws, n=str(number)): str(number) for number in range(8)}
    slow(sts, "AssumeRole")
    assumed = calls(sts, "AssumeRole")
    start = threading.Barrier(8, timeout=10)

    def look(instance_id: str) -> Mapping[str, str]:
        start.wait()
        return lookup(identity(instance_id))

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(instances, pool.map(look, instances), strict=True))
    expected = {instance_id: {"n": number} for instance_id, number in instances.items()}
    assert results == expected
    assert len(assumed) == 1
    assert sorted(params["InstanceIds"][0] for params in describes) == sorted(instances)
    assert {instance_id: lookup(identity(instance_id)) for instance_id in instances} == expected
    assert len(describes) == 8  # answered from the cache


def test_cache_size_is_bounded(aws, lookup, describes, monkeypatch):
    monkeypatch.setattr(ec2_tags, "MAX_CACHED_INSTANCES", 2)
    first, second, third = (run_instance(aws, n=str(i)) for i in range(3))
    for instance_id in (first, second, third, third, first):
        lookup(identity(instance_id))
    assert len(describes) == 4  # the oldest (first) was evicted, third was cached


def test_ec2_endpoint_follows_the_standard_overrides(monkeypatch):
    credentials = AssumedCredentials("a", "b", "c")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_EC2", raising=False)
    create = default_ec2_client_factory()
    assert create(REGION, credentials).meta.endpoint_url == "https://ec2.eu-west-1.amazonaws.com"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    assert create(REGION, credentials).meta.endpoint_url == "http://127.0.0.1:5000"


def test_service_wires_the_lookup_only_when_a_role_is_configured(aws, monkeypatch):
    """Built on the first lookup (wiring.py): concurrent first lookups share one, and each
    answers the instance's real tags."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    env = {"TOKEX_ISSUER": "https://auth.example.com", "TOKEX_SIGNING_KEY_ID": "alias/k",
           "TOKEX_POLICY_TABLE": "policies", "TOKEX_STATE_TABLE": "state"}  # fmt: skip
    plain = build_token_exchange(Settings.from_env(env))
    assert plain._instance_tags is None
    tagged = Settings.from_env({**env, "TOKEX_INSTANCE_TAGS_ROLE_NAME": ROLE_NAME})
    assert tagged.instance_tags_role_name == ROLE_NAME
    lookup = build_token_exchange(tagged)._instance_tags
    assert lookup is not None
    instance_id = run_instance(aws, team="orders")
    built: list[InstanceTagLookup] = []
    real_call = InstanceTagLookup.__call__

    def recording_call(self: InstanceTagLookup, instance: InstanceIdentity) -> Any:
        built.append(self)
        return real_call(self, instance)

    monkeypatch.setattr(InstanceTagLookup, "__call__", recording_call)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: lookup(identity(instance_id)), range(8)))
    assert answers == [{"team": "orders"}] * 8
    assert len(built) == 8 and len(set(map(id, built))) == 1
    with pytest.raises(ConfigurationError):  # Settings check it before anything is built
        dataclasses.replace(tagged, instance_tags_role_name="no way")
