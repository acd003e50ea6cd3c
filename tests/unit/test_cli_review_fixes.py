"""Careless input and failing output, as a review found them: a principal no token can
have (`tokex revoke`), an IMDS endpoint that is no URL, a new client's secret that could
not be shown (`tokex clients add`), stderr under `--json` and a client id `tokex clients`
would refuse (`tokex kong-config`), and the `tokex local` hint of a timeout (`tokex
token`). Each in the user's words: its exit code, stdout and stderr."""

from __future__ import annotations

import errno
import io
import json
import socket
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from tests.support.cli import tokex
from tests.support.fake_issuer import fake_issuer, use_static_credentials
from tests.unit.test_cli_convention import one_json_object
from tokex.adapters.state_table.schema import revoked_principal_key
from tokex.cli.token import _local_hint
from tokex.client.imds import ImdsUnavailable, read_instance_identity
from tokex.client.token_error import UNREACHABLE, TokenError

ACCOUNT = "123456789012"
WHERE = ["--table", "t", "--region", "us-east-1"]

# --- tokex revoke --principal: only a principal a token's `sub` can name ---------------


class RevocationTable:
    """The state table's DynamoDB client: what `tokex revoke` wrote."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def update_item(self, **request: Any) -> dict[str, Any]:
        self.keys.append(request["Key"]["id"]["S"])
        return {}


@pytest.fixture
def revocations(monkeypatch) -> RevocationTable:
    from tokex.cli import revoke

    table = RevocationTable()
    deployment = SimpleNamespace(client=lambda service: table, table="t", stack=None)
    monkeypatch.setattr(revoke, "resolve_deployment", lambda args, output: deployment)
    return table


PATTERN = "revocation takes one exact principal, not a pattern: `tokex policy list` shows who"


@pytest.mark.parametrize(
    ("principal", "why"),
    [
        (f"arn:aws:iam::{ACCOUNT}:role/demo-*", PATTERN),
        (f"arn:aws:iam::{ACCOUNT}:role/?", PATTERN),
        (f"arn:aws:iam::{ACCOUNT}:user/ops/b?b", PATTERN),
        (f"eks:{ACCOUNT}:eu-west-1:prod:orders:*", PATTERN),
        (f"arn:aws:iam::{ACCOUNT}:user/a//b", "user path 'a//b' is not /-separated"),
        (f"arn:aws:iam::{ACCOUNT}:role/{'r' * 500}", "is not 1-64 characters"),
        (f"arn:aws:iam::{ACCOUNT}:role/{'r' * 65}", "is not 1-64 characters"),
        (f"arn:aws:iam::{ACCOUNT}:role/a&b", "role name 'a&b' is not 1-64 characters"),
        # A trailing slash: the hint to drop the path named an empty role (`role/`).
        (f"arn:aws:iam::{ACCOUNT}:role/demo-workload/", "role name '' is not 1-64"),
    ],
)
def test_revoke_refuses_a_principal_no_token_can_have(
    capsys, revocations, principal: str, why: str
) -> None:
    """It reported "revoked every token of ..." and exit 0, and every token stayed active."""
    argv = ["revoke", "--principal", principal, *WHERE]
    code, out, err = tokex(capsys, *argv)
    assert (code, out) == (2, "")
    assert why in err and err.count("\n") == 1
    assert f"use arn:aws:iam::{ACCOUNT}:role/\n" not in err
    code, out, err = tokex(capsys, *argv, "--json")
    assert (code, err) == (2, "")
    failure = one_json_object(out)
    assert (failure["error"], failure["input"]) == ("invalid_value", "--principal")
    assert revocations.keys == []


def test_revoke_names_a_pathed_role_without_its_path(capsys, revocations) -> None:
    principal = f"arn:aws-cn:iam::{ACCOUNT}:role/team/a/orders"
    code, out, err = tokex(capsys, "revoke", "--principal", principal, *WHERE)
    assert (code, out) == (2, "")
    assert err.endswith(f"use arn:aws-cn:iam::{ACCOUNT}:role/orders\n")
    assert revocations.keys == []


@pytest.mark.parametrize(
    "principal",
    [
        f"arn:aws:iam::{ACCOUNT}:role/orders",
        f"arn:aws:iam::{ACCOUNT}:role/O+=,.@_-{'r' * 55}",
        f"arn:aws-cn:iam::{ACCOUNT}:role/orders",
        f"arn:aws-us-gov:iam::{ACCOUNT}:user/Bob",
        f"arn:aws:iam::{ACCOUNT}:user/ops/team/Bob",
        f"eks:{ACCOUNT}:eu-west-1:prod:orders:api",
    ],
)
def test_revoke_still_takes_every_principal_a_token_can_have(
    capsys, revocations, principal: str
) -> None:
    code, out, _ = tokex(capsys, "revoke", "--principal", principal, *WHERE)
    assert code == 0 and out.startswith(f"revoked every token of {principal} ")
    assert revoked_principal_key(principal) in revocations.keys


# --- IMDS: an endpoint that is no URL ----------------------------------------------------

NO_URL = "is not a valid URL: Invalid IPv6 URL"


@pytest.fixture
def broken_imds_endpoint(monkeypatch) -> str:
    """AWS_EC2_METADATA_SERVICE_ENDPOINT that urlsplit refuses, with a password in it (and
    static workload credentials)."""
    use_static_credentials(monkeypatch)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://user:pw@[::1")
    return "http://***@[::1"


def test_an_imds_endpoint_that_is_no_url_is_no_evidence(broken_imds_endpoint: str) -> None:
    """It was urlsplit's ValueError, which no caller of the library expects."""
    for endpoint, named in [
        (None, broken_imds_endpoint),  # the variable's
        ("http://[::1", "http://[::1"),
        ("http://127.0.0.1:99999", "http://127.0.0.1:99999"),
    ]:
        with pytest.raises(ImdsUnavailable, match="is not a valid URL: ") as raised:
            read_instance_identity(endpoint)
        assert str(raised.value).startswith(f"the IMDS endpoint '{named}' ")
        assert "pw" not in str(raised.value) and not raised.value.unreachable


