"""`tokex policy` against emulated AWS.

A system of our own (moto server subprocess, SigV4 checks on, the real exchange handler
behind the local front) holds the demo policies plus the ones below, all written before the
first exchange fills the exchange's policy cache. The CLI runs in process with the
deployment's service credentials, as an operator's would be.

The key test: for the same (principal, audience, scope, instance document), `tokex policy
explain` reaches the decision the running exchange answers with.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cli_policy import CLI_POLICY, USER_ARN, write
from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tests.system.endpoints import assert_refused, exchange, sign, verify
from tokex.adapters.policy_table import PolicyStore
from tokex.cli.main import main
from tokex.client.imds import encode_instance_evidence
from tokex.local.emulator import SubprocessMotoServer
from tokex.local.imds import DEMO_DOCUMENT
from tokex.local.provision import (
    ACCOUNT_ID,
    DEMO_INSTANCE_AUDIENCE,
    DEMO_ROLE_ARN,
    Credentials,
)
from tokex.local.runner import LocalSystem, start_local
from tokex.policy.model import Policy

DEMO_ROLES = f"arn:aws:iam::{ACCOUNT_ID}:role/demo-*"


def extra_policies(role_id: str) -> list[dict[str, Any]]:
    def allow(policy_id: str, principals: list[str], audiences: list[str], **more: Any):
        document = {"id": policy_id, "effect": "allow", "principals": principals}
        return {**document, "audiences": audiences, **more}

    return [
        {
            "id": "orders-deny",
            "effect": "deny",
            "principals": [DEMO_ROLE_ARN],
            "audiences": ["orders-api"],
        },
        allow(
            "orders-demo",
            [DEMO_ROLES, USER_ARN],
            ["orders-api", "reports-api"],
            scopes=["orders:read"],
            max_ttl_seconds=300,
        ),
        allow(
            "reports-workload",
            [DEMO_ROLE_ARN],
            ["reports-*"],
            scopes=["reports:read", "reports:write"],
            max_ttl_seconds=1800,
        ),
        allow("switched-off", [DEMO_ROLE_ARN], ["off-api"], enabled=False),
        allow("pinned", [DEMO_ROLE_ARN], ["pinned-api"], principal_ids=[role_id]),
        allow("pinned-stale", [DEMO_ROLE_ARN], ["stale-api"], principal_ids=["AROASTALE0000"]),
        allow(
            "graviton",
            [DEMO_ROLE_ARN],
            ["typed-api"],
            instance={"required": True, "instance_types": ["m7g.*"]},
        ),
    ]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    system = start_local(
        port=0, state_dir=tmp_path_factory.mktemp("tokex-cli"), moto=SubprocessMotoServer()
    )
    thread = threading.Thread(target=system.serve_forever, daemon=True)
    thread.start()
    try:
        deployment = system.deployment
        store = PolicyStore(deployment.client("dynamodb"), deployment.policy_table)
        for document in extra_policies(principal_id(system, deployment.workload)):
            store.put(Policy.from_document(document))
        yield system
    finally:
        system.stop()
        thread.join(timeout=10)


@pytest.fixture
def cli(system: LocalSystem, monkeypatch: pytest.MonkeyPatch, capsys):
    """`tokex policy ...` against the system's table, as its service identity."""
    deployment = system.deployment
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in deployment.service.env().items():
        monkeypatch.setenv(name, value)
    where = ["--table", deployment.policy_table, "--region", deployment.region]
    where += ["--endpoint-url", deployment.endpoint_url]

    def run(command: str, *argv: str) -> tuple[int, str, str]:
        # The deployment first: a test's own --table comes later and wins.
        code = main(["policy", command, *where, *argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    return run


def principal_id(system: LocalSystem, credentials: Credentials) -> str:
    sts = system.deployment.client("sts", credentials)
    return str(sts.get_caller_identity()["UserId"].split(":")[0])


def test_put_get_list_delete(cli, tmp_path) -> None:
    assert cli("put", write(tmp_path / "p.json", CLI_POLICY)) == (0, "cli-test\n", "")
    code, out, err = cli("get", "cli-test")
    assert code == 0
    assert Policy.from_document(json.loads(out)) == Policy.from_document(CLI_POLICY)
    revision = "cli-test is at revision 1 (put --if-revision 1 writes only if it still is)"
    assert err == f"tokex policy: {revision}\n"
    code, out, err = cli("get", "cli-test", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {**Policy.from_document(CLI_POLICY).to_document(), "revision": 1}

    code, out, _ = cli("list")
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    header = ["ID", "EFFECT", "ENABLED", "REVISION", "PRINCIPALS", "AUDIENCES"]
    assert code == 0 and rows["ID"] == header
    assert rows["cli-test"] == ["cli-test", "allow", "yes", "1", USER_ARN, "cli-test-api"]
    assert rows["switched-off"][2] == "no" and rows["orders-deny"][1] == "deny"
    code, out, _ = cli("list", "--json")
    listed = json.loads(out)
    assert {"cli-test", "demo-workload", "pinned"} <= {p["id"] for p in listed["policies"]}
    assert listed["invalid"] == []
    assert listed["revisions"]["cli-test"] == 1
    assert sorted(listed["revisions"]) == sorted(p["id"] for p in listed["policies"])

    assert cli("delete", "cli-test") == (0, "cli-test\n", "")
    code, _, err = cli("delete", "cli-test")
    assert code == 1 and "no policy 'cli-test'" in err
    code, _, err = cli("get", "cli-test")
    assert code == 1 and "no policy 'cli-test'" in err


def test_put_from_stdin_with_json_output(cli, monkeypatch) -> None:
    document = {**CLI_POLICY, "id": "cli-stdin"}
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps(document).encode())))
    assert cli("put", "-", "--json") == (0, '{"id": "cli-stdin", "warnings": []}\n', "")
    assert cli("delete", "cli-stdin", "--json")[0] == 0
    # Warnings are part of the JSON answer: nothing on stderr.
    disabled = {**CLI_POLICY, "id": "cli-disabled", "enabled": False}
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps(disabled).encode())))
    code, out, err = cli("put", "-", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "id": "cli-disabled",
        "warnings": ["enabled is false: the exchange ignores this policy"],
    }
    assert cli("delete", "cli-disabled")[0] == 0


