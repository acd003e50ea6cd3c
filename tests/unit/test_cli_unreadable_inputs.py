"""Inputs a command cannot use are the user's to fix, never "a bug of tokex": a file path
that cannot be looked up, a policy id only DynamoDB accepts, a JWKS URL http.client would
choke on, an item id or a claims `iss` made to break things (and what such text
reaches the terminal as: escaped), a YAML file that expands."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.cli import tokex
from tokex.evidence.jwt_claims import STS_NAMESPACE, caller_from_claims
from tokex.evidence.trusted_issuers import AWS_OIF, TrustedIssuer
from tokex.policy.model import Policy
from tokex.printable import escaped
from tokex.tokens.jwks import build_jwks, jwk_from_public_key

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/demo-workload"
POLICY = {"id": "reader", "effect": "allow", "principals": [ROLE], "audiences": ["demo-api"]}
# One name longer than any file system takes: stat fails with ENAMETOOLONG, for root too.
TOO_LONG = "a" * 300


def failure(out: str) -> dict[str, Any]:
    assert out.count("\n") == 1, out
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "jwks.json").write_text(json.dumps(build_jwks([jwk_from_public_key(key, "ES256")])))
    (tmp_path / "policy.json").write_text(json.dumps(POLICY))
    return {name: str(tmp_path / f"{name}.json") for name in ("jwks", "policy")}


# --- a path that cannot be looked up -----------------------------------------------------

KONG = ["kong-config", "--any-audience", "--service-name", "s"]


def unreadable_path_cases(files: dict[str, str], path: str) -> list[tuple[list[str], str]]:
    """(command line, the label its message names) for each file a command takes."""
    token = ["token", "--audience", "demo-api", "--evidence", "eks", *ENDPOINT]
    explain = ["policy", "explain", "--audience", "demo-api"]
    oif = [*explain, "--evidence", "aws-oif", "--policy-file", files["policy"]]
    return [
        ([*token, "--token-file", path], "--token-file"),
        (["policy", "validate", path], "policy document"),
        (["policy", "put", path, "--table", "t", "--region", "us-east-1"], "policy document"),
        ([*explain, "--principal", ROLE, "--policy-file", path], "--policy-file"),
        ([*oif, "--claims", path], "--claims"),
        ([*KONG, "--jwks", path], "--jwks"),
        ([*KONG, "--jwks", files["jwks"], "--existing", path], "--existing"),
        (["iid", "verify", path, "--rsa2048", path], "DOCUMENT"),
    ]


ENDPOINT = ["--endpoint", "https://auth.example.com"]


def test_a_name_too_long_is_a_failure_that_names_the_file(files, capsys) -> None:
    for argv, label in unreadable_path_cases(files, TOO_LONG):
        code, out, err = tokex(capsys, *argv)
        assert (code, out) == (1, ""), argv
        assert err.endswith(f"cannot read {label} {TOO_LONG}: File name too long\n"), err
        code, out, _ = tokex(capsys, *argv, "--json")
        assert code == 1
        assert failure(out)["error"] == "invalid_input" and failure(out)["input"] == TOO_LONG


def test_a_directory_that_cannot_be_searched_is_a_failure_that_names_the_file(
    files, capsys, monkeypatch
) -> None:
    """As for a pod user that may not enter /var/run/secrets/tokex (root may enter every
    directory: os.stat answers as it would for anyone else)."""
    real_stat = os.stat
    locked = "/locked/"

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).startswith(locked):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    for argv, label in unreadable_path_cases(files, f"{locked}x"):
        code, out, err = tokex(capsys, *argv)
        assert (code, out) == (1, ""), argv
        assert err.endswith(f"cannot read {label} {locked}x: Permission denied\n"), err


def test_the_default_token_file_behind_a_locked_directory(capsys, monkeypatch) -> None:
    from tokex.client.evidence import DEFAULT_TOKEN_FILE

    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path) == DEFAULT_TOKEN_FILE:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    argv = ["token", "--audience", "demo-api", "--evidence", "eks", *ENDPOINT, "--json"]
    code, out, _ = tokex(capsys, *argv)
    assert code == 1
    assert failure(out) == {
        "error": "invalid_input",
        "error_description": f"cannot read --token-file {DEFAULT_TOKEN_FILE}: Permission denied",
        "input": DEFAULT_TOKEN_FILE,
    }


def test_an_output_path_that_cannot_be_looked_up_is_a_write_failure(files, capsys) -> None:
    code, out, _ = tokex(capsys, *KONG, "--jwks", files["jwks"], "--output", TOO_LONG, "--json")
    assert code == 1
    assert failure(out) == {
        "error": "write_failed",
        "error_description": f"cannot write --output {TOO_LONG}: File name too long",
        "input": TOO_LONG,
    }


def test_a_missing_file_is_still_a_usage_error(files, tmp_path, capsys) -> None:
    for argv, label in unreadable_path_cases(files, str(tmp_path / "nope")):
        if label == "--existing":
            continue  # a missing --existing is a first run
        code, out, _ = tokex(capsys, *argv, "--json")
        assert code == 2, argv
        assert failure(out)["error"] == "file_not_found"


# --- policy get/delete: any id the table can hold -----------------------------------------


class Store:
    """The policy table of one invalid item, whose id `policy put` would refuse."""

    def __init__(self, item_id: str, blocking: bool = False) -> None:
        self.item_id = item_id
        self.blocking = blocking
        self.asked: list[tuple[str, str]] = []

    def get_stored(self, policy_id: str) -> Any:  # `policy get`: the policy and revision
        self.asked.append(("get", policy_id))
        return None

    def delete(self, policy_id: str) -> bool:
        self.asked.append(("delete", policy_id))
        return policy_id == self.item_id

    def inventory(self) -> Any:
        from tokex.adapters.policy_table import Inventory

        what = "every exchange answers 503 until it is fixed or deleted (invalid, and x)"
        blocking = [self.item_id] if self.blocking else []
        return Inventory([Policy.from_document(POLICY)], {self.item_id: what}, blocking)

    def load_all(self) -> tuple[list[Policy], list[str]]:
        """The item is an allow of ROLE that no longer validates: its stand-in deny."""
        from tokex.adapters.policy_table import _stand_in

        document = json.dumps({**POLICY, "id": self.item_id})
        stand_in = _stand_in({"id": {"S": self.item_id}, "document": {"S": document}})
        assert stand_in is not None
        return [Policy.from_document(POLICY), stand_in], [self.item_id]


@pytest.fixture
def table(monkeypatch):
    """`tokex policy` on a Store (`table(item_id)`), as the deployment's table `t`."""
    from tokex.cli import policy as policy_command
    from tokex.cli import policy_explain

    class Found:
        table = "t"
        flag = "--table"
        stack = None

    def use(item_id: str, *, blocking: bool = False) -> Store:
        store = Store(item_id, blocking)
        for module in (policy_command, policy_explain):
            monkeypatch.setattr(module, "resolve_deployment", lambda args: Found())
            monkeypatch.setattr(
                module, "policy_table", lambda deployment: contextlib.nullcontext(store)
            )
        return store

    return use


