"""`tokex revoke` against the emulator (SigV4 checks on, the deployment's service
credentials), and introspection honouring it on the next call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.system.conftest import as_operator
from tests.system.endpoints import exchange, sign, verify
from tests.system.test_introspect_endpoint import introspect
from tokex.adapters.state_table.revocations import TTL_MARGIN_SECONDS
from tokex.cli.main import main
from tokex.local.provision import ACCOUNT_ID, DEMO_USER_NAME
from tokex.local.runner import LocalSystem
from tokex.token_request import JWT_TOKEN_TYPE

USER_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER_NAME}"

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def revoke(state_table_cli) -> Cli:
    """`tokex revoke ...` against the system's state table, as its service identity."""
    return lambda *argv: state_table_cli("revoke", *argv)


def token_of(system: LocalSystem, credentials=None) -> str:
    signed = sign(system, credentials=credentials)
    status, _, body = exchange(system, signed=signed)
    assert status == 200, body
    return str(body["access_token"])


def active(system: LocalSystem, token: str) -> bool:
    status, _, body = introspect(system, token)
    assert status == 200, body
    if not body["active"]:
        assert body == {"active": False}
    return bool(body["active"])


def stored(system: LocalSystem, item_id: str) -> dict[str, str]:
    dynamodb = system.deployment.client("dynamodb")
    table = system.deployment.state_table
    item = dynamodb.get_item(TableName=table, Key={"id": {"S": item_id}}, ConsistentRead=True)
    return {name: next(iter(value.values())) for name, value in item["Item"].items()}


def test_revoke_by_jti_takes_effect_at_once_for_that_token_only(local_system, revoke):
    token, other = token_of(local_system), token_of(local_system)
    assert active(local_system, token) and active(local_system, other)
    jti = verify(local_system, token)["jti"]
    code, out, _ = revoke("--jti", jti, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["jti"] == jti
    assert not active(local_system, token)
    assert active(local_system, other)
    # Kept for the longest lifetime any deployment allows, plus a margin.
    item = stored(local_system, f"revoked-jti#{jti}")
    assert int(item["expires_at"]) == result["revoked_at"] + 43200 + TTL_MARGIN_SECONDS
    assert int(item["revoked_at"]) == result["revoked_at"]


def test_revoke_by_principal_covers_tokens_issued_before_not_after(local_system, revoke):
    before = token_of(local_system, local_system.deployment.user)
    role_token = token_of(local_system)
    assert active(local_system, before)
    code, out, _ = revoke("--principal", USER_ARN, "--ttl-cap", "3600")
    assert code == 0 and f"revoked every token of {USER_ARN}" in out
    assert not active(local_system, before)
    assert active(local_system, role_token)  # another principal
    item = stored(local_system, f"revoked-principal#{USER_ARN}")
    assert int(item["expires_at"]) == int(item["revoked_at"]) + 3600 + TTL_MARGIN_SECONDS
    # `iat` has one-second resolution: tokens of the revocation's second are revoked too.
    while int(time.time()) <= int(item["revoked_at"]):
        time.sleep(0.05)
    after = token_of(local_system, local_system.deployment.user)
    assert active(local_system, after)
    assert not active(local_system, before)


def test_revoke_an_eks_service_accounts_tokens(local_system, revoke):
    """A pod's token can be exchanged again and again: after a compromise the service
    account's principal (its tokens' `sub`) is what an operator revokes."""
    eks_token = (local_system.state_dir / "eks-token").read_text().strip()
    status, _, body = exchange(
        local_system, subject_token_type=JWT_TOKEN_TYPE, subject_token=eks_token
    )
    assert status == 200, body
    token = body["access_token"]
    principal = verify(local_system, token)["sub"]
    assert principal.startswith("eks:") and active(local_system, token)
    code, out, _ = revoke("--principal", principal, "--json")
    assert code == 0 and json.loads(out)["principal"] == principal
    assert not active(local_system, token)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--principal", f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo/i-1"], "not the session"),
        (["--principal", f"eks:{ACCOUNT_ID}:us-east-1:c:ns:sa:extra"], "eks:ACCOUNT:REGION"),
        (["--principal", "demo-workload"], "role or IAM user ARN"),
        (
            ["--principal", f"arn:aws:iam::{ACCOUNT_ID}:role/service-role/demo-workload"],
            f"use arn:aws:iam::{ACCOUNT_ID}:role/demo-workload",
        ),
        (["--jti", "has space"], "printable ASCII"),
        (["--jti", "x", "--ttl-cap", "10"], "--ttl-cap"),
    ],
)
def test_bad_arguments_exit_2(revoke, argv, message):
    code, _, err = revoke(*argv)
    assert code == 2 and message in err


def test_a_table_or_stack_is_required(capsys):
    assert main(["revoke", "--jti", "x"]) == 2
    assert "--table NAME or --stack NAME" in capsys.readouterr().err


def test_aws_failures_are_clear_errors(revoke, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code, _, err = revoke("--jti", "abc")
    # The emulator answers a wrong secret as DynamoDB does: a code the command explains.
    assert code == 1
    assert "dynamodb UpdateItem: InvalidSignatureException" in err
    assert "(credentials not valid for this endpoint)" in err


def test_one_table_for_the_other_is_refused_and_left_untouched(local_system, monkeypatch, capsys):
    """The policy and state tables share one key schema, so a revocation written to the
    policy table would succeed, revoke nothing, and leave an item the exchange's policy
    load refuses (every exchange a 503); a policy put in the state table, one no exchange
    reads. Told apart by the state table's TTL, before anything is written."""
    deployment = local_system.deployment
    as_operator(deployment, monkeypatch)
    where = ["--region", deployment.region, "--endpoint-url", deployment.endpoint_url]
    dynamodb = deployment.client("dynamodb")
    before = dynamodb.scan(TableName=deployment.policy_table)["Items"]
    capsys.readouterr()
    code = main(["revoke", "--jti", "x", "--table", deployment.policy_table, *where])
    err = capsys.readouterr().err
    assert code == 1 and f"table {deployment.policy_table!r} is not the state table" in err
    assert dynamodb.scan(TableName=deployment.policy_table)["Items"] == before
    code = main(["policy", "list", "--table", deployment.state_table, *where])
    err = capsys.readouterr().err
    assert code == 1 and f"table {deployment.state_table!r} is not the policy table" in err
