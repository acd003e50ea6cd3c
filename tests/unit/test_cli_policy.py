"""`tokex policy validate` and `tokex policy explain --policy-file` (offline), through
`tokex.cli.main.main` as the console script runs it: output, exit codes, no tracebacks."""

from __future__ import annotations

import io
import json
from datetime import datetime
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
DISABLED = {
    "id": "off",
    "effect": "allow",
    "principals": [ROLE],
    "audiences": ["off-api"],
    "enabled": False,
}
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


@pytest.mark.parametrize("levels", [30, 600])
def test_a_deeply_nested_value_is_an_invalid_policy_not_a_crash(capsys, tmp_path, levels) -> None:
    """The error finder descends into each part; a file may nest some 990 levels."""
    nested: Any = "orders-api"
    for _ in range(levels):
        nested = [nested]
    document = {
        "id": "deep",
        "effect": "allow",
        "principals": ["arn:aws:iam::111122223333:role/orders-api"],
        "audiences": nested,
    }
    code, out, _ = tokex(capsys, "validate", write(tmp_path, document), "--json")
    result = json.loads(out)
    assert (code, result["error"]) == (1, "invalid_policy")
    assert result["errors"] == [{"field": "audiences[0]", "message": "must be a string"}]


@pytest.mark.parametrize(
    "change,field,why",
    [
        ({"principals": ["arn:aws:iam::*:role/x"]}, "principals[0]", "account"),
        ({"principals": ["*"]}, "principals[0]", "bare wildcard"),
        ({"claims": {"sub": "me"}}, "claims.sub", "reserved"),
        ({"max_ttl_seconds": 7200}, "max_ttl_seconds", "between 60 and 3600"),
        ({"audiences": []}, "audiences", "must not be empty"),
        ({"principal_ids": []}, "principal_ids", "leave it out to allow any principal id"),
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


@pytest.mark.parametrize(("principal", "pattern"), [(SESSION, ROLE), (USER, USER)])
def test_explain_without_a_principal_id_says_it_was_not_given(
    capsys, tmp_path, principal, pattern
) -> None:
    """Nothing was compared: not "principal id differs (principal re-created?)", which
    stays the reason for an id that is given, as in the exchange."""
    pinned = {**PINNED, "principals": [pattern]}
    argv = ["--principal", principal, "--audience", "pinned-api"]
    for more, why in (
        ([], "principal id not given"),
        (["--principal-id", "AROAOTHER"], "principal id differs (principal re-created?)"),
    ):
        result = explain_json(capsys, tmp_path, *argv, *more, documents=[pinned])
        assert [line["detail"] for line in result["policies"]] == [why]
        assert result["refusal"]["reason"] == f"policy pinned {why}"


def test_explain_says_a_role_shorthand_is_read_in_the_aws_partition(capsys, tmp_path) -> None:
    argv = ["--principal", "role/orders-api", "--account", ACCOUNT, "--audience", "orders-api"]
    result = explain_json(capsys, tmp_path, *argv)
    assert f"role/orders-api read as arn:aws:iam::{ACCOUNT}:role/orders-api (partition aws" in (
        " ".join(result["notes"])
    )


def test_explain_caps_a_policy_files_ttl_as_the_exchange_does(capsys, tmp_path) -> None:
    """The exchange reads stored documents against the largest cap and caps the TTL it
    grants: a file was refused for a TTL above --ttl-cap."""
    long = {**READER, "id": "long", "max_ttl_seconds": 3600}
    files = ["--policy-file", write(tmp_path, long, "long")]
    argv = ["explain", *files, "--principal", SESSION, "--audience", "orders-api", "--json"]
    code, out, _ = tokex(capsys, *argv, "--ttl-cap", "900", "--default-ttl", "900")
    result = json.loads(out)
    assert (code, result["policy"], result["ttl_seconds"]) == (0, "long", 900)


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
        # The listing's first call: the table's generation (adapters/policy_table.py).
        "tokex policy: policy table 't': dynamodb GetItem: EndpointConnectionError "
        "(endpoint unreachable)\n"
    )


# --- JWT evidence ------------------------------------------------------------------------

ISSUER = "https://abc123.tokens.sts.global.api.aws"
EKS_ISSUER = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
CLUSTER = f"{ACCOUNT}:us-east-1:prod"
OIF_CLAIMS = {
    "iss": ISSUER,
    "sub": ROLE,
    "aud": "tokex",
    "exp": 1_800_000_000,
    "jti": "c1f0e6a2",
    "https://sts.amazonaws.com/": {
        "aws_account": ACCOUNT,
        "principal_id": ROLE,
        "org_id": "o-abc1234567",
        "ou_path": ["o-abc1234567/r-ab12/ou-ab12-11111111/"],
        "lambda_source_function_arn": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:orders-a",
        "principal_tags": {"team": "orders"},
        "request_tags": {"job": "nightly-7"},
    },
}
EKS_CLAIMS = {
    "iss": EKS_ISSUER,
    "sub": "system:serviceaccount:payments:api",
    "kubernetes.io": {
        "namespace": "payments",
        "serviceaccount": {"name": "api", "uid": "u"},
        "pod": {"name": "api-7d9f", "uid": "p"},
    },
}
ORDERS_LAMBDA = {
    "id": "orders-lambda",
    "effect": "allow",
    "evidence": ["aws-oif"],
    "principals": [f"arn:aws:iam::{ACCOUNT}:role/orders-*"],
    "audiences": ["orders-api"],
    "scopes": ["orders:read"],
    "workload": {
        "lambda_function_arns": [f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:orders-*"],
        "principal_tags": {"team": ["orders"]},
    },
    "conditions": {
        "time_window": {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": ["08:00-18:00"]},
        "org_ids": ["o-abc1234567"],
        "ou_paths": ["o-abc1234567/r-ab12/*"],
    },
}
PAYMENTS_EKS = {
    "id": "payments-eks",
    "effect": "allow",
    "evidence": ["eks"],
    "eks": {"clusters": [CLUSTER], "namespaces": ["payments"], "service_accounts": ["api"]},
    "audiences": ["orders-api"],
    "scopes": ["orders:write"],
}
NO_SANDBOX = {
    "id": "no-sandbox",
    "effect": "deny",
    "evidence": ["eks"],
    "eks": {"clusters": [f"{ACCOUNT}:*:*"], "namespaces": ["sandbox"], "service_accounts": ["*"]},
    "audiences": ["*"],
}
JWT_POLICIES = [ORDERS_LAMBDA, PAYMENTS_EKS, NO_SANDBOX, READER, PINNED]
MONDAY_NOON = "2026-11-30T12:00:00Z"


def claims_file(tmp_path: Path, claims: Any, name: str = "claims") -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(claims if isinstance(claims, str) else json.dumps(claims))
    return str(path)


def oif_argv(tmp_path: Path, claims: Any = OIF_CLAIMS, *more: str) -> list[str]:
    argv = ["--evidence", "aws-oif", "--claims", claims_file(tmp_path, claims, "oif")]
    return [*argv, "--audience", "orders-api", *more]


def eks_argv(tmp_path: Path, claims: Any = EKS_CLAIMS, *more: str) -> list[str]:
    path = claims_file(tmp_path, claims, "eks")
    argv = ["--evidence", "eks", "--claims", path, "--cluster", CLUSTER]
    return [*argv, "--audience", "orders-api", *more]


def test_validate_knows_the_jwt_evidence_keys(capsys, tmp_path) -> None:
    for document in (ORDERS_LAMBDA, PAYMENTS_EKS, NO_SANDBOX):
        code, out, err = tokex(capsys, "validate", write(tmp_path, document))
        assert (code, out) == (0, f"valid: {document['id']} ({document['effect']})\n")
        # ORDERS_LAMBDA's principal_tags warn (test_validate_warns_about_principal_tags).
        assert err == "" or document is ORDERS_LAMBDA
        code, out, _ = tokex(capsys, "validate", write(tmp_path, document), "--json")
        assert json.loads(out)["document"] == Policy.from_document(document).to_document()


def test_validate_warns_about_request_tags_and_evidence_a_selector_excludes(
    capsys, tmp_path
) -> None:
    document = {
        **ORDERS_LAMBDA,
        "evidence": ["sigv4", "aws-oif"],
        "workload": {"request_tags": {"job": ["nightly-*"]}},
    }
    code, out, err = tokex(capsys, "validate", write(tmp_path, document))
    assert (code, out) == (0, "valid: orders-lambda (allow)\n")
    assert "warning: workload.request_tags are chosen by the caller" in err
    assert (
        "warning: workload.request_tags, conditions.org_ids, conditions.ou_paths: only aws-oif "
        "evidence carries them, so this policy never applies to sigv4 callers" in err
    )


def test_validate_warns_about_principal_tags(capsys, tmp_path) -> None:
    """An OIF token's principal_tags are aws:PrincipalTag: a tagged session's tags in
    place of its role's (IAM User Guide, "Understanding token claims")."""
    code, out, err = tokex(capsys, "validate", write(tmp_path, ORDERS_LAMBDA))
    assert (code, out) == (0, "valid: orders-lambda (allow)\n")
    assert err == (
        "tokex policy: warning: workload.principal_tags are aws:PrincipalTag: when the session "
        "was tagged (sts:TagSession), its session tags replace the role's: rely on a key only "
        "if the role's trust policy lets no one pass it as a session tag\n"
    )
    code, out, _ = tokex(capsys, "validate", write(tmp_path, ORDERS_LAMBDA), "--json")
    assert [w for w in json.loads(out)["warnings"] if "principal_tags" in w]


def test_validate_refuses_session_tags_which_no_token_carries(capsys, tmp_path) -> None:
    document = {**ORDERS_LAMBDA, "workload": {"session_tags": {"team": ["orders"]}}}
    path = write(tmp_path, document)
    code, out, err = tokex(capsys, "validate", path)
    assert (code, out) == (1, "")
    assert err == (
        f"tokex policy: invalid policy {path}: workload.session_tags: AWS OIF tokens carry no "
        "session_tags claim: a session's tags are in principal_tags (aws:PrincipalTag)\n"
    )


def test_validate_warns_about_selectors_only_a_signed_request_carries(capsys, tmp_path) -> None:
    document = {
        "id": "pinned",
        "effect": "allow",
        "principals": ["arn:aws:iam::111122223333:role/orders-api"],
        "principal_ids": ["AROAEXAMPLEID"],
        "instance": {"required": True},
        "audiences": ["orders-api"],
    }
    code, out, err = tokex(capsys, "validate", write(tmp_path, document))
    assert (code, out) == (0, "valid: pinned (allow)\n")
    assert (
        "warning: principal_ids, instance: only sigv4 evidence carries them, so this policy "
        "never applies to aws-oif callers" in err
    )
    code, _, err = tokex(capsys, "validate", write(tmp_path, {**document, "evidence": ["sigv4"]}))
    assert (code, err) == (0, "")


def test_a_null_is_not_an_absent_key(capsys, tmp_path) -> None:
    """A template that renders `null` must not turn a conditioned allow into a plain one."""
    document = {
        "id": "biz",
        "effect": "allow",
        "principals": ["arn:aws:iam::111122223333:role/orders-api"],
        "audiences": ["orders-api"],
        "conditions": None,
        "max_ttl_seconds": None,
    }
    code, out, _ = tokex(capsys, "validate", write(tmp_path, document), "--json")
    result = json.loads(out)
    assert (code, result["error"]) == (1, "invalid_policy")
    assert result["errors"] == [
        {"field": "conditions", "message": "must not be null: leave the key out"},
        {"field": "max_ttl_seconds", "message": "must not be null: leave the key out"},
    ]


@pytest.mark.parametrize(
    "change,field,why",
    [
        ({"evidence": ["eks"], "eks": PAYMENTS_EKS["eks"]}, "principals", "only eks"),
        ({"evidence": ["aws-oif", "eks"]}, "eks", "is required when evidence includes eks"),
        ({"eks": PAYMENTS_EKS["eks"]}, "eks", "only for a policy whose evidence includes eks"),
        ({"evidence": ["oidc"]}, "evidence[0]", "one of sigv4, aws-oif, eks"),
        ({"conditions": {"imds_v2": False}}, "conditions.imds_v2", "false is not a condition"),
        (
            {"conditions": {"time_window": {"hours": ["22:00-06:00"]}}},
            "conditions.time_window.hours[0]",
            "may not wrap midnight",
        ),
        ({"evidence": ["sigv4"]}, "workload", "only aws-oif evidence"),
    ],
)
def test_validate_names_the_jwt_field_and_why(capsys, tmp_path, change, field, why) -> None:
    path = write(tmp_path, {**ORDERS_LAMBDA, **change}, "bad")
    code, out, _ = tokex(capsys, "validate", path, "--json")
    result = json.loads(out)
    assert code == 1 and result["error"] == "invalid_policy"
    assert [e["field"] for e in result["errors"]][:1] == [field]
    assert why in result["errors"][0]["message"]


def test_validate_reports_every_error_of_a_jwt_document(capsys, tmp_path) -> None:
    document = {
        "id": "bad-eks",
        "effect": "allow",
        "evidence": ["eks", "eks"],
        "principals": [ROLE],
        "eks": {"clusters": ["*:us-east-1:prod", CLUSTER], "namespaces": ["Payments"]},
        "audiences": ["orders-api"],
        "workload": {"principal_tags": {"team": []}},
        "conditions": {"imds_v2": True, "time_window": {"days": ["Mon"], "hours": ["8-18"]}},
        "principal_ids": ["AROAX"],
    }
    path = write(tmp_path, document, "bad")
    _, out, _ = tokex(capsys, "validate", path, "--json")
    assert [(e["field"], e["message"]) for e in json.loads(out)["errors"]] == [
        ("evidence", "duplicate entries"),
        ("principals", "not allowed when evidence is only eks: name the workload in eks"),
        ("eks.service_accounts", "is required"),
        ("eks.clusters[0]", "account must be 12 digits, no wildcard"),
        ("eks.namespaces[0]", "must be a namespace glob (1-63 of a-z0-9- and * ?)"),
        ("workload.principal_tags.team", "must list at least one value glob"),
        ("conditions.imds_v2", "only aws-oif evidence carries it: add aws-oif to evidence"),
        ("conditions.time_window.days[0]", "must be one of mon tue wed thu fri sat sun"),
        ("conditions.time_window.hours[0]", "must be HH:MM-HH:MM (UTC, 00:00 to 24:00)"),
        ("principal_ids", "only sigv4 evidence carries principal ids: add sigv4 to evidence"),
    ]


def test_validate_reports_deny_only_errors_of_jwt_keys(capsys, tmp_path) -> None:
    deny = {**DENY, "evidence": ["sigv4"], "conditions": {"time_window": {"days": ["mon"]}}}
    _, out, _ = tokex(capsys, "validate", write(tmp_path, deny), "--json")
    assert [e["field"] for e in json.loads(out)["errors"]] == ["evidence", "conditions"]


def test_explain_an_oif_caller_from_its_claims(capsys, tmp_path) -> None:
    files = [arg for doc in JWT_POLICIES for arg in ("--policy-file", write(tmp_path, doc))]
    argv = ["explain", *files, *oif_argv(tmp_path), "--at", MONDAY_NOON]
    code, out, _ = tokex(capsys, *argv)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"principal  {ROLE}  (evidence: aws-oif)"
    assert lines[1].startswith('workload   {"org_id": "o-abc1234567", "ou_paths": [')
    assert f"time       {MONDAY_NOON}" in lines
    assert (
        "orders-lambda  allow  applies: principal "
        f"'arn:aws:iam::{ACCOUNT}:role/orders-*' (literal prefix 38); workload: "
        "lambda_function_arns ok, principal_tags.team ok; conditions: time_window ok, "
        "org_ids ok, ou_paths ok"
    ) in lines
    assert "payments-eks   allow  skipped: does not accept aws-oif evidence" in lines
    assert (
        "pinned         allow  skipped: has principal_ids, which aws-oif evidence cannot show"
        in lines
    )
    assert "=> allowed by orders-lambda: scopes [orders:read], ttl 900 s" in lines
    assert any(line.startswith("note: claims NOT verified") and ISSUER in line for line in lines)
    # A Saturday: the time window refuses, and says when it judged.
    result = explain_json(
        capsys, tmp_path, *oif_argv(tmp_path), "--at", "2026-11-28T12:00:00Z",
        documents=[ORDERS_LAMBDA, PAYMENTS_EKS],
    )  # fmt: skip
    assert result["refusal"]["reason"] == "policy orders-lambda condition time_window not met"
    line = next(p for p in result["policies"] if p["policy_id"] == "orders-lambda")
    assert line["conditions"][0] == "time_window no (sat 12:00 UTC)"
    assert result["at"] == "2026-11-28T12:00:00Z"


def test_explain_json_describes_the_jwt_caller(capsys, tmp_path) -> None:
    result = explain_json(
        capsys, tmp_path, *oif_argv(tmp_path), "--at", "2026-11-30T13:00:00+01:00",
        documents=JWT_POLICIES,
    )  # fmt: skip
    assert result["at"] == MONDAY_NOON and result["policy"] == "orders-lambda"
    caller = result["caller"]
    assert (caller["evidence"], caller["principal"], caller["principal_id"]) == (
        "aws-oif",
        ROLE,
        None,
    )
    assert caller["workload"]["lambda_function_arn"].endswith(":function:orders-a")
    assert caller["workload"]["request_tags"] == {"job": "nightly-7"}
    assert "source_vpc" not in caller["workload"] and caller["eks"] is None


def test_explain_an_eks_caller_from_its_claims(capsys, tmp_path) -> None:
    result = explain_json(capsys, tmp_path, *eks_argv(tmp_path), documents=JWT_POLICIES)
    assert (result["decision"], result["policy"], result["scopes"]) == (
        "allow",
        "payments-eks",
        ["orders:write"],
    )
    assert result["caller"]["principal"] == f"eks:{CLUSTER}:payments:api"
    assert result["caller"]["eks"]["pod"] == "api-7d9f"
    lines = {p["policy_id"]: p for p in result["policies"]}
    assert lines["orders-reader"]["detail"] == "does not accept eks evidence"
    assert lines["payments-eks"]["detail"] == (
        f"eks 'eks:{CLUSTER}:payments:api' (literal prefix {len(f'eks:{CLUSTER}:payments:api')})"
    )
    sandbox = {**EKS_CLAIMS, "sub": "system:serviceaccount:sandbox:api"}
    sandbox["kubernetes.io"] = {**EKS_CLAIMS["kubernetes.io"], "namespace": "sandbox"}
    result = explain_json(capsys, tmp_path, *eks_argv(tmp_path, sandbox), documents=JWT_POLICIES)
    assert result["refusal"]["reason"] == "denied by policy no-sandbox"
    code, out, _ = tokex(
        capsys, "explain", "--policy-file", write(tmp_path, PAYMENTS_EKS), *eks_argv(tmp_path)
    )
    assert code == 0
    assert out.splitlines()[0] == (
        f"principal  eks:{CLUSTER}:payments:api  (evidence: eks, pod api-7d9f)"
    )


def test_explain_refuses_claims_the_exchange_would_refuse(capsys, tmp_path) -> None:
    """The exchange's own mapping refuses them, before any policy (invalid_grant)."""
    other = json.loads(json.dumps(OIF_CLAIMS))
    other["https://sts.amazonaws.com/"]["principal_id"] = "arn:aws:iam::210987654321:role/x"
    result = explain_json(capsys, tmp_path, *oif_argv(tmp_path, other), documents=JWT_POLICIES)
    assert (result["refusal"]["error"], result["policies"], result["caller"]) == (
        "invalid_grant",
        [],
        None,
    )
    assert result["refusal"]["reason"] == "oif_principal"
    no_account = {**OIF_CLAIMS, "https://sts.amazonaws.com/": {"principal_id": ROLE}}
    result = explain_json(capsys, tmp_path, *oif_argv(tmp_path, no_account), documents=[READER])
    assert result["refusal"]["reason"] == "oif_account"
    no_jti = {key: value for key, value in OIF_CLAIMS.items() if key != "jti"}
    result = explain_json(capsys, tmp_path, *oif_argv(tmp_path, no_jti), documents=JWT_POLICIES)
    assert (result["refusal"]["error"], result["refusal"]["reason"]) == ("invalid_grant", "jwt_jti")
    mismatch = {**EKS_CLAIMS, "sub": "system:serviceaccount:payments:other"}
    files = ["--policy-file", write(tmp_path, PAYMENTS_EKS)]
    code, out, _ = tokex(capsys, "explain", *files, *eks_argv(tmp_path, mismatch))
    assert code == 0
    assert "principal  (none: the exchange refuses the token's claims)" in out
    assert "=> refused (invalid_grant) before any policy: the token's sub does not name" in out


@pytest.mark.parametrize(
    "content,why",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object (the token's payload)"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "looks like the compact token"),
    ],
)
def test_explain_claims_that_are_not_a_payload_are_a_failure(capsys, tmp_path, content, why):
    argv = ["explain", "--policy-file", write(tmp_path, READER), *oif_argv(tmp_path, content)]
    code, out, err = tokex(capsys, *argv)
    assert (code, out) == (1, "")
    assert why in err
    code, out, _ = tokex(capsys, *argv, "--json")
    assert code == 1 and json.loads(out)["error"] == "invalid_input"


@pytest.mark.parametrize(
    "argv,flag,why",
    [
        (["--audience", "a"], "--principal", "--principal is required with --evidence sigv4"),
        (["--principal", ROLE, "--audience", "a", "--claims", "c.json"], "--claims", "JWT caller"),
        (["--principal", ROLE, "--audience", "a", "--cluster", CLUSTER], "--cluster", "JWT caller"),
        (["--evidence", "aws-oif", "--audience", "a"], "--claims", "needs --claims FILE"),
        (
            ["--evidence", "aws-oif", "--claims", "c.json", "--principal", ROLE, "--audience", "a"],
            "--principal",
            "describes a SigV4 caller",
        ),
        (
            ["--evidence", "eks", "--claims", "c.json", "--cluster", CLUSTER, "--audience", "a",
             "--principal-id", "AROAX"],
            "--principal-id",
            "describes a SigV4 caller",
        ),
        (
            ["--evidence", "aws-oif", "--claims", "c.json", "--audience", "a",
             "--instance-tag", "a=b"],
            "--instance-tag",
            "describes a SigV4 caller",
        ),
        (
            ["--evidence", "aws-oif", "--claims", "c.json", "--audience", "a",
             "--cluster", CLUSTER],
            "--cluster",
            "--cluster is for --evidence eks",
        ),
        (["--evidence", "eks", "--claims", "c.json", "--audience", "a"],
         "--cluster", "needs --cluster"),
        (
            ["--evidence", "eks", "--claims", "c.json", "--audience", "a", "--cluster", "prod"],
            "--cluster",
            "expected ACCOUNT:REGION:CLUSTER",
        ),
        (
            ["--evidence", "eks", "--claims", "c.json", "--audience", "a",
             "--cluster", f"{ACCOUNT}:us-east-1:pr od"],
            "--cluster",
            "expected ACCOUNT:REGION:CLUSTER",
        ),
        (["--principal", ROLE, "--audience", "a", "--at", "2026-11-30T12:00:00"], "--at", "zone"),
        (["--principal", ROLE, "--audience", "a", "--at", "monday"], "--at", "ISO 8601"),
        (
            ["--principal", ROLE, "--audience", "a", "--at", "9999-12-31T23:59:59-01:00"],
            "--at",
            "between years 1 and 9999",
        ),
        (
            ["--principal", ROLE, "--audience", "a", "--at", "0001-01-01T00:00:00+01:00"],
            "--at",
            "between years 1 and 9999",
        ),
        (  # its timestamp rounds into year 10000: was an internal error
            ["--principal", ROLE, "--audience", "a", "--at", "9999-12-31T23:59:59.999999Z"],
            "--at",
            "between years 1 and 9999",
        ),
        (
            ["--evidence", "aws-oif", "--claims", "missing.json", "--audience", "a"],
            "missing.json",
            "no such file",
        ),
    ],
)  # fmt: skip
def test_explain_jwt_usage_errors(capsys, tmp_path, monkeypatch, argv, flag, why) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps(OIF_CLAIMS))
    files = ["--policy-file", write(tmp_path, READER)]
    code, out, err = tokex(capsys, "explain", *files, *argv)
    assert (code, out) == (2, "")
    assert why in err
    code, out, _ = tokex(capsys, "explain", *files, *argv, "--json")
    result = json.loads(out)
    assert code == 2 and result["input"] == flag and why in result["error_description"]


def test_explain_evidence_is_a_choice(capsys) -> None:
    assert main(["policy", "explain", "--evidence", "oidc", "--audience", "a"]) == 2
    _, err = capsys.readouterr()
    assert "invalid choice: 'oidc'" in err


def test_explain_agrees_with_evaluate_for_jwt_callers(capsys, tmp_path) -> None:
    from tokex.evidence.jwt_claims import caller_from_claims
    from tokex.evidence.trusted_issuers import TrustedIssuer

    policies = [Policy.from_document(doc) for doc in JWT_POLICIES]
    oif = caller_from_claims(TrustedIssuer("aws-oif", ISSUER, ACCOUNT), OIF_CLAIMS)
    eks = caller_from_claims(
        TrustedIssuer("eks", EKS_ISSUER, ACCOUNT, "us-east-1", "prod"), EKS_CLAIMS
    )
    cases = [(oif, oif_argv(tmp_path)[:-2]), (eks, eks_argv(tmp_path)[:-2])]
    for caller, argv in cases:
        for audience in ("orders-api", "reports-api", "nope"):
            for when in (MONDAY_NOON, "2026-11-30T19:00:00Z"):
                for scopes in ((), ("orders:read",)):
                    more = ["--audience", audience, "--at", when]
                    more += [a for s in scopes for a in ("--scope", s)]
                    result = explain_json(capsys, tmp_path, *argv, *more, documents=JWT_POLICIES)
                    now = datetime.fromisoformat(when).timestamp()
                    try:
                        decision = evaluate(
                            policies, caller, audience, scopes or None, None,
                            default_ttl=900, ttl_cap=3600, now=now,
                        )  # fmt: skip
                    except (InvalidTarget, InvalidScope) as refusal:
                        got = (result["refusal"]["error"], result["refusal"]["reason"])
                        assert got == (refusal.error, refusal.reason)
                    else:
                        got = (result["policy"], result["scopes"], result["ttl_seconds"])
                        expected = (decision.policy.id, list(decision.scopes), decision.ttl_seconds)
                        assert got == expected


def test_list_shows_eks_selectors_as_principals(capsys, monkeypatch) -> None:
    import contextlib

    from tokex.adapters.policy_table import Inventory
    from tokex.cli import policy as policy_command

    class Store:
        def inventory(self) -> Inventory:
            policies = [Policy.from_document(d) for d in (PAYMENTS_EKS, READER)]
            return Inventory(policies, {}, [], {"payments-eks": 4})

    class Found:
        table = "t"

    monkeypatch.setattr(policy_command, "resolve_deployment", lambda args: Found())
    monkeypatch.setattr(
        policy_command, "policy_table", lambda deployment: contextlib.nullcontext(Store())
    )
    code, out, _ = tokex(capsys, "list", "--table", "t", "--region", "us-east-1")
    assert code == 0
    rows = out.splitlines()
    assert rows[1].split() == [
        "payments-eks", "allow", "yes", "4", f"eks:{CLUSTER}:payments:api", "orders-api",
    ]  # fmt: skip
    assert rows[2].split()[3:5] == ["0", ",".join(READER["principals"])]  # no revision: 0