def test_with_instance_identity_auto_an_endpoint_that_is_no_url_leaves_out_the_evidence(
    capsys, broken_imds_endpoint: str
) -> None:
    """It was an `internal error, a bug of tokex`. Without the evidence the run goes on,
    to botocore's own refusal of that endpoint when it loads the credentials."""
    with fake_issuer() as issuer:
        argv = ["--endpoint", issuer.url, "--audience", "a", "--instance-identity", "auto"]
        code, _, err = tokex(capsys, "token", *argv, "-v")
    assert code == 1 and "internal error" not in err and "pw" not in err
    assert f"no instance identity evidence (the IMDS endpoint '{broken_imds_endpoint}' " in err
    assert NO_URL in err
    assert "the AWS configuration cannot be used" in err


def test_with_instance_identity_on_an_endpoint_that_is_no_url_is_the_imds_error(
    monkeypatch, capsys, broken_imds_endpoint: str
) -> None:
    argv = ["--endpoint", "https://tokex.example.com", "--audience", "a"]
    code, out, err = tokex(capsys, "token", *argv, "--instance-identity", "on", "--json")
    assert (code, err) == (1, "")
    failure = one_json_object(out)
    assert (failure["error"], failure["input"]) == ("unreachable", "--instance-identity")
    description = failure["error_description"]
    assert description.startswith(
        f"--instance-identity on: the IMDS endpoint '{broken_imds_endpoint}'"
    )
    assert NO_URL in description and "pw" not in description


# --- tokex clients add: a secret that could not be shown --------------------------------


