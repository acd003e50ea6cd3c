"""The command line convention (docs/contract.md "Command line") where the input or the
output is hostile: text no stream can encode, outputs that cannot be written, closed
standard streams, AWS configuration the SDK refuses, host names no connection could use,
a JWKS redirect to plain http, decK files that are not files. Each was a traceback or an
`internal error` before; the commands run as users run them, in a process of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tests.support.tls import HttpsServer, make_pki
from tokex.cli import clients
from tokex.tokens.jwks import build_jwks, jwk_from_public_key

# A file that is no policy, with a key that is a lone surrogate (valid JSON: `\ud800`).
SURROGATE_POLICY = '{"a\\ud800": 1}'


def tokex(
    *argv: str, env: dict[str, str] | None = None, **streams: Any
) -> subprocess.CompletedProcess[str]:
    """`tokex ARGV` in a process of its own, its output captured unless `streams` say
    otherwise (a shell's `>/dev/full`, `>&-`)."""
    return subprocess.run(
        [sys.executable, "-m", "tokex.cli.main", *argv],
        capture_output=not streams,
        text=True,
        timeout=60,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", **(env or {})},
        check=False,
        **streams,
    )


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(build_jwks([jwk_from_public_key(key.public_key(), "RS256")])))
    return path


def kong_config(jwks: Path, *more: str, **options: Any) -> subprocess.CompletedProcess[str]:
    return tokex("kong-config", "--any-audience", "--global", "--jwks", str(jwks), *more, **options)


def test_a_lone_surrogate_is_written_escaped_in_one_json_object(tmp_path: Path) -> None:
    policy = tmp_path / "p.json"
    policy.write_text(SURROGATE_POLICY)
    done = tokex("policy", "validate", "--json", str(policy))
    assert (done.returncode, done.stderr) == (1, "")
    answer = json.loads(done.stdout)  # one object, and JSON
    assert answer["error"] == "invalid_policy"
    assert {"field": "a\ud800", "message": "unknown key"} in answer["errors"]
    text = tokex("policy", "validate", str(policy))
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "a\\ud800: unknown key" in text.stderr


def test_an_output_that_cannot_be_written_is_one_line_and_exit_1(jwks_file: Path) -> None:
    with open("/dev/full", "w") as full:
        done = tokex(
            "kong-config", "--any-audience", "--global", "--jwks", str(jwks_file), "--json",
            stdout=full, stderr=subprocess.PIPE,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "tokex kong-config: cannot write the output: No space left on device\n"


def test_closed_standard_streams_are_no_crash(tmp_path: Path, jwks_file: Path) -> None:
    closed_out = kong_config(jwks_file, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert closed_out.returncode == 0
    policy = tmp_path / "p.json"
    policy.write_text(SURROGATE_POLICY)
    # `>&-` and `<&-`: the child starts with that file descriptor closed.
    done = tokex("policy", "validate", "--json", str(policy), **closing(1), stderr=subprocess.PIPE)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    stdin_closed = tokex("policy", "validate", "--json", "-", **closing(0), stdout=subprocess.PIPE)
    assert stdin_closed.returncode == 1
    assert json.loads(stdin_closed.stdout) == {
        "error": "invalid_input",
        "error_description": "cannot read policy document from standard input: it is closed",
        "input": "-",
    }


def closing(fd: int) -> dict[str, Any]:
    """The child starts with `fd` closed, as a shell's `>&-` or `<&-` leaves it."""
    return {"preexec_fn": lambda: os.close(fd)}


def test_aws_configuration_the_sdk_refuses_is_an_aws_error_or_a_usage_error() -> None:
    table = ["policy", "list", "--table", "t", "--region", "us-east-1", "--json"]
    attempts = tokex(
        *table, "--endpoint-url", "http://127.0.0.1:9", env={"AWS_MAX_ATTEMPTS": "abc"}
    )
    assert attempts.returncode == 1, attempts.stdout
    answer = json.loads(attempts.stdout)
    assert answer["error"] == "aws_error"
    assert answer["error_description"].startswith("the AWS configuration cannot be used: ")
    endpoint = tokex(*table, "--endpoint-url", "http://a_b:1")
    assert endpoint.returncode == 2
    assert json.loads(endpoint.stdout)["input"] == "--endpoint-url"


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "--endpoint", "https://a..example.com", "--audience", "a"],
        ["token", "--endpoint", f"https://{'x' * 64}.example.com", "--audience", "a"],
        ["kong-config", "--any-audience", "--global", "--jwks", "https://a..b/jwks.json"],
    ],
    ids=["empty-label", "long-label", "jwks"],
)
def test_a_host_no_connection_could_use_is_a_usage_error(argv: list[str]) -> None:
    done = tokex(*argv, "--json")
    assert done.returncode == 2, done.stdout
    answer = json.loads(done.stdout)
    assert answer["error"] in ("invalid_value", "invalid_endpoint")
    assert "not a valid host name" in answer["error_description"]


