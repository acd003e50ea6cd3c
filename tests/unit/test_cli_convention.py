"""The CLI convention (tokex/cli/errors.py, docs/contract.md "Command line"), for every
command: the tests walk the whole argument parser, so a command added later is covered
without a line here.

- exit 2 for a wrong command line (unknown or missing flag, a value of the wrong form),
  before anything is read or fetched; exit 1 for well-formed input that failed;
- with --json a failure is exactly one JSON object on stdout: error, error_description,
  input (the flag, file or URL at fault);
- every command and option has help text;
- no traceback, also when stdout is closed early (exit 141) or on SIGINT (exit 130).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import tokex
from tests.support.fake_issuer import use_static_credentials, without_aws_set_up
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex.cli.main import build_parser

TOKEX = shutil.which("tokex", path=str(Path(sys.executable).parent))
# Commands that print no data, so have no --json: `tokex local` serves in the foreground
# and prints a banner for a person (its state files are the machine-readable part).
NO_DATA = {("local",)}


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under `parser` (itself included), with its command words."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))


def subcommands(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


PARSERS = list(walk(build_parser()))
COMMANDS = [(path, parser) for path, parser in PARSERS if path]
LEAVES = [(path, parser) for path, parser in COMMANDS if not subcommands(parser)]


def name(path: tuple[str, ...]) -> str:
    return " ".join(path)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's own arguments (not --help, not its subcommands)."""
    return [
        action
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
    ]


def filled_required(parser: argparse.ArgumentParser) -> list[str]:
    """Arguments of a plausible form for everything the parser requires, so that the
    argument under test is the only thing wrong with the command line."""

    def value(action: argparse.Action) -> list[str]:
        if action.nargs == 0:
            return []
        if action.choices:
            return [str(next(iter(action.choices)))]
        return ["60" if action.type is int else "x"]

    argv: list[str] = []
    for action in options(parser):
        if not action.option_strings:
            argv += value(action)
        elif action.required:
            argv += [action.option_strings[-1], *value(action)]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            first = group._group_actions[0]
            argv += [first.option_strings[-1], *value(first)]
    return argv


def required_names(parser: argparse.ArgumentParser) -> set[str]:
    names: set[str] = set()
    for action in options(parser):
        if action.required and action.option_strings:
            names.update(action.option_strings)
        elif action.required:
            names.add(str(action.metavar or action.dest))
    for group in parser._mutually_exclusive_groups:
        if group.required:
            names.update(s for a in group._group_actions for s in a.option_strings)
    return names


def one_json_object(out: str, *, at_fault: bool = True) -> dict[str, Any]:
    """stdout holds exactly one JSON object (on one line) with the error's three keys;
    `input` names what is at fault (unless nothing is, as for SIGINT)."""
    assert out.endswith("\n") and out.count("\n") == 1, out
    failure = json.loads(out)
    assert isinstance(failure, dict)
    assert {"error", "error_description", "input"} <= failure.keys()
    assert failure["error_description"]
    assert bool(failure["input"]) == at_fault
    return failure


def test_the_walk_finds_every_kind_of_command() -> None:
    names = {name(path) for path, _ in LEAVES}
    assert {"local", "token", "iid verify", "policy validate", "policy explain"} <= names
    assert {"kong-config", "clients add", "clients list", "clients remove", "revoke"} <= names
    assert "clients update" in names
    assert {name(path) for path, parser in COMMANDS if subcommands(parser)} == {
        "iid",
        "policy",
        "clients",
    }


# --- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,parser", PARSERS, ids=lambda p: name(p) if isinstance(p, tuple) else ""
)
def test_every_command_and_option_has_help(path, parser) -> None:
    if path:
        assert parser.description, f"`tokex {name(path)} --help` has no description"
    for action in options(parser):
        label = "/".join(action.option_strings) or action.metavar or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{name(path)} {label}"
    for action in subcommands(parser):
        listed = {choice.dest: choice.help for choice in action._choices_actions}
        for command in action.choices:
            assert listed.get(command), f"`tokex {name((*path, command))}` has no help line"