WHERE = ["--table", "t", "--region", "us-east-1"]


@pytest.mark.parametrize("item_id", ["orders api", "évident", "x" * 2048, "-x/y\\z"])
def test_get_and_delete_reach_the_table_with_an_id_put_would_refuse(table, capsys, item_id) -> None:
    store = table(item_id)
    code, _, err = tokex(capsys, "policy", "get", *WHERE, "--", item_id)
    assert code == 1 and f"no policy {item_id!r} in table t" in err
    assert tokex(capsys, "policy", "delete", *WHERE, "--", item_id) == (0, f"{item_id}\n", "")
    assert store.asked == [("get", item_id), ("delete", item_id)]


def test_a_deleted_id_is_printed_escaped(table, capsys) -> None:
    item_id = "evil\x1b[31mRED\nfake line"
    table(item_id)
    code, out, _ = tokex(capsys, "policy", "delete", *WHERE, item_id)
    assert (code, out) == (0, "evil\\x1b[31mRED\\nfake line\n")
    code, out, _ = tokex(capsys, "policy", "delete", *WHERE, item_id, "--json")
    assert (code, json.loads(out)) == (0, {"id": item_id, "deleted": True})


@pytest.mark.parametrize("item_id", ["", "x" * 2049, "é" * 1025])
def test_an_id_no_dynamodb_key_can_be_is_a_usage_error(table, capsys, item_id) -> None:
    store = table("orders api")
    for command in ("get", "delete"):
        code, out, _ = tokex(capsys, "policy", command, *WHERE, "--json", "--", item_id)
        assert code == 2
        assert "must be 1-2048 bytes of UTF-8 text" in failure(out)["error_description"]
    assert store.asked == []