class Redirecting(QuietHandler):
    """Sends every request to plain http elsewhere; counts what it was asked."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self.send_response(302)
        self.send_header("Location", "http://192.0.2.1:9/.well-known/jwks.json")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def redirecting() -> Iterator[LoopbackServer]:
    with serving(LoopbackServer(Redirecting)) as server:
        yield server


def test_a_jwks_redirect_to_plain_http_is_refused_before_it_is_followed(redirecting) -> None:
    """Found at the server's answer, so exit 1 (not a usage error), and nothing is ever
    sent to the plain-http address (192.0.2.1 is unroutable: following would hang)."""
    done = tokex(
        "kong-config", "--any-audience", "--global", "--json",
        "--jwks", redirecting.url + "/.well-known/jwks.json",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    answer = json.loads(done.stdout)
    assert answer["error"] == "unreachable"
    assert (
        "redirects to http://192.0.2.1:9/.well-known/jwks.json, which use https"
        in (answer["error_description"])
    )
    assert Redirecting.asked == ["/.well-known/jwks.json"]


class ServingJwks(QuietHandler):
    """Answers every GET with `body` (a JWKS) and counts what it was asked."""

    body: ClassVar[bytes] = b""
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self.send_document(200, self.body, {"Content-Type": "application/json"})


def jwks_server(body: bytes) -> LoopbackServer:
    handler = type("Jwks", (ServingJwks,), {"body": body, "asked": []})
    return LoopbackServer(handler)


def test_a_loopback_jwks_is_never_fetched_through_a_proxy(jwks_file: Path) -> None:
    """A proxy handed the plain-http request could answer with keys of its own, and Kong
    would trust them: the environment's proxies serve https only, as for `tokex token`."""
    forged = jwks_file.read_text().replace('"kid": "', '"kid": "X')  # any other answer
    with (
        serving(jwks_server(jwks_file.read_bytes())) as issuer,
        serving(jwks_server(forged.encode())) as proxy,
    ):
        done = tokex(
            "kong-config", "--any-audience", "--global", "--json",
            "--jwks", issuer.url + "/.well-known/jwks.json",
            env={"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout
        assert proxy.RequestHandlerClass.asked == []  # type: ignore[attr-defined]
        assert issuer.RequestHandlerClass.asked == ["/.well-known/jwks.json"]  # type: ignore[attr-defined]


class RedirectingToLoopback(QuietHandler):
    """Sends every request to plain http on loopback (`location`)."""

    location: ClassVar[str] = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_jwks_redirect_from_https_to_loopback_http_is_refused(
    jwks_file: Path, tmp_path: Path
) -> None:
    """Loopback http is a `--jwks` on its own (`tokex local`), but reached from https it
    is a downgrade: the https issuer's keys would come in clear text."""
    pki = make_pki(tmp_path)
    with serving(jwks_server(jwks_file.read_bytes())) as plain:
        handler = type("Redirect", (RedirectingToLoopback,), {"location": plain.url + "/jwks.json"})
        with serving(HttpsServer(handler, pki.server)) as https:
            done = tokex(
                "kong-config", "--any-audience", "--global", "--json",
                "--jwks", https.url + "/.well-known/jwks.json",
                env={"SSL_CERT_FILE": str(pki.ca_file)},
            )  # fmt: skip
        assert done.returncode == 1, done.stdout
        answer = json.loads(done.stdout)
        assert answer["error"] == "unreachable"
        assert "a redirect from https may not downgrade" in answer["error_description"]
        assert plain.RequestHandlerClass.asked == []  # type: ignore[attr-defined]


def test_an_existing_file_too_large_is_refused_unread(tmp_path: Path, jwks_file: Path) -> None:
    huge = tmp_path / "kong.yaml"
    with huge.open("wb") as file:
        file.truncate(8 * 1024 * 1024 + 1)  # sparse: no disk used
    done = kong_config(jwks_file, "--json", "--existing", str(huge))
    assert done.returncode == 1
    assert json.loads(done.stdout)["error_description"].endswith(
        "is larger than 8388608 bytes: not a file this command wrote"
    )


def test_a_missing_existing_file_says_nothing_on_stderr_with_json(tmp_path, jwks_file) -> None:
    done = kong_config(jwks_file, "--json", "--existing", str(tmp_path / "none.yaml"))
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["_format_version"]


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dev-stdout"])
def test_output_is_never_written_through_a_symlink_or_into_a_special_file(
    tmp_path: Path, jwks_file: Path, kind: str
) -> None:
    """The file may hold a client secret: a link planted at --output must not lead it
    elsewhere, and `/dev/stdout` (a symlink) was replaced by a file."""
    target = tmp_path / "real.yaml"
    target.write_text("old")
    output = tmp_path / "out.yaml"
    if kind == "symlink":
        output.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(output)
    else:
        output = Path("/dev/stdout")
    done = kong_config(jwks_file, "--json", "--output", str(output))
    assert done.returncode == 2, done.stdout
    answer = json.loads(done.stdout)
    assert answer["input"] == "--output"
    assert "is a symlink or a special file" in answer["error_description"]
    assert target.read_text() == "old"
    assert output.is_symlink() or output.is_fifo() or kind == "dev-stdout"


def test_a_creation_time_no_date_can_hold_is_shown_as_its_number() -> None:
    assert clients._date(99_999_999_999_999_999_999) == "99999999999999999999"
    assert clients._date(1_800_000_000) == "2027-01-15T08:00:00Z"


# Keep the handler's class-level list per test run.
@pytest.fixture(autouse=True)
def _fresh_redirect_log() -> Iterator[None]:
    Redirecting.asked = []
    yield


@pytest.mark.parametrize("bug", [RuntimeError("a bug"), FileNotFoundError(2, "a bug")])
@pytest.mark.parametrize(("debug", "traceback"), [("", False), ("0", False), ("1", True)])
def test_tokex_debug_shows_a_bugs_traceback_only_when_set_to_something_but_0(
    monkeypatch, capsys, debug: str, traceback: bool, bug: Exception
) -> None:
    """A bug's own OSError is no output failure: with TOKEX_DEBUG its traceback shows."""
    from tokex.cli import policy
    from tokex.cli.main import main

    def a_bug(args: Any) -> int:
        raise bug

    monkeypatch.setattr(policy, "run_validate", a_bug)
    monkeypatch.setenv("TOKEX_DEBUG", debug)
    if traceback:
        with pytest.raises(type(bug)):
            main(["policy", "validate", "p.json"])
        return
    assert main(["policy", "validate", "p.json"]) == 1
    err = capsys.readouterr().err
    assert f"internal error, a bug of tokex: {type(bug).__name__}: " in err


@pytest.mark.parametrize(
    ("value", "error"), [("not a date", "aws_error"), (None, "internal_error")]
)
def test_only_a_value_the_sdk_refuses_is_an_aws_error(monkeypatch, capsys, value, error) -> None:
    """dateutil parses a credential_process answer's date for botocore: a value it
    refuses is the configuration's; a wrong type given to it is a bug of tokex's."""
    from dateutil import parser

    from tokex.cli import policy
    from tokex.cli.main import main

    monkeypatch.setattr(policy, "run_validate", lambda args: parser.parse(value))
    monkeypatch.delenv("TOKEX_DEBUG", raising=False)
    assert main(["policy", "validate", "--json", "p.json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == error


def test_json_with_a_value_is_a_usage_error_reported_as_json(capsys) -> None:
    from tokex.cli.main import main

    assert main(["policy", "validate", "--json=1", "p.json"]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert (answer["error"], answer["input"]) == ("usage", "--json")


class _IssuerOfOddScopes(QuietHandler):
    """A token answer whose scope holds printable non-ASCII, a bidi override and a C1
    control (what a look-alike issuer may send)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        answer = {"access_token": "t", "expires_in": 900, "scope": "caf\u00e9 \u202e \u009b"}
        self.send_document(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})


def test_token_json_writes_printable_text_as_it_is_and_escapes_the_rest() -> None:
    """docs/contract.md "Command line": --json writes printable non-ASCII as it is, a success
    as an error; a bidi override or a C1 control (a terminal's CSI) escaped."""
    with serving(LoopbackServer(_IssuerOfOddScopes)) as issuer:
        done = tokex(
            "token", "--endpoint", issuer.url, "--issuer", issuer.url, "--audience", "a", "--json"
        )
    assert done.returncode == 0, done.stderr
    assert '"scope": "caf\u00e9 \\u202e \\u009b"' in done.stdout
    assert json.loads(done.stdout)["scope"] == "caf\u00e9 \u202e \u009b"