@pytest.mark.parametrize(
    "path,parser", LEAVES, ids=lambda p: name(p) if isinstance(p, tuple) else ""
)
def test_every_command_that_prints_data_has_json(path, parser) -> None:
    flags = {s for action in options(parser) for s in action.option_strings}
    assert ("--json" in flags) != (path in NO_DATA)


# --- exit 2 and the JSON error object --------------------------------------------------------


@pytest.mark.parametrize(
    "path,parser", LEAVES, ids=lambda p: name(p) if isinstance(p, tuple) else ""
)
def test_an_unknown_flag_exits_2(capsys, path, parser) -> None:
    argv = [*path, *filled_required(parser), "--no-such-flag"]
    code, out, err = tokex(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"usage: tokex {name(path)}")
    assert err.endswith(
        f"tokex {name(path)}: error: unrecognized arguments: --no-such-flag "
        f"(see `tokex {name(path)} --help`)\n"
    )

    code, out, err = tokex(capsys, *argv, "--json")
    assert (code, err) == (2, "")
    failure = one_json_object(out)
    assert (failure["error"], failure["input"]) == ("usage", "--no-such-flag")


@pytest.mark.parametrize(
    "path,parser",
    [(path, parser) for path, parser in COMMANDS if required_names(parser) or subcommands(parser)],
    ids=lambda p: name(p) if isinstance(p, tuple) else "",
)
def test_a_missing_required_argument_exits_2(capsys, path, parser) -> None:
    code, out, err = tokex(capsys, *path)
    assert (code, out) == (2, "") and "required" in err
    code, out, err = tokex(capsys, *path, "--json")
    assert (code, err) == (2, "")
    failure = one_json_object(out)
    assert failure["error"] == "usage"
    assert failure["input"] in (required_names(parser) or {"COMMAND"})


def typed_options() -> Iterator[Any]:
    for path, parser in LEAVES:
        for action in options(parser):
            if action.option_strings and (action.type is int or action.choices):
                flag = action.option_strings[-1]
                yield pytest.param(path, parser, flag, id=f"{name(path)} {flag}")


@pytest.mark.parametrize("path,parser,flag", list(typed_options()))
def test_a_value_of_the_wrong_type_or_choice_exits_2(capsys, path, parser, flag) -> None:
    argv = [a for a in filled_required(parser)]
    if flag in argv:  # a required option: replace its value
        del argv[argv.index(flag) : argv.index(flag) + 2]
    code, out, err = tokex(capsys, *path, *argv, flag, "not-a-valid-value", "--json")
    assert (code, err) == (2, "")
    assert one_json_object(out)["input"] == flag


def test_an_unknown_command_exits_2(capsys) -> None:
    code, out, _ = tokex(capsys, "polcy", "--json")
    assert code == 2
    assert one_json_object(out)["input"] == "polcy"
    code, out, _ = tokex(capsys, "policy", "valdate", "--json")
    assert code == 2 and one_json_object(out)["input"] == "valdate"


def test_json_is_recognised_before_parsing_and_abbreviated(capsys) -> None:
    code, out, _ = tokex(capsys, "--json", "token")  # before the subcommand
    assert code == 2 and one_json_object(out)["error"] == "usage"
    code, out, _ = tokex(capsys, "token", "--audience", "a", "--bogus", "--js")
    assert code == 2 and one_json_object(out)["input"] == "--bogus"
    code, out, err = tokex(capsys, "token", "--audience", "a", "--bogus", "--", "--json")
    assert code == 2 and out == "" and "unrecognized arguments" in err


# --- usage errors found by the commands themselves, before any file or network ---------

KONG_GLOBAL = ["kong-config", "--global", "--any-audience"]
KONG_INTROSPECTION = ["kong-config", "--enterprise", "oauth2-introspection", "--service-name", "s"]
KONG_INTROSPECTION += ["--issuer", "https://auth.example.com"]
KONG_OIDC = ["kong-config", "--enterprise", "openid-connect", "--global", "--any-audience"]