INCIDENT_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/compromised"


def test_two_operators_editing_one_read_the_second_is_refused_not_lost(cli, tmp_path) -> None:
    """The lost update: A and B each `get` the policy and edit it; A removes a
    compromised principal, B adds an audience, both `put`: B's write brought the
    principal back, both exit 0. With the revision `get` showed, B's put is refused and
    the table keeps A's change."""
    document = {**CLI_POLICY, "id": "cli-race", "principals": [USER_ARN, INCIDENT_ARN]}
    assert cli("put", write(tmp_path / "race.json", document))[0] == 0
    read = {}
    for operator in ("a", "b"):
        code, out, err = cli("get", "cli-race")
        assert code == 0 and "cli-race is at revision 1 " in err
        read[operator] = json.loads(out)  # the document alone: what `put` takes back
    incident = {**read["a"], "principals": [USER_ARN]}
    a = write(tmp_path / "a.json", incident)
    assert cli("put", a, "--if-revision", "1") == (0, "cli-race\n", "")
    b = write(tmp_path / "b.json", {**read["b"], "audiences": ["cli-test-api", "reports-api"]})
    code, out, err = cli("put", b, "--if-revision", "1")
    assert (code, out) == (1, "")
    assert err == (
        "tokex policy: policy 'cli-race' is at revision 2, not 1: it changed since you read "
        "it; nothing was written: get it again and re-apply your change\n"
    )
    code, out, _ = cli("put", b, "--if-revision", "1", "--json")
    assert code == 1
    assert {k: v for k, v in json.loads(out).items() if k != "error_description"} == {
        "error": "failed",
        "input": "--if-revision",
        "revision": 2,
        "if_revision": 1,
    }
    code, out, _ = cli("get", "cli-race", "--json")
    assert json.loads(out) == {**Policy.from_document(incident).to_document(), "revision": 2}
    # A stale delete is refused too; the read one deletes.
    code, _, err = cli("delete", "cli-race", "--if-revision", "1")
    assert code == 1 and "is at revision 2, not 1: it changed since you read it" in err
    assert cli("delete", "cli-race", "--if-revision", "2") == (0, "cli-race\n", "")
    code, _, err = cli("delete", "cli-race", "--if-revision", "2")
    assert code == 1 and "no policy 'cli-race'" in err
    # The policy deleted since it was read: put says so; --if-revision 0 creates only.
    code, _, err = cli("put", a, "--if-revision", "2")
    assert code == 1 and "policy 'cli-race' does not exist, not at revision 2" in err
    assert cli("put", a, "--if-revision", "0") == (0, "cli-race\n", "")
    code, _, err = cli("put", a, "--if-revision", "0")
    assert code == 1 and "is at revision 1, not 0" in err
    assert cli("put", a) == (0, "cli-race\n", "")  # without the flag: the last write wins
    assert "cli-race is at revision 2 " in cli("get", "cli-race")[2]
    assert cli("delete", "cli-race")[0] == 0


