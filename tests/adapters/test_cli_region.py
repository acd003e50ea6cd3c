"""The CLI's region (tokex/cli/region.py): it follows the AWS CLI's order, and an error
names where it looked; and a Regional stack in its own Region names that Region's replicas.
Against in-process moto CloudFormation, which is why this is not in
tests/unit/test_cli_convention.py (whose helpers it uses)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tests.unit.test_cli_convention import one_json_object, tokex
from tokex.adapters.policy_table import GENERATION_ID
from tokex.adapters.state_table.schema import CLIENT_PREFIX, REVOKED_JTI_PREFIX


@pytest.fixture
def aws_config(monkeypatch, tmp_path) -> Path:
    """No region anywhere, and a config file of the test's own."""
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    config = tmp_path / "config"
    config.write_text("[default]\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return config


def stack_region(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """The region `tokex policy list --stack` looked in, as its error reports it."""
    with mock_aws():
        code, out, _ = tokex(capsys, "policy", "list", "--stack", "missing", *flags, "--json")
    failure = one_json_object(out)
    assert (code, failure["error"], failure["input"]) == (1, "not_found", "--stack")
    return failure["error_description"].split(" not found in region ")[1].split()[0]


def test_region_follows_the_aws_cli_order(capsys, monkeypatch, aws_config) -> None:
    aws_config.write_text("[default]\nregion = ap-south-1\n")
    assert stack_region(capsys) == "ap-south-1"  # the profile's
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    assert stack_region(capsys) == "eu-west-2"
    monkeypatch.setenv("AWS_REGION", "eu-west-3")  # boto3 alone would ignore it
    assert stack_region(capsys) == "eu-west-3"
    assert stack_region(capsys, "--region", "ca-central-1") == "ca-central-1"


def test_an_empty_variable_counts_as_unset(capsys, monkeypatch, aws_config) -> None:
    aws_config.write_text("[default]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_REGION", "")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "")
    assert stack_region(capsys) == "ap-south-1"


def test_no_region_says_what_it_tried(capsys, monkeypatch, aws_config) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "")
    code, out, err = tokex(capsys, "policy", "list", "--stack", "Tokex")
    assert (code, out) == (2, "")
    assert err == (
        "tokex policy: no AWS region: tried --region (not given), AWS_REGION (unset), "
        f"AWS_DEFAULT_REGION (empty), the region of profile 'default' in {aws_config} (none); "
        "pass --region REGION or set AWS_REGION\n"
    )
    code, out, _ = tokex(capsys, "clients", "list", "--table", "t", "--json")
    failure = one_json_object(out)
    assert (code, failure["error"], failure["input"]) == (2, "no_region", "--region")


@pytest.mark.parametrize(
    "variable,value,source",
    [
        ("AWS_REGION", "eu west 1", "AWS_REGION"),
        ("AWS_DEFAULT_REGION", "eu-west-1.", "AWS_DEFAULT_REGION"),
        ("AWS_PROFILE", "no-such-profile", "AWS_PROFILE"),
    ],
)
def test_a_bad_region_source_is_named(capsys, monkeypatch, aws_config, variable, value, source):
    monkeypatch.setenv(variable, value)
    code, out, _ = tokex(capsys, "revoke", "--jti", "j", "--table", "t", "--json")
    failure = one_json_object(out)
    assert (code, failure["input"]) == (2, source)
    assert value in failure["error_description"]


# A Regional stack of a multi-Region deployment as DescribeStacks shows it in its Region: the
# outputs the CLI reads, naming the same global tables as home's (tests/infra/
# test_multi_region.py checks the template); here the tables are their replicas in eu-west-1.
# No stack in home: home is down.
REGION = "eu-west-1"
REGIONAL_STACK = "Tokex-eu-west-1"
REGIONAL_TEMPLATE = {
    "Resources": {
        logical_id: {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "TableName": name,
                "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                "BillingMode": "PAY_PER_REQUEST",
            },
        }
        for logical_id, name in (("Policies", "tokex-policies"), ("State", "tokex-state"))
    },
    "Outputs": {
        "PolicyTableName": {"Value": {"Ref": "Policies"}},
        "StateTableName": {"Value": {"Ref": "State"}},
        "DefaultTtlSeconds": {"Value": "300"},
        "TtlCapSeconds": {"Value": "600"},
    },
}
ROLE_ARN = "arn:aws:iam::123456789012:role/orders"


def test_outside_home_a_regional_stack_names_its_regions_replicas(
    capsys, tmp_path, aws_config
) -> None:
    """docs/multi-region.md "When the home Region is lost": policy writes, revocations and
    clients go to another Region's replicas with `--stack Tokex-<r> --region <r>`."""
    where = ["--stack", REGIONAL_STACK, "--region", REGION]
    document = {"id": "orders", "effect": "allow", "principals": [ROLE_ARN]}
    policy = tmp_path / "orders.json"
    policy.write_text(json.dumps({**document, "audiences": ["orders-api"]}))
    with mock_aws():
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        cloudformation.create_stack(
            StackName=REGIONAL_STACK, TemplateBody=json.dumps(REGIONAL_TEMPLATE)
        )
        for argv in (
            ["revoke", "--jti", "j-1"],
            ["clients", "add", "kong-eu", "--audience", "orders-api"],
            ["policy", "put", str(policy)],
        ):
            assert tokex(capsys, *argv, *where)[0] == 0, argv
        explain = ["--principal", ROLE_ARN, "--audience", "orders-api", "--json"]
        code, out, _ = tokex(capsys, "policy", "explain", *explain, *where)
        assert code == 0
        assert json.loads(out)["ttl_seconds"] == 300  # the Regional stack's DefaultTtlSeconds
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        state = sorted(i["id"]["S"] for i in dynamodb.scan(TableName="tokex-state")["Items"])
        assert len(state) == 2 and state[0].startswith(CLIENT_PREFIX)
        assert state[1] == REVOKED_JTI_PREFIX + "j-1"
        policies = dynamodb.scan(TableName="tokex-policies")["Items"]
        # The policy and, in its transaction, the table's count of writes.
        assert sorted(i["id"]["S"] for i in policies) == [GENERATION_ID, "orders"]