@pytest.mark.parametrize(
    "argv,flag,why",
    [
        (["token", "--endpoint", "127.0.0.1:8787"], "--endpoint", "pass http://127.0.0.1:8787"),
        (["token", "--endpoint", "auth.example.com"], "--endpoint", "pass https://auth"),
        (
            ["token", "--endpoint", "http://127.0.0.1:8787/token"],
            "--endpoint",
            "is the issuer's /token endpoint, not its base URL: pass the issuer URL "
            "http://127.0.0.1:8787",
        ),
        (["token", "--endpoint", "http://auth.example.com"], "--endpoint", "http only on loopback"),
        # Not another port (99999 - 65536 = 34463): urllib would have wrapped it around.
        (["token", "--endpoint", "http://127.0.0.1:99999"], "--endpoint", "Port out of range"),
        (["token", "--endpoint", "http://[::1"], "--endpoint", "not a valid URL"),
        (["token", "--endpoint", "https://a.example", "--timeout", "1e20"], "--timeout", "3600"),
        # A byte that is not UTF-8 (`--issuer $'a\xedb'`): argv holds a lone surrogate.
        (
            ["token", "--endpoint", "https://a.example", "--issuer", "a\udcedb"],
            "--issuer",
            "'a\\udcedb' is not a URL",
        ),
        (
            ["token", "--endpoint", "https://a.example", "--issuer", "https://a.example/"],
            "--issuer",
            "without a trailing slash",
        ),
        ([*KONG_GLOBAL, "--jwks", "https://[::1/jwks.json"], "--jwks", "not a valid URL"),
        (["token", "--endpoint", "https://a.example", "--audience", "a b"], "--audience", "1-256"),
        (["token", "--endpoint", "https://a.example", "--scope", 'a"b'], "--scope", "RFC 6749"),
        (["token", "--endpoint", "https://a.example", "--scope", ""], "--scope", "names no scope"),
        ([*KONG_GLOBAL, "--max-ttl", "-5"], "--max-ttl", "1..3153"),
        ([*KONG_GLOBAL, "--jwks", "j.json", "--output", ""], "--output", "name a file"),
        ([*KONG_GLOBAL, "--jwks", "j.json", "--output", "/tmp"], "--output", "not a directory"),
        (["kong-config", "--jwks", "j.json", "--any-audience"], "--service-name", "--global"),
        (["kong-config", "--global", "--any-audience"], "--jwks", "give the JWKS"),
        (
            ["kong-config", "--jwks", "nope.json", "--global", "--any-audience"],
            "nope.json",
            "no such",
        ),
        (
            [*KONG_GLOBAL, "--jwks", "auth.example.com/.well-known/jwks.json"],
            "auth.example.com/.well-known/jwks.json",
            "needs its https:// scheme",
        ),
        (
            [*KONG_INTROSPECTION, "--audience", "orders-api"],
            "--audience",
            "oauth2-introspection enforces the audiences registered on the introspection "
            "client, not audiences given here: register them with `tokex clients "
            "add|update --audience AUD`",
        ),
        (
            [*KONG_INTROSPECTION, "--any-audience"],
            "--any-audience",
            "with oauth2-introspection it goes with --global only",
        ),
        (KONG_INTROSPECTION, "--client-id", "needs --client-id"),
        (
            [*KONG_INTROSPECTION, "--client-id", "tc_" + "0" * 20, "--introspection-ttl", "0"],
            "--introspection-ttl",
            "0 would be for ever",
        ),
        (
            [*KONG_OIDC, "--issuer", "https://auth.example.com/.well-known/openid-configuration"],
            "--issuer",
            "not its base URL: pass the issuer URL https://auth.example.com",
        ),
        (
            [*KONG_OIDC, "--issuer", "https://auth.example.com/?x=1"],
            "--issuer",
            "without user, query or fragment",
        ),
        (["iid", "verify", "nope.txt", "--rsa2048", "nope.sig"], "nope.txt", "no such file"),
        (["revoke", "--jti", "j", "--table", "t", "--ttl-cap", "5"], "--ttl-cap", "60..43200"),
        (
            ["revoke", "--table", "t", "--principal", "arn:aws:sts::123456789012:assumed-role/r/s"],
            "--principal",
            "tokens name the role",
        ),
        (["clients", "remove", "nope", "--table", "t"], "nope", "tc_ and 20 hex digits"),
        (
            ["clients", "add", "bad name", "--audience", "a", "--table", "t"],
            "bad name",
            "1-64 characters",
        ),
        (["clients", "add", "k", "--audience", "a b", "--table", "t"], "--audience", "1-256"),
        (
            ["clients", "update", "nope", "--audience", "a", "--table", "t"],
            "nope",
            "tc_ and 20 hex digits",
        ),
        (
            ["clients", "update", "tc_" + "0" * 20, "--audience", "a/b c", "--table", "t"],
            "--audience",
            "1-256",
        ),
        (
            ["policy", "list", "--table", "t", "--endpoint-url", "localhost:4566"],
            "--endpoint-url",
            "did you mean --endpoint-url https://localhost:4566",
        ),
        (["policy", "put", "nope.json", "--table", "t"], "nope.json", "no such file"),
        # get and delete take any id a DynamoDB key can be (test_cli_unreadable_inputs.py).
        (["policy", "get", "", "--table", "t"], "ID", "must be 1-2048 bytes of UTF-8 text"),
        (["policy", "delete", "x" * 2049, "--table", "t"], "x" * 2049, "must be 1-2048 bytes"),
        (
            ["policy", "list", "--table", "t", "--endpoint-url", "http://[zz]/"],
            "--endpoint-url",
            "not a valid URL",
        ),
    ],
)
def test_usage_errors_name_the_input_and_the_fix(capsys, monkeypatch, argv, flag, why) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("TOKEX_KONG_CLIENT_SECRET", raising=False)
    if argv[0] == "token" and "--audience" not in argv:
        argv = [*argv, "--audience", "orders-api"]
    code, out, err = tokex(capsys, *argv)
    assert (code, out) == (2, "")
    assert why in err and err.count("\n") == 1
    code, out, err = tokex(capsys, *argv, "--json")
    assert (code, err) == (2, "")
    failure = one_json_object(out)
    assert failure["input"] == flag and why in failure["error_description"]