class ClientTable:
    """The state table's DynamoDB client, holding what `clients add` wrote; its deletes
    fail when `deletes_fail`."""

    def __init__(self, *, deletes_fail: bool = False) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.deletes_fail = deletes_fail

    def put_item(self, **request: Any) -> dict[str, Any]:
        self.items[request["Item"]["id"]["S"]] = request["Item"]
        return {}

    def delete_item(self, **request: Any) -> dict[str, Any]:
        if self.deletes_fail:
            raise EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")
        old = self.items.pop(request["Key"]["id"]["S"], None)
        return {} if old is None else {"Attributes": old}


class FailingOutput(io.TextIOBase):
    """Standard output whose `failing` method ("write": unbuffered, or more than a buffer;
    "flush": buffered) raises `error`."""

    def __init__(self, failing: str, error: OSError) -> None:
        self.failing = failing
        self.error = error

    def write(self, text: str) -> int:
        if self.failing == "write":
            raise self.error
        return len(text)

    def flush(self) -> None:
        if self.failing == "flush":
            raise self.error

    def close(self) -> None:
        # Closed when collected (IOBase.__del__), which flushes: the failure was the
        # command's to meet, not the collector's (an unraisable error in a later test).
        self.failing = ""
        super().close()


@pytest.fixture
def clients_table(monkeypatch) -> Iterator[ClientTable]:
    from tokex.cli import clients

    table = ClientTable()
    monkeypatch.setattr(clients, "resolve_state_table", lambda args: (table, "t"))
    yield table


ADD = ["clients", "add", "kong", "--audience", "orders-api", *WHERE]
FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["write", "flush"])
@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_clients_add_removes_the_client_whose_secret_could_not_be_shown(
    monkeypatch, capsys, clients_table: ClientTable, failing: str, as_json: list[str]
) -> None:
    """`> /dev/full`: a client existed whose secret no one saw, and nothing said so."""
    monkeypatch.setattr(sys, "stdout", FailingOutput(failing, FULL))
    code, _, err = tokex(capsys, *ADD, *as_json)
    assert code == 1
    assert clients_table.items == {}
    [removed, failed] = err.splitlines()
    assert removed.startswith("tokex clients: client tc_")
    assert removed.endswith(" was removed again: its secret could not be shown")
    assert failed == "tokex clients: cannot write the output: No space left on device"


def test_clients_add_into_a_closed_pipe_removes_the_client(
    monkeypatch, capsys, clients_table: ClientTable
) -> None:
    monkeypatch.setattr(sys, "stdout", FailingOutput("flush", BrokenPipeError(errno.EPIPE, "")))
    code, _, err = tokex(capsys, *ADD)
    assert (code, clients_table.items) == (141, {})
    assert err.endswith(" was removed again: its secret could not be shown\n")


def test_clients_add_names_the_client_it_could_not_remove(
    monkeypatch, capsys, clients_table: ClientTable
) -> None:
    clients_table.deletes_fail = True
    monkeypatch.setattr(sys, "stdout", FailingOutput("flush", FULL))
    code, _, err = tokex(capsys, *ADD)
    assert code == 1
    [key] = clients_table.items
    client_id = key.removeprefix("client#")
    assert err.splitlines()[0] == (
        f"tokex clients: client {client_id} was created but its secret could not be shown:"
        f" run `tokex clients remove {client_id}`"
    )


def test_clients_add_keeps_the_client_whose_secret_was_shown(
    capsys, clients_table: ClientTable
) -> None:
    code, out, err = tokex(capsys, *ADD, "--json")
    assert (code, err) == (0, "")
    assert list(clients_table.items) == [f"client#{json.loads(out)['client_id']}"]


# --- tokex kong-config --enterprise oauth2-introspection ---------------------------------

CLIENT = "tc_0123456789abcdef0123"
INTROSPECTION = ["kong-config", "--enterprise", "oauth2-introspection", "--global"]
INTROSPECTION += ["--any-audience", "--issuer", "https://auth.example.com"]
INTROSPECTION += ["--client-secret", "s3cret"]