# --- policy list: an item id writes nothing raw to the terminal ---------------------------

EVIL_ID = "evil\x1b[31mRED\x1b]0;title\x07\nfake line"
EVIL_SHOWN = "evil\\x1b[31mRED\\x1b]0;title\\x07\\nfake line"


@pytest.mark.parametrize("blocking", [False, True])
def test_list_shows_an_item_id_escaped(table, capsys, blocking) -> None:
    table(EVIL_ID, blocking=blocking)
    code, out, err = tokex(capsys, "policy", "list", *WHERE)
    assert code == (1 if blocking else 0) and "reader" in out
    assert "\x1b" not in err and "\x07" not in err
    lines = err.splitlines()
    assert lines[0].startswith(f"tokex policy: warning: invalid document {EVIL_SHOWN}: ")
    assert len(lines) == (2 if blocking else 1)
    if blocking:
        assert lines[1].startswith(f"tokex policy: policy table 't': {EVIL_SHOWN} make every")


def test_explain_names_a_stand_in_deny_by_its_item_id_escaped(table, capsys) -> None:
    """An invalid allow stands in as a deny named by its key, which an item written by
    other means may fill with control characters: shown escaped, as `list` shows it."""
    table(EVIL_ID)
    argv = ["policy", "explain", *WHERE, "--principal", ROLE, "--audience", "demo-api"]
    code, out, _ = tokex(capsys, *argv)
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    lines = out.splitlines()
    assert "policies   table t (1 invalid: " + EVIL_SHOWN + ")" in lines
    assert any(line.startswith(EVIL_SHOWN + "  deny   applies: principal ") for line in lines)
    assert "=> refused (invalid_target): denied by policy " + EVIL_SHOWN in lines
    code, out, _ = tokex(capsys, *argv, "--json")
    result = json.loads(out)  # JSON carries the key as it is
    assert (code, result["refusal"]["reason"]) == (0, f"denied by policy {EVIL_ID}")
    assert result["invalid_policies"] == [EVIL_ID]


@pytest.mark.parametrize("item_id", ["\n", "\nreader", "reader\n"])
def test_explain_keeps_its_own_lines_whatever_a_stored_id_holds(table, capsys, item_id) -> None:
    """A key of a line break, alone or beside text the report also holds: only the key
    is escaped, never the report's own line breaks (they were, when the finished text
    was searched for the key)."""
    table(item_id)
    argv = ["policy", "explain", *WHERE, "--principal", ROLE, "--audience", "demo-api"]
    code, out, _ = tokex(capsys, *argv)
    shown = item_id.replace("\n", "\\n")
    lines = out.splitlines()
    assert code == 0
    assert any(line.startswith(shown + " ") and "  deny   applies: " in line for line in lines)
    assert "=> refused (invalid_target): denied by policy " + shown in lines
    assert lines[-1] == "(nothing was issued)"
    assert sum(line.startswith("=> ") for line in lines) == 1


# --- kong-config --jwks: URLs http.client cannot fetch ------------------------------------


@pytest.mark.parametrize(
    "url,why",
    [
        ("http://127.0.0.1:9/a b/.well-known/jwks.json", "has whitespace, control or non-ASCII"),
        ("http://127.0.0.1:9/é/.well-known/jwks.json", "has whitespace, control or non-ASCII"),
        ("http://127.0.0.1:9/.well-known/jwks.json?x=\x7f", "has whitespace, control or"),
        (
            "https://user:secretpw@auth.example.com/.well-known/jwks.json",
            "has a user name or password in it",
        ),
        ("http://user:secretpw@10.1.1.1/.well-known/jwks.json", "has a user name or password"),
        ("http://user:secretpw@127.0.0.1:9/.well-known/jwks.json", "has a user name or password"),
    ],
)
def test_a_jwks_url_that_cannot_be_fetched_is_a_usage_error(url, why, capsys) -> None:
    code, out, err = tokex(capsys, *KONG, "--jwks", url)
    assert (code, out) == (2, "")
    assert why in err and err.count("\n") == 1
    assert "secretpw" not in err