def test_usage_errors_are_found_before_any_network_call(capsys, closed_port, tmp_path) -> None:
    """The AWS endpoint is a closed port: reaching it would be exit 1, not 2."""
    aws = ["--region", "us-east-1", "--endpoint-url", f"http://127.0.0.1:{closed_port}"]
    (tmp_path / "p.json").write_text("{}")  # invalid, but the command line is wrong first
    cases = [
        (
            ["policy", "put", str(tmp_path / "p.json"), "--table", "t", "--ttl-cap", "5"],
            "--ttl-cap",
        ),
        (
            ["policy", "explain", "--stack", "S", "--principal", "arn:aws:iam::1:root"],
            "--principal",
        ),
        (["policy", "explain", "--stack", "S", "--principal", "role/x"], "--account"),
        (["clients", "add", "bad name", "--audience", "a", "--stack", "S"], "bad name"),
        (["clients", "add", "k", "--audience", "a b", "--stack", "S"], "--audience"),
        (["clients", "update", "tc_" + "0" * 20, "--audience", "", "--stack", "S"], "--audience"),
        (["revoke", "--jti", "has space", "--stack", "S"], "--jti"),
        (["revoke", "--jti", "--stack", "S"], "--jti"),  # a flag is not a value
        (["revoke", "--stack", "S", "--jti"], "--jti"),
    ]
    for argv, flag in cases:
        extra = [] if "explain" not in argv else ["--audience", "a"]
        code, out, _ = tokex(capsys, *argv, *extra, *aws, "--json")
        assert (code, one_json_object(out)["input"]) == (2, flag), argv


# --- exit 1: well-formed input that failed ------------------------------------------------


@pytest.fixture
def closed_port(refused_port: int) -> int:
    return refused_port


@pytest.fixture
def not_tokex(tmp_path) -> Iterator[str]:
    """Another web server: python's http.server, answering 404 (text/html) for discovery."""
    import http.server
    import threading
    from functools import partial

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def workload_credentials(monkeypatch) -> None:
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "TOKEX_ENDPOINT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def test_token_at_a_server_that_is_not_tokex_says_what_it_found(
    capsys, not_tokex, workload_credentials
) -> None:
    argv = ["token", "--endpoint", not_tokex, "--audience", "orders-api"]
    code, out, err = tokex(capsys, *argv)
    assert (code, out) == (1, "")
    discovery = f"{not_tokex}/.well-known/openid-configuration"
    assert err == (
        f"tokex token: {not_tokex} is not a tokex issuer: its discovery document {discovery} "
        "answered HTTP 404 File not found (text/html). Pass the issuer URL: `tokex local` "
        "prints it, a deployment has it as its IssuerUrl stack output\n"
    )
    code, out, _ = tokex(capsys, *argv, "--json")
    failure = one_json_object(out)
    assert (code, failure["error"], failure["input"]) == (1, "not_tokex", discovery)