def test_kong_introspection_with_json_writes_nothing_on_stderr(capsys) -> None:
    """The note on whose audiences apply went to stderr under --json too."""
    code, out, err = tokex(capsys, *INTROSPECTION, "--client-id", CLIENT, "--json")
    assert (code, err) == (0, "")
    [plugin] = json.loads(out)["plugins"]
    assert plugin["name"] == "oauth2-introspection"


def test_kong_introspection_failing_with_json_is_one_json_object(
    monkeypatch, capsys, tmp_path
) -> None:
    from tokex.cli import kong

    def full(path: Any, text: str) -> None:
        raise FULL

    monkeypatch.setattr(kong, "write_private", full)
    output = str(tmp_path / "kong.json")
    argv = [*INTROSPECTION, "--client-id", CLIENT, "--output", output, "--json"]
    code, out, err = tokex(capsys, *argv)
    assert (code, err) == (1, "")
    assert one_json_object(out)["error"] == "write_failed"


@pytest.mark.parametrize("client_id", ["foo", "kong", "tc_0123", f"{CLIENT}0", CLIENT.upper()])
def test_kong_introspection_refuses_a_client_id_tokex_never_makes(capsys, client_id) -> None:
    """`tokex clients` refuses these; kong-config wrote a configuration Kong then failed
    to authenticate with."""
    code, out, err = tokex(capsys, *INTROSPECTION, "--client-id", client_id)
    assert (code, out) == (2, "")
    assert err.endswith(
        f"--client-id {client_id!r}: a client id is tc_ and 20 hex digits "
        "(`tokex clients list` shows them)\n"
    )
    code, out, _ = tokex(capsys, *INTROSPECTION, "--client-id", client_id, "--json")
    assert (code, one_json_object(out)["input"]) == (2, "--client-id")


# --- tokex token at a `tokex local` endpoint: is it running? ----------------------------

LOCAL = "http://127.0.0.1:8787"
RUNNING = "is `tokex local` running?"


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (
            TokenError(
                f"cannot reach {LOCAL}/.well-known/openid-configuration: Connection refused",
                error=UNREACHABLE,
                url=f"{LOCAL}/.well-known/openid-configuration",
            ),
            True,
        ),
        (
            TokenError(
                f"cannot reach {LOCAL}/.well-known/openid-configuration: timed out",
                error=UNREACHABLE,
                url=f"{LOCAL}/.well-known/openid-configuration",
            ),
            False,
        ),
        (
            TokenError(
                "loading the AWS credentials took longer than the 5 s timeout", error=UNREACHABLE
            ),
            False,
        ),
        (
            TokenError(
                "the token exchange this call waited for has not finished within 6 s",
                error=UNREACHABLE,
            ),
            False,
        ),
    ],
)
def test_the_local_hint_blames_a_stopped_tokex_local_only_when_refused(
    error: TokenError, hint: bool
) -> None:
    assert (RUNNING in _local_hint(LOCAL, error)) is hint


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that takes connections and never answers: a running endpoint,
    slow."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_token_at_a_local_endpoint_that_times_out_does_not_ask_if_it_runs(
    monkeypatch, capsys, silent_port: int
) -> None:
    use_static_credentials(monkeypatch)
    monkeypatch.delenv("TOKEX_ENDPOINT", raising=False)
    url = f"http://127.0.0.1:{silent_port}"
    argv = ["token", "--endpoint", url, "--audience", "a", "--timeout", "0.5", "--json"]
    code, out, err = tokex(capsys, *argv)
    assert (code, err) == (1, "")
    failure = one_json_object(out)
    assert failure["error"] == "unreachable"
    assert failure["error_description"] == (
        f"cannot reach {url}/.well-known/openid-configuration: timed out"
    )