def test_a_policy_written_before_revisions_is_revision_0(system, cli, tmp_path) -> None:
    """Written by an older `tokex policy` (no `revision`): revision 0, and
    `--if-revision 0` writes over it only while no newer one has written it."""
    document = {**CLI_POLICY, "id": "cli-older"}
    text = json.dumps(Policy.from_document(document).to_document())
    item = {"id": {"S": "cli-older"}, "document": {"S": text}, "updated_at": {"N": "1"}}
    system.deployment.client("dynamodb").put_item(
        TableName=system.deployment.policy_table, Item=item
    )
    code, out, err = cli("get", "cli-older")
    assert code == 0 and "cli-older is at revision 0 " in err
    assert json.loads(cli("list", "--json")[1])["revisions"]["cli-older"] == 0
    path = write(tmp_path / "older.json", {**json.loads(out), "scopes": ["cli:write"]})
    code, _, err = cli("put", path, "--if-revision", "1")
    assert code == 1 and "is at revision 0, not 1" in err
    assert cli("put", path, "--if-revision", "0")[0] == 0
    code, _, err = cli("put", path, "--if-revision", "0")
    assert code == 1 and "is at revision 1, not 0" in err
    assert cli("delete", "cli-older", "--if-revision", "1")[0] == 0


@pytest.mark.parametrize("value", ["-1", "1" + "0" * 38, "one"])
def test_an_if_revision_out_of_range_is_a_usage_error(cli, tmp_path, value) -> None:
    path = write(tmp_path / "p.json", {**CLI_POLICY, "id": "cli-never"})
    for argv in (["put", path], ["delete", "cli-never"]):
        code, out, err = cli(*argv, "--if-revision", value)
        assert (code, out) == (2, "") and "--if-revision" in err
    assert cli("get", "cli-never")[0] == 1  # nothing was written


def test_an_invalid_policy_is_refused_and_not_written(cli, tmp_path) -> None:
    document = {**CLI_POLICY, "id": "cli-bad", "claims": {"aud": "other-api"}}
    code, out, err = cli("put", write(tmp_path / "bad.json", document))
    assert (code, out) == (1, "")  # a well-formed command line, an invalid policy
    assert "invalid policy" in err and "claims.aud: reserved claim" in err
    assert cli("get", "cli-bad")[0] == 1


