"""tokex/cli/proxy.py: the command line's refusals (exit 2 for a wrong configuration,
naming the flag or the file and key; exit 1 when a listener cannot be bound). Serving is
the system tests' (test_proxy.py runs the command)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from tokex.cli.main import main

ROUTE = ["--upstream", "https://orders.example.com", "--audience", "orders-api"]


def tokex(capsys, *argv: str) -> tuple[int, dict]:
    """The command's exit code and JSON answer; a command that starts serving instead of
    refusing fails the test rather than hanging it (it serves until the process ends)."""
    codes: list[int] = []
    command = threading.Thread(target=lambda: codes.append(main(["proxy", *argv, "--json"])))
    command.daemon = True
    command.start()
    command.join(timeout=30)
    assert codes, "the command started serving instead of refusing its arguments"
    code = codes[0]
    out, err = capsys.readouterr()
    assert err == "" and "Traceback" not in out
    return code, json.loads(out)


@pytest.fixture(autouse=True)
def no_endpoint_variable(monkeypatch) -> None:
    monkeypatch.delenv("TOKEX_ENDPOINT", raising=False)


def config_file(tmp_path: Path, **route: object) -> str:
    base = {"prefix": "/", "upstream": "https://orders.example.com", "audience": "orders-api"}
    document = {
        "endpoint": "https://auth.example.com",
        "listen": "127.0.0.1:0",
        "routes": [{**base, **route}],
    }
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_neither_a_file_nor_a_route_is_a_usage_error(capsys) -> None:
    code, failure = tokex(capsys)
    assert (code, failure["error"], failure["input"]) == (2, "usage", "--listen")
    assert "give --config FILE, or one route" in failure["error_description"]


def test_route_flags_do_not_go_with_a_file(capsys, tmp_path) -> None:
    code, failure = tokex(capsys, "--config", config_file(tmp_path), "--scope", "a")
    assert (code, failure["error"], failure["input"]) == (2, "usage", "--scope")


def test_a_wrong_file_names_the_file_and_the_key(capsys, tmp_path) -> None:
    path = config_file(tmp_path, upstream="http://orders.example.com")
    code, failure = tokex(capsys, "--config", path)
    assert (code, failure["error"], failure["input"]) == (2, "invalid_value", path)
    assert failure["error_description"].startswith(
        f"--config {path}: routes[0].upstream: 'http://orders.example.com' is plain http"
    )
    code, failure = tokex(capsys, "--config", str(tmp_path / "none.toml"))
    assert (code, failure["error"]) == (2, "file_not_found")
    assert failure["error_description"] == f"--config {tmp_path / 'none.toml'}: no such file"


def test_a_wrong_flag_is_named(capsys) -> None:
    argv = ["--endpoint", "https://auth.example.com", "--listen", "0.0.0.0:8080", *ROUTE]
    code, failure = tokex(capsys, *argv)
    assert (code, failure["error"], failure["input"]) == (2, "invalid_value", "--listen")
    assert "not a loopback address" in failure["error_description"]
    code, failure = tokex(capsys, "--listen", "127.0.0.1:0", *ROUTE)
    assert (code, failure["input"]) == (2, "--endpoint")


def test_a_busy_port_is_exit_1(capsys) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        argv = ["--endpoint", "https://auth.example.com", "--listen", f"127.0.0.1:{port}"]
        code, failure = tokex(capsys, *argv, *ROUTE)
    assert (code, failure["error"], failure["input"]) == (1, "failed", "--listen")
    assert failure["error_description"].startswith(f"cannot listen: listen 127.0.0.1:{port}: ")


def test_an_unsafe_secret_file_is_refused_before_serving(capsys, tmp_path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # noqa: S103 - the unsafe directory under test
    argv = ["--endpoint", "https://auth.example.com", "--listen", "127.0.0.1:0", *ROUTE]
    code, failure = tokex(capsys, *argv, "--secret-file", str(shared / "secret"))
    assert (code, failure["input"]) == (2, "--secret-file")
    assert "without the sticky bit" in failure["error_description"]
    # A directory is no file: said so, naming it (not a temporary file tried beside it).
    code, failure = tokex(capsys, *argv, "--secret-file", str(tmp_path))
    assert (code, failure["input"]) == (2, "--secret-file")
    assert failure["error_description"] == (
        f"--secret-file: {tmp_path} is a directory: name a file in it, e.g. {tmp_path}/secret"
    )


def test_a_scope_with_a_tab_is_refused_not_split(capsys) -> None:
    """Spaces separate scopes (RFC 6749 section 3.3); a tab or a newline is no separator,
    so `--scope` with one is a wrong scope, never two scopes asked for silently."""
    argv = ["--endpoint", "https://auth.example.com", "--listen", "127.0.0.1:0", *ROUTE]
    code, failure = tokex(capsys, *argv, "--scope", "orders:read\torders:write")
    assert (code, failure["error"], failure["input"]) == (2, "invalid_value", "--scope")


def test_a_scope_flag_that_names_no_scope_is_refused(capsys) -> None:
    """`--scope "$SCOPE"` with SCOPE unset: a usage error, not a route that asks for every
    scope the policy grants (a configuration file's `scopes = [""]` is refused too)."""
    argv = ["--endpoint", "https://auth.example.com", "--listen", "127.0.0.1:0", *ROUTE]
    code, failure = tokex(capsys, *argv, "--scope", "")
    assert (code, failure["error"], failure["input"]) == (2, "invalid_value", "--scope")
    assert "names no scope" in failure["error_description"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("proxy.json", '"ca_file": "ca\\u0000.pem"'),
        ("proxy.json", '"ca_file": "ca\\ud800.pem"'),  # a lone surrogate: valid JSON
        ("proxy.toml", 'ca_file = "ca\\u0000.pem"'),
    ],
)
def test_a_file_path_no_file_name_can_hold_is_refused_naming_its_key(
    capsys, tmp_path, name: str, text: str
) -> None:
    """It reached the system calls: ValueError "embedded null byte" or a UnicodeEncodeError,
    an internal error (and Extension.Crashed in Lambda, not Extension.ConfigInvalid)."""
    path = tmp_path / name
    if name.endswith(".json"):
        route = f'{{"prefix": "/", "upstream": "https://o.example", "audience": "a", {text}}}'
        path.write_text(
            f'{{"endpoint": "https://auth.example.com", "listen": "127.0.0.1:0", '
            f'"routes": [{route}]}}'
        )
    else:
        path.write_text(
            'endpoint = "https://auth.example.com"\nlisten = "127.0.0.1:0"\n[[routes]]\n'
            f'prefix = "/"\nupstream = "https://o.example"\naudience = "a"\n{text}\n'
        )
    code, failure = tokex(capsys, "--config", str(path))
    assert (code, failure["error"], failure["input"]) == (2, "invalid_value", str(path))
    assert f"{path}: routes[0].ca_file: " in failure["error_description"]
    assert "which no file name can hold" in failure["error_description"]


def test_an_upstream_host_that_is_not_ascii_is_refused_naming_the_flag(capsys) -> None:
    """`é` as e and a combining accent failed at start (urllib3's LocationParseError, an
    internal error); `bücher.example` went out as the Latin-1 bytes of the Host header."""
    argv = ["--endpoint", "https://auth.example.com", "--listen", "127.0.0.1:0"]
    upstream = "https://e\u0301.example"
    code, failure = tokex(capsys, *argv, "--upstream", upstream, "--audience", "a")
    assert (code, failure["error"], failure["input"]) == (2, "invalid_value", "--upstream")
    assert (
        "give an internationalized name as its IDNA A-label (xn--" in (failure["error_description"])
    )
