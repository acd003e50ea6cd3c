"""`tokex policy validate` and `tokex policy explain --policy-file` (offline), through
`tokex.cli.main.main` as the console script runs it: output, exit codes, no tracebacks."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tokex.adapters.sts import _caller_identity
from tokex.cli.main import main
from tokex.cli.policy_explain import SIGNATURE_VARIANTS, caller_from_principal
from tokex.errors import InvalidScope, InvalidTarget
from tokex.evidence.instance_identity import VARIANTS
from tokex.policy.evaluate import evaluate
from tokex.policy.model import Policy

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/orders-api"
SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-api/worker-1"
USER = f"arn:aws:iam::{ACCOUNT}:user/ops/alice"
SAMPLE = (
    Path(__file__).parents[1] / "data/aws-iid/samples/us-west-2_2021-09_rsa2048_teleport-instance1"
)

READER = {
    "id": "orders-reader",
    "effect": "allow",
    "principals": [f"arn:aws:iam::{ACCOUNT}:role/orders-*", USER],
    "audiences": ["orders-api", "reports-*"],
    "scopes": ["orders:read", "orders:write"],
    "claims": {"team": "orders"},
}
EXACT = {
    "id": "reports-exact",
    "effect": "allow",
    "principals": [ROLE],
    "audiences": ["reports-api"],
    "scopes": ["reports:read"],
    "max_ttl_seconds": 300,
}
DENY = {
    "id": "no-legacy",
    "effect": "deny",
    "principals": [f"arn:aws:iam::{ACCOUNT}:role/orders-legacy"],
    "audiences": ["*"],
}
PINNED = {
    "id": "pinned",
    "effect": "allow",
    "principals": [ROLE],
    "principal_ids": ["AROAPINNED"],
    "audiences": ["pinned-api"],
}
DISABLED = {**PINNED, "id": "off", "principal_ids": [], "audiences": ["off-api"], "enabled": False}
ON_EC2 = {
    "id": "on-ec2",
    "effect": "allow",
    "principals": ["arn:aws:iam::278576220453:role/*"],
    "audiences": ["ec2-api"],
    "instance": {"required": True, "regions": ["us-west-2"], "tags": {"team": ["orders"]}},
}
ALL = [READER, EXACT, DENY, PINNED, DISABLED]


def write(tmp_path: Path, document: Any, name: str | None = None) -> str:
    path = tmp_path / f"{name or document['id']}.json"
    path.write_text(json.dumps(document))
    return str(path)


def tokex(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def explain_json(capsys, tmp_path, *argv: str, documents=ALL) -> dict[str, Any]:
    files = [arg for doc in documents for arg in ("--policy-file", write(tmp_path, doc))]
    code, out, _ = tokex(capsys, "explain", *files, *argv, "--json")
    assert code == 0
    return json.loads(out)


# --- validate ---------------------------------------------------------------------------


def test_validate_accepts_a_valid_document(capsys, tmp_path) -> None:
    assert tokex(capsys, "validate", write(tmp_path, READER)) == (
        0,
        "valid: orders-reader (allow)\n",
        "",
    )
    code, out, _ = tokex(capsys, "validate", write(tmp_path, READER), "--json")
    result = json.loads(out)
    assert (code, result["valid"], result["id"], result["warnings"]) == (0, True, READER["id"], [])
    assert Policy.from_document(result["document"]) == Policy.from_document(READER)


def test_validate_reads_stdin(capsys, monkeypatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(json.dumps(DENY).encode()))
    monkeypatch.setattr("sys.stdin", stdin)
    assert tokex(capsys, "validate", "-")[:2] == (0, "valid: no-legacy (deny)\n")


@pytest.mark.parametrize(
    "change,field,why",
    [
        ({"principals": ["arn:aws:iam::*:role/x"]}, "principals[0]", "account"),
        ({"principals": ["*"]}, "principals[0]", "bare wildcard"),
        ({"claims": {"sub": "me"}}, "claims.sub", "reserved"),
        ({"max_ttl_seconds": 7200}, "max_ttl_seconds", "between 60 and 3600"),
        ({"audiences": []}, "audiences", "must not be empty"),
        ({"colour": "blue"}, "colour", "unknown key"),
        ({"effect": "deny", "claims": {}}, "scopes", "not allowed on a deny"),
        ({"id": "has space"}, "id", "1-128 characters"),
    ],
)
def test_validate_names_the_field_and_why(capsys, tmp_path, change, field, why) -> None:
    path = write(tmp_path, {**READER, **change}, "bad")
    code, out, err = tokex(capsys, "validate", path)
    assert (code, out) == (1, "")  # a well-formed command line, an invalid policy
    assert err.startswith(f"tokex policy: invalid policy {path}: {field}: ")
    assert why in err
    code, out, err = tokex(capsys, "validate", path, "--json")
    result = json.loads(out)
    assert (code, err, result["error"], result["input"]) == (1, "", "invalid_policy", path)
    assert [e["field"] for e in result["errors"]] == [field]
    assert why in result["errors"][0]["message"] and why in result["error_description"]


def test_validate_reports_every_error_of_a_document(capsys, tmp_path) -> None:
    document = {
        **READER,
        "id": "has space",
        "principals": ["arn:aws:iam::*:role/x", READER["principals"][0], "*"],
        "audiences": ["orders-api", "bad audience"],
        "claims": {"sub": "me", "team": "orders"},
        "max_ttl_seconds": 7200,
        "colour": "blue",
        "instance": {"regions": ["eu-west-1", "bad region!"], "tags": {"team": []}},
        "scopes": ["a", "a"],
    }
    path = write(tmp_path, document, "bad")
    code, out, _ = tokex(capsys, "validate", path, "--json")
    result = json.loads(out)
    assert code == 1 and result["valid"] is False
    assert [e["field"] for e in result["errors"]] == [
        "id",
        "principals[0]",
        "principals[2]",
        "audiences[1]",
        "scopes",
        "claims.sub",
        "max_ttl_seconds",
        "colour",
        "instance.regions[1]",
        "instance.tags.team",
    ]
    # Each is the model's own verdict on that value.
    messages = {e["field"]: e["message"] for e in result["errors"]}
    assert messages["scopes"] == "duplicate entries"
    assert messages["colour"] == "unknown key"
    assert "reserved" in messages["claims.sub"]
    code, _, err = tokex(capsys, "validate", path)
    assert code == 1
    assert err.startswith(f"tokex policy: invalid policy {path}: 10 errors:\n  id: ")
    assert "\n  instance.tags.team: must list at least one value glob\n" in err


def test_validate_reports_missing_keys_and_deny_only_keys(capsys, tmp_path) -> None:
    (tmp_path / "empty.json").write_text("{}")
    _, out, _ = tokex(capsys, "validate", str(tmp_path / "empty.json"), "--json")
    missing = [(e["field"], e["message"]) for e in json.loads(out)["errors"]]
    assert missing == [(k, "is required") for k in ("id", "effect", "principals", "audiences")]
    deny = {**DENY, "principals": [], "scopes": ["x", "y"]}
    _, out, _ = tokex(capsys, "validate", write(tmp_path, deny), "--json")
    assert [(e["field"], e["message"]) for e in json.loads(out)["errors"]] == [
        ("principals", "must not be empty"),
        ("scopes", "not allowed on a deny policy"),
    ]


@pytest.mark.parametrize(
    "text,why",
    [
        ('{"id": "a",\n "id": "b"}', 'repeats the key "id"'),
        ('{"id": "a",\n', "not valid JSON (Expecting property name enclosed in double quotes"),
        ("[1]", "document: must be an object"),
    ],
)
def test_validate_refuses_malformed_json(capsys, tmp_path, text, why) -> None:
    (tmp_path / "p.json").write_text(text)
    code, _, err = tokex(capsys, "validate", str(tmp_path / "p.json"))
    assert code == 1 and why in err


def test_validate_uses_the_given_ttl_cap(capsys, tmp_path) -> None:
    path = write(tmp_path, {**READER, "max_ttl_seconds": 7200})
    assert tokex(capsys, "validate", path, "--ttl-cap", "43200")[0] == 0
    assert tokex(capsys, "validate", path)[0] == 1  # 7200 exceeds the default cap
    code, _, err = tokex(capsys, "validate", path, "--ttl-cap", "5")  # a flag out of range
    assert (code, err) == (2, "tokex policy: --ttl-cap 5: must be 60..43200 seconds\n")


def test_validate_refuses_a_role_path_that_could_never_match(capsys, tmp_path) -> None:
    path = write(tmp_path, {**READER, "principals": [f"arn:aws:iam::{ACCOUNT}:role/team/x"]})
    code, _, err = tokex(capsys, "validate", path)
    assert code == 1
    assert "principals[0]" in err and "never reveals a role's path" in err


def test_a_missing_file_is_a_usage_error_and_bad_content_a_failure(capsys, tmp_path) -> None:
    missing = str(tmp_path / "missing.json")
    code, out, err = tokex(capsys, "validate", missing)
    assert (code, out, err) == (2, "", f"tokex policy: policy document {missing}: no such file\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    code, _, err = tokex(capsys, "validate", str(tmp_path / "binary"))
    assert code == 1 and "not UTF-8" in err


# --- usage errors -------------------------------------------------------------------------


def test_commands_that_need_a_deployment_say_how_to_name_it(capsys) -> None:
    code, _, err = tokex(capsys, "list")
    assert code == 2
    assert "--table NAME or --stack NAME" in err
    code, out, _ = tokex(capsys, "list", "--json")
    assert code == 2 and json.loads(out)["input"] == "--table"


@pytest.mark.parametrize(
    "argv",
    [
        ["policy"],
        ["policy", "list", "--table", "a", "--stack", "b"],
        ["policy", "explain", "--principal", ROLE],
        [
            "policy",
            "explain",
            "--audience",
            "a",
            "--principal",
            ROLE,
            "--rsa2048",
            "a",
            "--pkcs7",
            "b",
        ],
    ],
)
def test_argparse_usage_errors_exit_2(argv, capsys) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: tokex policy")


@pytest.mark.parametrize(
    "argv,why",
    [
        (["--principal", f"arn:aws:iam::{ACCOUNT}:root"], "iam 'root' is not a role"),
        (
            ["--principal", f"arn:aws:sts::{ACCOUNT}:federated-user/x"],
            "sts 'federated-user' is not a role, role session or IAM user",
        ),
        (
            ["--principal", f"arn:aws:sts::{ACCOUNT}:assumed-role/demo-workload/x"],
            "session name 'x' is not 2-64 characters",
        ),
        (["--principal", f"arn:aws:iam::{ACCOUNT[:-1]}:role/x"], "account '12345678901' is not"),
        (["--principal", f"arn:aws:iam:eu-west-1:{ACCOUNT}:role/x"], "have no region"),
        (["--principal", "role/orders-api"], "needs --account"),
        (["--principal", ROLE, "--account", "210987654321"], "differs"),
        (["--principal", ROLE, "--principal-id", "AROA:x"], "--principal-id"),
        (["--principal", ROLE, "--audience", "bad audience"], "--audience"),
        (["--principal", ROLE, "--scope", 'a"b'], "--scope"),
        (["--principal", ROLE, "--default-ttl", "7200"], "exceeds the TTL cap 3600"),
        (["--principal", ROLE, "--ttl-cap", "50000"], "--ttl-cap 50000: must be"),
        (["--principal", ROLE, "--rsa2048", "x"], "give --instance-document"),
        (["--principal", ROLE, "--instance-document", "nope"], "nope: no such file"),
        (["--principal", ROLE, "--instance-tag", "novalue"], "KEY=VALUE"),
        (["--principal", ROLE, "--table", "t"], "--policy-file replaces"),
    ],
)
def test_explain_usage_errors(capsys, tmp_path, argv, why) -> None:
    if "--audience" not in argv:
        argv = [*argv, "--audience", "orders-api"]
    code, out, err = tokex(capsys, "explain", "--policy-file", write(tmp_path, READER), *argv)
    assert (code, out) == (2, "")
    assert why in err
    code, out, _ = tokex(
        capsys, "explain", "--policy-file", write(tmp_path, READER), *argv, "--json"
    )
    assert code == 2 and why in json.loads(out)["error_description"]


# --- explain ------------------------------------------------------------------------------


def test_explain_text_shows_every_policy_and_the_decision(capsys, tmp_path) -> None:
    files = [arg for doc in ALL for arg in ("--policy-file", write(tmp_path, doc))]
    argv = ["explain", *files, "--principal", SESSION, "--audience", "orders-api"]
    code, out, _ = tokex(capsys, *argv, "--scope", "orders:read")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"principal  {ROLE}  (principal id: not given)"
    assert "no-legacy      deny   skipped: does not match the principal" in lines
    assert "off            allow  skipped: disabled" in lines
    assert "=> allowed by orders-reader: scopes [orders:read], ttl 900 s" in lines
    assert '   claims {"team": "orders"}' in lines
    assert lines[-1] == "(nothing was issued)"


@pytest.mark.parametrize(
    "principal,audience,scopes,expected",
    [
        (SESSION, "orders-api", [], ("orders-reader", ["orders:read", "orders:write"], 900)),
        (ROLE, "orders-api", ["orders:write orders:read"], ("orders-reader", None, 900)),
        (USER, "reports-api", [], ("orders-reader", ["orders:read", "orders:write"], 900)),
        (SESSION, "reports-api", [], ("reports-exact", ["reports:read"], 300)),  # specific
        (f"arn:aws:iam::{ACCOUNT}:role/orders-legacy", "orders-api", [], "invalid_target"),
        (SESSION, "payments-api", [], "invalid_target"),
        (SESSION, "off-api", [], "invalid_target"),
        (SESSION, "pinned-api", [], "invalid_target"),
        (SESSION, "orders-api", ["orders:admin"], "invalid_scope"),
        (f"arn:aws:iam::{ACCOUNT}:user/alice", "orders-api", [], "invalid_target"),  # path
    ],
)
def test_explain_json_decisions(capsys, tmp_path, principal, audience, scopes, expected) -> None:
    argv = ["--principal", principal, "--audience", audience]
    argv += [arg for scope in scopes for arg in ("--scope", scope)]
    result = explain_json(capsys, tmp_path, *argv)
    assert "error" not in result  # the command did not fail: the verdict is data
    if isinstance(expected, str):
        refusal = result["refusal"]
        assert (result["decision"], refusal["error"], result["policy"]) == (
            "refuse",
            expected,
            None,
        )
        assert refusal["error_description"] and refusal["reason"]
        return
    policy_id, granted, ttl = expected
    assert (result["decision"], result["refusal"], result["policy"]) == ("allow", None, policy_id)
    assert result["scopes"] == (granted or ["orders:read", "orders:write"])
    assert result["ttl_seconds"] == ttl


def test_explain_reason_names_the_deny(capsys, tmp_path) -> None:
    principal = f"arn:aws:iam::{ACCOUNT}:role/orders-legacy"
    result = explain_json(capsys, tmp_path, "--principal", principal, "--audience", "orders-api")
    assert result["refusal"]["reason"] == "denied by policy no-legacy"
    assert [line["applies"] for line in result["policies"] if line["policy_id"] == "no-legacy"] == [
        True
    ]


def test_explain_principal_id_decides_pinned_policies(capsys, tmp_path) -> None:
    argv = ["--principal", SESSION, "--audience", "pinned-api"]
    result = explain_json(capsys, tmp_path, *argv)
    assert result["refusal"]["error"] == "invalid_target"
    assert any("--principal-id" in note for note in result["notes"])
    result = explain_json(capsys, tmp_path, *argv, "--principal-id", "AROAPINNED")
    assert (result["policy"], result["caller"]["principal_id"]) == ("pinned", "AROAPINNED")
    assert explain_json(capsys, tmp_path, *argv, "--principal-id", "AROAOTHER")["policy"] is None


def test_explain_maps_principals_as_the_sts_forwarder_does(capsys, tmp_path) -> None:
    with_path = f"arn:aws:iam::{ACCOUNT}:role/team/orders-api"
    result = explain_json(capsys, tmp_path, "--principal", with_path, "--audience", "orders-api")
    assert result["caller"]["principal"] == ROLE
    assert any("role path /team/ dropped" in note for note in result["notes"])
    short = explain_json(
        capsys, tmp_path, "--principal", "user/ops/alice", "--account", ACCOUNT, "--audience", "x"
    )
    assert short["caller"]["principal"] == USER and short["caller"]["session_name"] is None
    caller, _ = caller_from_principal(SESSION, None, "AROAX")
    forwarded = _caller_identity(
        {"Arn": SESSION, "UserId": "AROAX:worker-1", "Account": ACCOUNT}, "aws"
    )
    assert caller == forwarded


def test_explain_agrees_with_evaluate(tmp_path, capsys) -> None:
    """The CLI adds nothing to the decision: for a grid of inputs it equals `evaluate`."""
    policies = [Policy.from_document(doc) for doc in ALL]
    principals = [ROLE, SESSION, USER, f"arn:aws:iam::{ACCOUNT}:role/orders-legacy"]
    for principal in principals:
        caller, _ = caller_from_principal(principal, None, "AROAPINNED")
        for audience in ("orders-api", "reports-api", "pinned-api", "off-api", "nope"):
            for scopes in ((), ("orders:read",), ("reports:read",)):
                argv = ["--principal", principal, "--audience", audience, "--principal-id"]
                argv += ["AROAPINNED", *[a for s in scopes for a in ("--scope", s)]]
                result = explain_json(capsys, tmp_path, *argv)
                try:
                    decision = evaluate(
                        policies,
                        caller,
                        audience,
                        scopes or None,
                        None,
                        default_ttl=900,
                        ttl_cap=3600,
                    )
                except (InvalidTarget, InvalidScope) as refusal:
                    got = (result["refusal"]["error"], result["refusal"]["reason"])
                    assert got == (refusal.error, refusal.reason)
                else:
                    got = (result["policy"], result["scopes"], result["ttl_seconds"])
                    assert got == (decision.policy.id, list(decision.scopes), decision.ttl_seconds)


def test_explain_with_an_unverified_instance_document(capsys, tmp_path) -> None:
    document = str(SAMPLE / "document")
    argv = ["--principal", "role/ec2-app", "--account", "278576220453", "--audience", "ec2-api"]
    result = explain_json(capsys, tmp_path, *argv, documents=[ON_EC2])
    assert result["refusal"]["error"] == "invalid_target" and result["instance"] is None
    result = explain_json(
        capsys, tmp_path, *argv, "--instance-document", document, documents=[ON_EC2]
    )
    assert result["policies"][0]["detail"] == "has tag conditions but no tag lookup is configured"
    assert any("--instance-tag" in note for note in result["notes"])
    assert any("NOT verified" in note for note in result["notes"])
    argv += ["--instance-document", document, "--instance-tag", "team=orders"]
    result = explain_json(capsys, tmp_path, *argv, documents=[ON_EC2])
    assert result["policy"] == "on-ec2"
    assert result["instance"]["id"] == "i-078517ca8a70a1dde"
    other = ["--instance-tag", "team=billing"]
    assert explain_json(capsys, tmp_path, *argv, *other, documents=[ON_EC2])["policy"] is None


def test_explain_verifies_an_instance_document_with_its_signature(capsys, tmp_path) -> None:
    argv = ["--principal", "role/ec2-app", "--account", "278576220453", "--audience", "ec2-api"]
    argv += ["--instance-document", str(SAMPLE / "document"), "--instance-tag", "team=orders"]
    result = explain_json(
        capsys, tmp_path, *argv, "--rsa2048", str(SAMPLE / "rsa2048"), documents=[ON_EC2]
    )
    assert result["policy"] == "on-ec2"
    assert any("verified (pinned certificate rsa2048/us-west-2)" in n for n in result["notes"])
    tampered = tmp_path / "document"
    tampered.write_bytes((SAMPLE / "document").read_bytes().replace(b"10.0", b"10.1"))
    argv[argv.index(str(SAMPLE / "document"))] = str(tampered)
    result = explain_json(
        capsys, tmp_path, *argv, "--rsa2048", str(SAMPLE / "rsa2048"), documents=[ON_EC2]
    )
    assert (result["refusal"]["error"], result["policies"]) == ("invalid_grant", [])


def test_explain_refuses_evidence_the_exchange_would_not_bind(capsys, tmp_path) -> None:
    argv = ["--principal", ROLE, "--audience", "orders-api"]
    argv += ["--instance-document", str(SAMPLE / "document")]
    code, out, _ = tokex(capsys, "explain", "--policy-file", write(tmp_path, READER), *argv)
    assert code == 0
    assert "=> refused (invalid_grant) before any policy: instance identity document is for " in out
    session = "arn:aws:sts::278576220453:assumed-role/ec2-app/i-0fedcba9876543210"
    argv = ["--principal", session, "--audience", "ec2-api"]
    argv += ["--instance-document", str(SAMPLE / "document"), "--instance-tag", "team=orders"]
    result = explain_json(capsys, tmp_path, *argv, documents=[ON_EC2])
    refusal = result["refusal"]
    assert refusal["error"] == "invalid_grant" and "instance" in refusal["error_description"]


def test_signature_variants_match_the_verifier() -> None:
    assert SIGNATURE_VARIANTS == VARIANTS


def test_unreachable_table_is_a_runtime_error(capsys, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    argv = ["--table", "t", "--region", "us-east-1", "--endpoint-url", "http://127.0.0.1:9"]
    code, out, err = tokex(capsys, "list", *argv)
    assert (code, out) == (1, "")
    assert err == (
        "tokex policy: policy table 't': dynamodb Scan: EndpointConnectionError "
        "(endpoint unreachable)\n"
    )
