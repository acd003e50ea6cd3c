"""`tokex policy --stack`: the table and the TTLs from a CloudFormation stack's outputs.

Against in-process moto (`mock_aws`), so here and not with the other `tokex policy` tests
in tests/system/test_policy_commands.py, which run against a moto server with SigV4
checks on (tests/README.md)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.support.cli_policy import CLI_POLICY, write
from tokex.cli.main import main

STACK_TEMPLATE = {
    "Resources": {
        "Policies": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "TableName": "tokex-stack-policies",
                "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                "BillingMode": "PAY_PER_REQUEST",
            },
        }
    },
    "Outputs": {
        "PolicyTableName": {"Value": {"Ref": "Policies"}},
        "DefaultTtlSeconds": {"Value": "600"},
        "TtlCapSeconds": {"Value": "1200"},
    },
}


@pytest.fixture
def in_process_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        cloudformation = boto3.client("cloudformation", region_name="us-east-1")
        cloudformation.create_stack(StackName="tokex", TemplateBody=json.dumps(STACK_TEMPLATE))
        yield cloudformation


def test_stack_output_names_the_table(in_process_aws, capsys, tmp_path) -> None:
    where = ["--stack", "tokex", "--region", "us-east-1"]
    assert main(["policy", "put", write(tmp_path / "p.json", CLI_POLICY), *where]) == 0
    assert main(["policy", "list", "--json", *where]) == 0
    out = capsys.readouterr().out.split("\n", 1)[1]
    listed = json.loads(out)
    assert listed["table"] == "tokex-stack-policies"
    assert [p["id"] for p in listed["policies"]] == ["cli-test"]


def test_explain_takes_the_ttls_from_the_stack(in_process_aws, capsys, tmp_path) -> None:
    where = ["--stack", "tokex", "--region", "us-east-1"]
    document = {**CLI_POLICY}
    document.pop("max_ttl_seconds", None)
    assert main(["policy", "put", write(tmp_path / "p.json", document), *where]) == 0
    principal = CLI_POLICY["principals"][0].replace("*", "x")
    argv = ["policy", "explain", "--principal", principal, "--json", *where]
    argv += ["--audience", CLI_POLICY["audiences"][0]]
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["ttl_seconds"] == 600  # the stack's default TTL
    assert main([*argv, "--default-ttl", "900"]) == 0  # a flag wins over the stack
    assert json.loads(capsys.readouterr().out)["ttl_seconds"] == 900


def test_stack_errors_are_clear(in_process_aws, capsys) -> None:
    assert main(["policy", "list", "--stack", "missing", "--region", "us-east-1"]) == 1
    assert "stack 'missing' not found in region us-east-1" in capsys.readouterr().err
    assert main(["policy", "list", "--stack", "missing", "--region", "us-east-1", "--json"]) == 1
    failure = json.loads(capsys.readouterr().out)
    assert (failure["error"], failure["input"]) == ("not_found", "--stack")
    template = {"Resources": copy.deepcopy(STACK_TEMPLATE["Resources"])}
    template["Resources"]["Policies"]["Properties"]["TableName"] = "other"
    in_process_aws.create_stack(StackName="not-tokex", TemplateBody=json.dumps(template))
    assert main(["policy", "list", "--stack", "not-tokex", "--region", "us-east-1"]) == 1
    assert "has no PolicyTableName output" in capsys.readouterr().err


def test_explain_shows_the_claims_the_token_carries(in_process_aws, capsys, tmp_path) -> None:
    """A policy stored before a claim name was reserved (or by hand) still allows, and the
    token leaves that claim out (tokens/claims.py build_claims): explain shows the claims
    as the token carries them, and says which were left out, where it showed them all."""
    where = ["--stack", "tokex", "--region", "us-east-1"]
    assert main(["policy", "put", write(tmp_path / "p.json", CLI_POLICY), *where]) == 0
    table = boto3.client("dynamodb", region_name="us-east-1")
    key = {"id": {"S": CLI_POLICY["id"]}}
    item = table.get_item(TableName="tokex-stack-policies", Key=key)["Item"]
    document = json.loads(item["document"]["S"])
    document["claims"] = {"aws.account": "999999999999", "team": "orders"}
    item["document"] = {"S": json.dumps(document)}
    table.put_item(TableName="tokex-stack-policies", Item=item)
    principal = CLI_POLICY["principals"][0].replace("*", "x")
    argv = ["policy", "explain", "--principal", principal, *where]
    argv += ["--audience", CLI_POLICY["audiences"][0]]
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["policy"], report["claims"]) == (CLI_POLICY["id"], {"team": "orders"})
    assert any("'aws.account'" in note and "left out" in note for note in report["notes"])
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert '   claims {"team": "orders"}' in text and "aws.account" in text.split("note:", 1)[1]