def test_token_at_a_closed_port_is_a_network_failure(
    capsys, closed_port, workload_credentials
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    code, out, err = tokex(capsys, "token", "--endpoint", url, "--audience", "a", "--json")
    failure = one_json_object(out)
    assert (code, err, failure["error"]) == (1, "", "unreachable")
    assert failure["error_description"] == (
        f"cannot reach {url}/.well-known/openid-configuration: Connection refused "
        "(is `tokex local` running? it prints the endpoint it serves)"
    )


def test_a_local_endpoint_whose_sts_is_unreachable_points_at_the_env_file(
    capsys, closed_port, workload_credentials, monkeypatch
) -> None:
    """`tokex local` is up but the shell's STS is not its own (workload.env of an earlier
    run, or not sourced and AWS's own): the hint blamed `tokex local` for being down."""
    from tests.support.fake_issuer import fake_issuer

    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{closed_port}")
    with fake_issuer() as issuer:
        argv = ["token", "--endpoint", issuer.url, "--audience", "a", "--evidence", "aws-oif"]
        code, out, _ = tokex(capsys, *argv, "--json")
    failure = one_json_object(out)
    assert (code, failure["error"]) == (1, "unreachable")
    assert failure["error_description"].startswith(f"cannot reach http://127.0.0.1:{closed_port}")
    assert failure["error_description"].endswith(
        "(the endpoint is a `tokex local`: source the workload.env of its current run; each"
        " start writes new ones)"
    )


def test_kong_config_jwks_failures_say_what_happened(capsys, closed_port, tmp_path) -> None:
    url = f"http://127.0.0.1:{closed_port}/.well-known/jwks.json"
    code, out, err = tokex(capsys, "kong-config", "--jwks", url, "--global", "--any-audience")
    assert (code, out) == (1, "")
    assert err == (
        f"tokex kong-config: cannot fetch the JWKS from {url}: Connection refused (is the "
        "issuer up, and the URL right?)\n"
    )
    (tmp_path / "jwks.json").write_text("<html>")
    argv = ["kong-config", "--jwks", str(tmp_path / "jwks.json"), "--global", "--any-audience"]
    code, out, _ = tokex(capsys, *argv, "--json")
    failure = one_json_object(out)
    assert (code, failure["error"], failure["input"]) == (1, "invalid_input", argv[2])
    assert "is not JSON" in failure["error_description"]


def test_an_aws_failure_is_exit_1_naming_the_table(capsys, monkeypatch, closed_port) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    argv = ["policy", "list", "--table", "t", "--region", "us-east-1"]
    argv += ["--endpoint-url", f"http://127.0.0.1:{closed_port}", "--json"]
    code, out, _ = tokex(capsys, *argv)
    failure = one_json_object(out)
    assert (code, failure["error"], failure["input"]) == (1, "aws_error", "--table")
    assert "EndpointConnectionError" in failure["error_description"]


# --- the console script: closed pipe and SIGINT ---------------------------------------------


def run_with_closed_stdout(argv: list[str], env: dict[str, str] | None = None) -> list[Any]:
    """Start the real console script once per command line with stdout a pipe whose reader
    is already gone; the results, in order."""
    assert TOKEX, "the tokex console script is not installed in this environment"
    processes = []
    for args in argv:
        read_end, write_end = os.pipe()
        os.close(read_end)
        processes.append(
            subprocess.Popen(
                [TOKEX, *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
        os.close(write_end)
    return [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in processes]


def test_a_closed_stdout_exits_141_quietly_for_every_command(tmp_path) -> None:
    runs = []
    for path, parser in LEAVES:
        runs.append([*path, "--help"])
        runs.append([*path, *filled_required(parser), "--no-such-flag", "--json"])
    results = run_with_closed_stdout(runs)
    for args, (code, stderr) in zip(runs, results, strict=True):
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, (args, stderr)
        assert (code, stderr) == (141, ""), args


def test_a_closed_stdout_while_printing_data(tmp_path) -> None:
    policy = {
        "id": "orders-reader",
        "effect": "allow",
        "principals": ["arn:aws:iam::123456789012:role/orders-*"],
        "audiences": ["orders-api"],
    }
    (tmp_path / "p.json").write_text(json.dumps(policy))
    samples = Path(__file__).parents[1] / "data/aws-iid/samples"
    sample = samples / "us-west-2_2021-09_rsa2048_teleport-instance1"
    explain = ["policy", "explain", "--policy-file", str(tmp_path / "p.json")]
    explain += ["--principal", "arn:aws:iam::123456789012:role/orders-api", "--audience"]
    runs = [
        ["policy", "validate", "--json", str(tmp_path / "p.json")],
        [*explain, "orders-api"],
        [*explain, "orders-api", "--json"],
        ["iid", "verify", str(sample / "document"), "--rsa2048", str(sample / "rsa2048")],
    ]
    for args, (code, stderr) in zip(runs, run_with_closed_stdout(runs), strict=True):
        assert (code, stderr) == (141, ""), args


def test_sigint_exits_130_without_a_traceback(workload_credentials) -> None:
    assert TOKEX
    with socket.socket() as silent:  # accepts, then never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_REGION": "us-east-1"}
        process = subprocess.Popen(
            [TOKEX, "token", "--endpoint", url, "--audience", "a", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        silent.settimeout(30)
        connection, _ = silent.accept()  # the command now waits for an answer
        with connection:
            connection.recv(4096)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
    assert (process.returncode, err) == (130, "")
    assert one_json_object(out, at_fault=False)["error"] == "interrupted"


def test_values_that_start_with_a_dash_are_taken_as_values(
    capsys, monkeypatch, closed_port
) -> None:
    """Audiences, scopes, jtis and secrets may start with "-": `--audience -api` is the
    audience -api, not a missing value (the closed issuer port makes it exit 1)."""
    use_static_credentials(monkeypatch)
    endpoint = f"http://127.0.0.1:{closed_port}"
    argv = ["token", "--endpoint", endpoint, "--audience", "-api", "--scope", "-x", "--json"]
    code, out, _ = tokex(capsys, *argv)
    assert (code, one_json_object(out)["error"]) == (1, "unreachable")
    code, out, _ = tokex(capsys, "token", "--endpoint", endpoint, "--audience", "--json")
    assert (code, one_json_object(out)["input"]) == (2, "--audience")  # a flag: no value


def test_a_positional_value_that_starts_with_a_dash_is_shown_the_way(capsys) -> None:
    """A policy id may start with "-"; argparse can only take it after `--`."""
    code, out, err = tokex(capsys, "policy", "get", "-canary", "--table", "t", "--json")
    failure = one_json_object(out)
    assert (code, err, failure["input"]) == (2, "", "ID")
    assert failure["error_description"].endswith("goes after `--`: ... -- -canary")
    code, out, _ = tokex(capsys, "policy", "get", "--table", "t", "--jsn", "--json")
    assert "goes after" not in one_json_object(out)["error_description"]  # a mistyped flag


class HostileIssuer(QuietHandler):
    """A token endpoint whose refusal carries terminal escape sequences, and whose token
    response has a NaN (not JSON)."""

    nan = False

    def do_GET(self) -> None:
        issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.send_document(200, json.dumps({"issuer": issuer}).encode(), JSON_TYPE)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if HostileIssuer.nan:
            self.send_document(200, b'{"access_token": "t", "expires_in": NaN}', JSON_TYPE)
            return
        refusal = {"error": "invalid_target", "error_description": "no\x1b]0;owned\x07\x1b[2J"}
        self.send_document(400, json.dumps(refusal).encode(), JSON_TYPE)


JSON_TYPE = {"Content-Type": "application/json"}


def test_what_a_server_answers_never_reaches_the_terminal_raw(
    capsys, workload_credentials, monkeypatch
) -> None:
    with serving(LoopbackServer(HostileIssuer)) as server:
        code, out, err = tokex(capsys, "token", "--endpoint", server.url, "--audience", "a")
        assert (code, out) == (1, "")
        assert "\x1b" not in err and "no\\x1b]0;owned\\x07\\x1b[2J" in err
        monkeypatch.setattr(HostileIssuer, "nan", True)
        code, out, err = tokex(capsys, "token", "--endpoint", server.url, "--audience", "a")
        assert (code, out) == (1, "") and "not a JSON object" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["clients", "list", "--table", "t"],
        ["policy", "list", "--table", "t"],
        ["token", "--endpoint", "https://auth.example.com", "--audience", "a"],
    ],
)
@pytest.mark.parametrize("region", [None, "us-east-1"])
def test_a_missing_profile_is_a_usage_error_with_or_without_a_region(
    capsys, monkeypatch, tmp_path, argv, region
) -> None:
    config = tmp_path / "config"
    config.write_text("[profile other]\nregion = eu-west-1\n")
    without_aws_set_up(monkeypatch)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "nope")
    if region:
        monkeypatch.setenv("AWS_REGION", region)
    code, out, err = tokex(capsys, *argv, "--json")
    failure = one_json_object(out)
    assert (code, err, failure["input"]) == (2, "", "AWS_PROFILE")
    assert failure["error_description"] == (
        f"AWS_PROFILE names profile 'nope', which is not in {config}"
    )


@pytest.mark.parametrize(
    "regions", ["us-east-1,cn-north-1", "us-east-1,us-gov-west-1", "eu-west-9"]
)
def test_local_refuses_regions_it_cannot_serve_before_starting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regions: str
) -> None:
    """A Region-shaped name outside the aws partition's STS passed the check, then failed
    late with tracebacks, after writing to the state directory (docs/local.md: a usage
    error, found before anything is started or written)."""
    state = tmp_path / "state"
    code, _, err = tokex(capsys, "local", "--regions", regions, "--state-dir", str(state))
    assert code == 2
    assert "--regions" in err and "aws partition" in err
    assert not state.exists()


def test_local_without_its_extra_says_what_to_install(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without moto (`pip install -e .`, no `local` extra) it called itself a bug of tokex
    and left a state directory behind."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "moto" else real(name, *a)
    )
    state = tmp_path / "state"
    code, _, err = tokex(capsys, "local", "--state-dir", str(state))
    assert code == 1
    assert "pip install 'tokex[local]'" in err and "bug" not in err
    assert not state.exists()


@pytest.mark.parametrize(
    ("version", "absent", "why"),
    [
        ("5.1.0", None, "moto 5.1.0 is older than 5.2.5"),
        (None, "flask", "moto is installed without its server (flask missing)"),
    ],
    ids=["old-moto", "moto-without-server"],
)
def test_local_with_an_unfit_emulator_says_what_to_install(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    version: str | None,
    absent: str | None,
    why: str,
) -> None:
    """A project's own moto (no `[server]`, or pinned older) was "a bug of tokex", after
    the state directory was made."""
    import importlib.metadata

    if version is not None:
        real_version = importlib.metadata.version
        monkeypatch.setattr(
            importlib.metadata,
            "version",
            lambda name: version if name == "moto" else real_version(name),
        )
    if absent is not None:
        monkeypatch.setitem(sys.modules, absent, None)  # find_spec answers None
    state = tmp_path / "state"
    code, _, err = tokex(capsys, "local", "--state-dir", str(state))
    assert code == 1
    assert err == (
        f"tokex local: the emulator of the `local` extra is not usable ({why}): pip install"
        " 'tokex[local]' (the README's setup command, `.[dev]`, includes it)\n"
    )
    assert not state.exists()


def test_local_with_an_empty_state_dir_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--state-dir "$UNSET"` was the working directory (Path("") is "."): demo
    credentials written into whatever it was, a checkout perhaps."""
    monkeypatch.chdir(tmp_path)
    code, _, err = tokex(capsys, "local", "--state-dir", "")
    assert code == 2
    assert "--state-dir" in err and "must name a directory" in err
    assert list(tmp_path.iterdir()) == []