# --- policy explain: claims whose `iss` is no URL -----------------------------------------

OIF_CLAIMS = {
    "iss": "https://[::1",
    "sub": ROLE,
    "jti": "j-1",
    STS_NAMESPACE: {"aws_account": ACCOUNT, "principal_id": ROLE},
}


def test_an_iss_that_does_not_parse_has_no_known_partition() -> None:
    trusted = TrustedIssuer(AWS_OIF, OIF_CLAIMS["iss"], ACCOUNT)
    caller = caller_from_claims(trusted, OIF_CLAIMS)
    assert (caller.principal_arn, caller.partition) == (ROLE, "aws")


def test_explain_takes_claims_whose_iss_does_not_parse(files, tmp_path, capsys) -> None:
    (tmp_path / "claims.json").write_text(json.dumps(OIF_CLAIMS))
    argv = ["policy", "explain", "--evidence", "aws-oif", "--audience", "demo-api"]
    argv += ["--claims", str(tmp_path / "claims.json"), "--policy-file", files["policy"]]
    code, out, err = tokex(capsys, *argv, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["caller"]["principal"] == ROLE


# --- what a token's claims or a table's item holds reaches no terminal raw ----------------

# What a terminal acts on, none of it printable: an OSC (a window title), a CSI (clear the
# screen), a line break that forges a verdict line, C1's one-byte CSI (U+009B), DEL and a
# bidi override. JSON escapes only the first three kinds by itself.
HOSTILE = "\x1b]0;title\x07\x1b[2J\n=> allowed\x9b31m\x7f\u202eevil"


def shown_safely(out: str) -> bool:
    """Nothing a terminal would act on: every character printable, or a line break."""
    return all(c.isprintable() or c == "\n" for c in out)


def test_explain_shows_the_claims_issuer_escaped(files, tmp_path, capsys) -> None:
    """The note naming the issuer quotes the claims' `iss`: a JWT's text, not tokex's."""
    issuer = "https://x.example" + HOSTILE
    (tmp_path / "claims.json").write_text(json.dumps({**OIF_CLAIMS, "iss": issuer}))
    argv = ["policy", "explain", "--evidence", "aws-oif", "--audience", "demo-api"]
    argv += ["--claims", str(tmp_path / "claims.json"), "--policy-file", files["policy"]]
    code, out, _ = tokex(capsys, *argv)
    assert code == 0 and shown_safely(out), out
    lines = out.splitlines()
    assert sum(line.startswith("=> ") for line in lines) == 1
    assert any(line.startswith("note: ") and escaped(issuer) in line for line in lines)
    code, out, _ = tokex(capsys, *argv, "--json")
    assert code == 0 and shown_safely(out), out
    assert issuer in json.loads(out)["notes"][0]  # JSON carries it as it is


def test_json_output_escapes_what_a_terminal_acts_on(files, tmp_path, capsys) -> None:
    """A document (`policy validate`, printed as `get` and `list` print theirs) and a
    failure (cli/errors.py); an explanation above. Readable non-ASCII stays as it is."""
    document = {**POLICY, "description": "Accès " + HOSTILE}
    (tmp_path / "described.json").write_text(json.dumps(document))
    code, out, _ = tokex(capsys, "policy", "validate", "--json", str(tmp_path / "described.json"))
    assert code == 0 and shown_safely(out) and "Accès" in out, out
    assert json.loads(out)["document"]["description"] == document["description"]
    (tmp_path / "unknown.json").write_text(json.dumps({**POLICY, HOSTILE: 1}))
    code, out, _ = tokex(capsys, "policy", "validate", "--json", str(tmp_path / "unknown.json"))
    assert code == 1 and shown_safely(out), out
    assert {"field": HOSTILE, "message": "unknown key"} in failure(out)["errors"]


class ClientTable:
    """The state table's DynamoDB client, holding one client item written by other means
    than `tokex clients add`: control characters in its id, name and audiences."""

    item: ClassVar[dict[str, Any]] = {
        "id": {"S": "client#tc_0123456789abcdef0123" + HOSTILE},
        "name": {"S": "kong" + HOSTILE},
        "created_at": {"N": "1800000000"},
        "audiences": {"SS": ["orders-api" + HOSTILE]},
    }

    def scan(self, **request: Any) -> dict[str, Any]:
        return {"Items": [self.item]}

    def update_item(self, **request: Any) -> dict[str, Any]:
        return {"Attributes": self.item}


def test_clients_list_and_update_show_what_the_table_holds_escaped(monkeypatch, capsys) -> None:
    from tokex.cli import clients

    monkeypatch.setattr(clients, "resolve_state_table", lambda args: (ClientTable(), "t"))
    code, out, _ = tokex(capsys, "clients", "list", *WHERE)
    assert code == 0 and shown_safely(out) and out.count("\n") == 1, out
    shown = escaped(HOSTILE)
    assert out == (
        f"tc_0123456789abcdef0123{shown}  2027-01-15T08:00:00Z  kong{shown}  orders-api{shown}\n"
    )
    update = ["clients", "update", "tc_0123456789abcdef0123", "--audience", "orders-api"]
    code, out, _ = tokex(capsys, *update, *WHERE)
    assert code == 0 and shown_safely(out) and out.count("\n") == 1, out
    assert f"(kong{shown}) now serves orders-api{shown} " in out


# --- kong-config --existing: YAML aliases -------------------------------------------------


def test_existing_yaml_with_aliases_is_refused(files, tmp_path, capsys) -> None:
    """n consumers naming one list of n credentials: n*n credentials read from a file of
    size n, in time that grows as the square."""
    credential = "{key: k, algorithm: RS256, rsa_public_key: p, secret: s}"
    fan_out = "\n".join(
        ["_format_version: '3.0'", f"l: &l [{', '.join([credential] * 50)}]", "consumers:"]
        + [f"- {{username: c{i}, jwt_secrets: *l}}" for i in range(50)]
    )
    (tmp_path / "kong.yaml").write_text(fan_out + "\n")
    existing = str(tmp_path / "kong.yaml")
    code, out, _ = tokex(capsys, *KONG, "--jwks", files["jwks"], "--existing", existing, "--json")
    assert code == 1
    assert failure(out) == {
        "error": "invalid_input",
        "error_description": f"--existing {existing}: line 4: YAML aliases (*l) are refused"
        " (is it a file this command wrote?)",
        "input": existing,
    }


def test_existing_yaml_without_pyyaml_names_the_extra(files, tmp_path, capsys, monkeypatch) -> None:
    """A file this command wrote as YAML (PyYAML installed), re-run where PyYAML is not
    (a plain `pip install tokex`): the error says what to install, and does not suggest
    the file is someone else's. Without PyYAML the output is JSON, which reads back."""
    code, _, _ = tokex(capsys, *KONG, "--jwks", files["jwks"], "--output", str(tmp_path / "k.yaml"))
    assert code == 0 and (tmp_path / "k.yaml").read_text().count("{") == 0  # YAML
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ImportError
    existing = str(tmp_path / "k.yaml")
    code, out, _ = tokex(capsys, *KONG, "--jwks", files["jwks"], "--existing", existing, "--json")
    assert code == 1
    assert failure(out) == {
        "error": "invalid_input",
        "error_description": f"--existing {existing}: reading a YAML file needs PyYAML:"
        " pip install 'tokex[kong]'",
        "input": existing,
    }
    json_file = str(tmp_path / "k.json.yaml")
    code, _, _ = tokex(capsys, *KONG, "--jwks", files["jwks"], "--output", json_file)
    assert code == 0
    code, _, _ = tokex(capsys, *KONG, "--jwks", files["jwks"], "--existing", json_file)
    assert code == 0