def test_hand_edited_invalid_item_is_reported(system, cli) -> None:
    dynamodb = system.deployment.client("dynamodb")
    document = '{"id": "zz-hand-edited", "effect": "allow"}'
    item = {"id": {"S": "zz-hand-edited"}, "document": {"S": document}}
    dynamodb.put_item(TableName=system.deployment.policy_table, Item=item)
    try:
        code, _, err = cli("list")
        assert code == 0 and "invalid document zz-hand-edited: the exchange skips it" in err
        # In a process of its own, as in a shell: no logging handler anywhere, so the
        # store's warning would reach stderr through Python's last resort.
        deployment = system.deployment
        where = ["--table", deployment.policy_table, "--region", deployment.region]
        where += ["--endpoint-url", deployment.endpoint_url]
        listed = subprocess.run(
            [sys.executable, "-m", "tokex.cli.main", "policy", "list", "--json", *where],
            env={**os.environ, **deployment.service.env()},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (listed.returncode, listed.stderr) == (0, "")
        assert json.loads(listed.stdout)["invalid"] == ["zz-hand-edited"]
        code, _, err = cli("get", "zz-hand-edited")
        assert code == 1 and "is invalid (principals:" in err
        assert "the exchange skips it (it decides nothing" in err
        code, out, _ = cli("explain", "--principal", USER_ARN, "--audience", "demo-api", "--json")
        assert code == 0 and json.loads(out)["invalid_policies"] == ["zz-hand-edited"]
    finally:
        assert cli("delete", "zz-hand-edited")[0] == 0


def test_an_invalid_item_that_may_be_a_deny_fails_the_listing_after_listing_all(
    system, cli
) -> None:
    """The exchange answers 503 while it is there: the listing says so and fails, yet shows
    every policy and every invalid item (it stopped at the first such item)."""
    dynamodb = system.deployment.client("dynamodb")
    for item_id in ("zz-maybe-deny", "zz-another"):
        item = {"id": {"S": item_id}, "document": {"S": json.dumps({"id": item_id})}}
        dynamodb.put_item(TableName=system.deployment.policy_table, Item=item)
    try:
        code, out, err = cli("list")
        assert code == 1 and "zz-maybe-deny" in err and "may be a deny" in err
        assert "every exchange answers 503 until it is fixed or deleted" in err
        assert "zz-maybe-deny, zz-another" in err or "zz-another, zz-maybe-deny" in err
        assert "demo-" in out  # the valid policies, listed all the same
        code, out, _ = cli("list", "--json")
        failure = json.loads(out)
        assert code == 1 and failure["error"] == "invalid_policy"  # not an AWS failure
        assert failure["invalid"] == ["zz-another", "zz-maybe-deny"] and failure["policies"]
        assert cli("delete", "zz-another")[0] == 0
        code, _, err = cli("get", "zz-maybe-deny")
        assert code == 1 and "is invalid (effect: is required)" in err
        assert "every exchange answers 503 until it is fixed or deleted" in err  # not "skips"
    finally:
        assert cli("delete", "zz-maybe-deny")[0] == 0
    assert cli("list")[0] == 0


def test_an_item_under_an_id_put_refuses_is_got_and_deleted_with_the_cli(system, cli) -> None:
    """Written straight to the table, "orders api" breaks POLICY_ID, and its document may
    be a deny: every exchange answers 503. `policy list` says to fix it with `tokex policy
    get/delete`, and those take its id: the outage ends without the AWS CLI."""
    table = system.deployment.policy_table
    dynamodb = system.deployment.client("dynamodb")
    item_id = "orders api"
    item = {"id": {"S": item_id}, "document": {"S": json.dumps({"id": item_id})}}
    dynamodb.put_item(TableName=table, Item=item)
    exchange_handler = cold_exchange_handler(system, TOKEX_POLICY_CACHE_SECONDS="0")
    try:
        assert invoke_exchange(exchange_handler, sign(system))[0] == 503
        code, _, err = cli("list")
        assert code == 1 and "orders api make every exchange answer 503" in err
        assert "(tokex policy get/delete)" in err
        code, _, err = cli("get", item_id)
        assert code == 1 and "stored policy 'orders api' is invalid (" in err
        assert "every exchange answers 503 until it is fixed or deleted" in err
        assert cli("delete", item_id) == (0, "orders api\n", "")
        assert "Item" not in dynamodb.get_item(TableName=table, Key={"id": {"S": item_id}})
        assert invoke_exchange(exchange_handler, sign(system))[0] == 200
    finally:
        dynamodb.delete_item(TableName=table, Key={"id": {"S": item_id}})


def test_aws_failures_are_clear_errors(cli, monkeypatch) -> None:
    code, out, err = cli("list", "--table", "no-such-table")
    assert (code, out) == (1, "")
    assert "dynamodb GetItem: ResourceNotFoundException (no such table in this region?)" in err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code, _, err = cli("get", "demo-workload")
    assert code == 1 and err.startswith("tokex policy: policy table 'tokex-policies': dynamodb")


# --- explain == exchange ----------------------------------------------------------------

WORKLOAD, USER = "workload", "user"
REFUSALS = {"invalid_grant", "invalid_scope", "invalid_target"}  # the rest are policy ids
CASES = [
    # (who, audience, scope, instance document changes or None, expected policy / error)
    (WORKLOAD, "demo-api", None, None, "demo-workload"),
    (WORKLOAD, "demo-api", "demo:read", None, "demo-workload"),
    (USER, "demo-api", "demo:write demo:read", None, "demo-workload"),
    (WORKLOAD, "demo-api", "demo:admin", None, "invalid_scope"),
    (WORKLOAD, "orders-api", None, None, "invalid_target"),  # denied by orders-deny
    (USER, "orders-api", "orders:read", None, "orders-demo"),
    (WORKLOAD, "reports-api", None, None, "reports-workload"),  # most specific
    (USER, "reports-api", None, None, "orders-demo"),
    (USER, "reports-api", "reports:read", None, "invalid_scope"),
    (WORKLOAD, "payments-api", None, None, "invalid_target"),  # unknown audience
    (WORKLOAD, "off-api", None, None, "invalid_target"),  # disabled
    (WORKLOAD, "pinned-api", None, None, "pinned"),  # principal id matches
    (WORKLOAD, "stale-api", None, None, "invalid_target"),  # principal id differs
    (WORKLOAD, DEMO_INSTANCE_AUDIENCE, None, None, "invalid_target"),  # needs evidence
    (WORKLOAD, DEMO_INSTANCE_AUDIENCE, None, {}, "demo-instance"),
    (WORKLOAD, DEMO_INSTANCE_AUDIENCE, "instance:admin", {}, "invalid_scope"),
    (WORKLOAD, "typed-api", None, {}, "invalid_target"),  # t4g.micro
    (WORKLOAD, "typed-api", None, {"instanceType": "m7g.large"}, "graviton"),
    (WORKLOAD, "demo-api", None, {}, "demo-workload"),  # evidence no policy needs
    (WORKLOAD, "demo-api", None, {"accountId": "210987654321"}, "invalid_grant"),
    (USER, DEMO_INSTANCE_AUDIENCE, None, {}, "invalid_target"),
]


# The workload as STS names it (assumed-role session) and as IAM does (role ARN).
EXPLAIN_CASES = [("sts-arn", *case) for case in CASES]
EXPLAIN_CASES += [("role-arn", *case) for case in CASES if case[0] == WORKLOAD]


@pytest.mark.parametrize("principal_form,who,audience,scope,changes,expected", EXPLAIN_CASES)
def test_explain_gives_the_exchange_decision(
    system, cli, tmp_path, principal_form, who, audience, scope, changes, expected
) -> None:
    credentials = system.deployment.workload if who == WORKLOAD else system.deployment.user
    sts = system.deployment.client("sts", credentials).get_caller_identity()
    arn = sts["Arn"] if principal_form == "sts-arn" else DEMO_ROLE_ARN
    argv = ["--principal", arn, "--principal-id", sts["UserId"].split(":")[0]]
    argv += ["--audience", audience, "--json"]
    argv += ["--scope", scope] if scope else []
    evidence = None
    if changes is not None:
        document = json.dumps({**DEMO_DOCUMENT, **changes}, indent=2)
        evidence = {"document": document, "rsa2048": system.imds.sign(document)}
        (tmp_path / "document").write_text(document)
        argv += ["--instance-document", str(tmp_path / "document")]

    code, out, _ = cli("explain", *argv)
    assert code == 0
    explained = json.loads(out)

    def request():
        return exchange(
            system,
            signed=sign(system, credentials=credentials),
            audience=audience,
            scope=scope,
            aws_instance_identity=None if evidence is None else encode_instance_evidence(evidence),
        )

    if expected not in REFUSALS:
        status, _, body = request()
        assert status == 200, body
        claims = verify(system, body["access_token"], audience=audience)
        answered = (claims["policy"], body.get("scope", "").split(), claims["exp"] - claims["iat"])
        assert answered == (explained["policy"], explained["scopes"], explained["ttl_seconds"])
        assert explained["decision"] == "allow"
        assert claims["sub"] == explained["caller"]["principal"]
        assert claims["policy"] == expected
    else:
        # The exchange refuses with the error and the reason explain gives.
        refusal = explained["refusal"]
        assert (explained["decision"], refusal["error"]) == ("refuse", expected), explained
        assert_refused(request, 400, expected, refusal["reason"])
    assert "error" not in explained  # the command itself did not fail
