"""Input a careless hand or a broken set-up gives: AWS credentials no request could carry,
a credential_process that answers garbage, an endpoint with a space or an accent in its
path, a password in a URL, a region with a line break, a damaged `--cache-dir` entry, an
output that cannot be written however Python buffers it. Each was an `internal error`, a
mislabelled failure, a request sent in vain or a password echoed; each is now a clear
refusal with the documented exit code (docs/contract.md "Command line")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import tokex
from tests.support.fake_issuer import (
    FakeIssuer,
    credential_process,
    fake_issuer,
    use_static_credentials,
)
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex.client import disk_cache
from tokex.client.token_client import TokenClient, TokenError, request_token

# A password in a URL: never in any output.
PASSWORD = "s3cretpw"


@pytest.fixture
def issuer(monkeypatch) -> Iterator[FakeIssuer]:
    use_static_credentials(monkeypatch)
    with fake_issuer(expires_in=900) as running:
        yield running


def tokex_process(*argv: str, env: dict[str, str], **streams) -> subprocess.CompletedProcess:
    """`tokex ARGV` in a process of its own, in the environment `env` (os.environ's, as the
    test's fixtures left it, then `env`)."""
    return subprocess.run(
        [sys.executable, "-m", "tokex.cli.main", *argv],
        capture_output=not streams,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
        **streams,
    )


# --- AWS credentials and configuration -------------------------------------------------


@pytest.mark.parametrize(
    "variable", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
)
@pytest.mark.parametrize("evidence", ["sigv4", "aws-oif"])
def test_credentials_no_request_could_carry_are_no_credentials(
    issuer: FakeIssuer, monkeypatch, capsys, variable: str, evidence: str
) -> None:
    """A byte of another encoding in an AWS_* variable (read as a lone surrogate) was a
    TypeError or an AttributeError deep inside the signing: an `internal error`. Now the
    variable is named, its value never shown, and nothing is sent."""
    monkeypatch.setenv(variable, "AKIA\udcff\udcfeVALUE")
    argv = ["token", "--endpoint", issuer.url, "--audience", "a", "--evidence", evidence]
    code, out, err = tokex(capsys, *argv, "--json")
    answer = json.loads(out)
    # Nothing of the command line is at fault: no input named (it had said --endpoint).
    assert (code, answer["error"], answer["input"], err) == (1, "no_credentials", None, "")
    assert f"{variable} has a character that is not printable ASCII" in answer["error_description"]
    assert "VALUE" not in out
    assert issuer.exchanges == 0


def test_the_library_refuses_such_credentials_as_a_token_error(
    issuer: FakeIssuer, monkeypatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA\u00e9XAMPLE")
    with pytest.raises(TokenError, match="AWS_ACCESS_KEY_ID has a character") as refused:
        request_token(issuer.url, "a")
    assert refused.value.error == "no_credentials"


@pytest.mark.parametrize("evidence", ["sigv4", "aws-oif"])
def test_a_credential_process_that_answers_garbage_is_an_aws_error(
    tmp_path: Path, monkeypatch, capsys, evidence: str
) -> None:
    """botocore parses the answer with json.loads: a JSONDecodeError, raised in the
    standard library, was taken for a bug of tokex."""
    credential_process(tmp_path, monkeypatch, "not json")
    with fake_issuer() as issuer:
        argv = ["token", "--endpoint", issuer.url, "--audience", "a", "--evidence", evidence]
        code, out, _ = tokex(capsys, *argv, "--json")
        with pytest.raises(TokenError) as refused:  # the library: no raw JSONDecodeError
            request_token(issuer.url, "a", evidence=evidence)
    answer = json.loads(out)
    assert (code, answer["error"], answer["input"]) == (1, "aws_error", None)
    assert answer["error_description"].startswith("the AWS configuration cannot be used: ")
    assert refused.value.error == "aws_error"


def test_an_error_the_sdk_raises_through_the_standard_library_is_an_aws_error(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Any command: the innermost frame of the JSONDecodeError is json.decoder's, the SDK's
    are further out."""
    import botocore.session

    from tokex.cli import policy

    credential_process(tmp_path, monkeypatch, "not json")
    monkeypatch.delenv("TOKEX_DEBUG", raising=False)

    def load_credentials(args: object) -> object:
        return botocore.session.Session().get_credentials()

    monkeypatch.setattr(policy, "run_validate", load_credentials)
    code, out, _ = tokex(capsys, "policy", "validate", "--json", "p.json")
    answer = json.loads(out)
    assert (code, answer["error"]) == (1, "aws_error")
    assert "JSONDecodeError" in answer["error_description"]


# --- the endpoint -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/\u00e9", "has a path with non-ASCII characters"),
        ("/a b", "has whitespace or control characters"),
        ("/a\tb", "has whitespace or control characters"),  # urlsplit drops it silently
        ("/a\nb", "has whitespace or control characters"),
        ("/tokex ", "has whitespace or control characters"),
    ],
)
def test_an_endpoint_path_no_request_line_could_carry_is_a_usage_error(
    issuer: FakeIssuer, capsys, path: str, why: str
) -> None:
    """It was an `internal error` (UnicodeEncodeError), or `unreachable` (InvalidURL);
    `tokex proxy` started and answered every request 503."""
    endpoint = issuer.url + path
    code, out, err = tokex(capsys, "token", "--endpoint", endpoint, "--audience", "a", "--json")
    answer = json.loads(out)
    assert (code, answer["error"], answer["input"], err) == (2, "invalid_value", "--endpoint", "")
    assert why in answer["error_description"]
    proxy = ["proxy", "--endpoint", endpoint, "--listen", "127.0.0.1:0", "--audience", "a"]
    code, out, _ = tokex(capsys, *proxy, "--upstream", "http://127.0.0.1:9", "--json")
    assert (code, json.loads(out)["input"]) == (2, "--endpoint")
    with pytest.raises(TokenError, match=why) as refused:
        request_token(endpoint, "a")
    assert refused.value.error == "invalid_endpoint"
    with pytest.raises(ValueError, match=why):
        TokenClient(endpoint)
    assert issuer.exchanges == 0


@pytest.mark.parametrize(
    "userinfo", ["@", ":@", f"user:{PASSWORD}@", f"user:{PASSWORD} x@"], ids=repr
)
def test_an_endpoint_with_a_user_is_refused_without_echoing_it(capsys, userinfo: str) -> None:
    """`http://@host` has no user name to urlsplit: it went through."""
    endpoint = f"http://{userinfo}127.0.0.1:8787"
    code, out, _ = tokex(capsys, "token", "--endpoint", endpoint, "--audience", "a", "--json")
    answer = json.loads(out)
    assert (code, answer["error"]) == (2, "invalid_value")
    assert "http://***@127.0.0.1:8787" in answer["error_description"]
    assert PASSWORD not in out


def test_an_endpoint_host_that_is_not_ascii_is_a_usage_error(capsys) -> None:
    """http.client encodes the Host header as Latin-1: an internal error
    (UnicodeEncodeError) for `пример.test`, the raw byte 0xFC sent for `bücher.example`."""
    endpoint = "https://\u043f\u0440\u0438\u043c\u0435\u0440.test"
    code, out, _ = tokex(capsys, "token", "--endpoint", endpoint, "--audience", "a", "--json")
    answer = json.loads(out)
    assert (code, answer["error"]) == (2, "invalid_value")
    assert (
        "give an internationalized name as its IDNA A-label (xn--...)"
        in (answer["error_description"])
    )


def test_a_percent_encoded_path_is_still_an_endpoint() -> None:
    from tokex.client.endpoint import check_endpoint

    assert check_endpoint("https://auth.example.com/t%C3%A9%20x/") == (
        "https://auth.example.com/t%C3%A9%20x"
    )


# --- a password in an AWS endpoint URL --------------------------------------------------


def test_an_aws_endpoint_url_with_a_password_is_never_echoed() -> None:
    """botocore quotes the endpoint URL in its messages ("Could not connect to the
    endpoint URL")."""
    url = f"http://user:{PASSWORD}@127.0.0.1:1"
    done = tokex_process(
        *("clients", "list", "--stack", "x", "--region", "us-east-1", "--json"),
        *("--endpoint-url", url),
        env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_MAX_ATTEMPTS": "1"},
    )
    assert done.returncode == 2, done.stdout + done.stderr  # refused before any AWS call
    assert json.loads(done.stdout)["error_description"] == (
        "--endpoint-url 'http://***@127.0.0.1:1' has a user name or password in it: give the URL"
        " without them"
    )
    assert PASSWORD not in done.stdout + done.stderr


def test_an_aws_error_is_described_without_the_password_of_its_url() -> None:
    from botocore.exceptions import EndpointConnectionError

    from tokex.cli.deployment import describe_aws_error

    error = EndpointConnectionError(endpoint_url=f"http://user:{PASSWORD}@127.0.0.1:1/")
    assert describe_aws_error(error) == (
        'Could not connect to the endpoint URL: "http://***@127.0.0.1:1/"'
    )


def test_an_sts_endpoint_with_a_password_is_never_echoed(issuer: FakeIssuer, monkeypatch) -> None:
    """aws-oif evidence: the STS endpoint comes from AWS_ENDPOINT_URL(_STS)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://user:{PASSWORD}@127.0.0.1:1")
    with pytest.raises(TokenError) as failed:
        request_token(issuer.url, "a", evidence="aws-oif", timeout=5)
    assert "http://***@127.0.0.1:1" in str(failed.value)
    assert PASSWORD not in f"{failed.value} {failed.value.url}"


# --- the region -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "variable"),
    [
        (["token", "--endpoint", "https://auth.example.com", "--audience", "a"], None),
        (["token", "--endpoint", "https://auth.example.com", "--audience", "a"], "AWS_REGION"),
        (["policy", "list", "--table", "t"], None),
        (["policy", "list", "--table", "t"], "AWS_DEFAULT_REGION"),
    ],
)
def test_a_region_with_a_line_break_is_a_usage_error(
    monkeypatch, capsys, argv: list[str], variable: str | None
) -> None:
    """botocore's region rule ends in `$`, which lets one trailing line break through: a
    signed request was sent for `sts.us-east-1\\n.amazonaws.com`, an HTTPClientError
    followed."""
    use_static_credentials(monkeypatch)
    monkeypatch.delenv("AWS_REGION")
    if variable is None:
        argv = [*argv, "--region", "us-east-1\n"]
    else:
        monkeypatch.setenv(variable, "us-east-1\n")
    code, out, err = tokex(capsys, *argv, "--json")
    answer = json.loads(out)
    assert (code, answer["error"], err) == (2, "invalid_value", "")
    assert answer["input"] == (variable or "--region")
    assert "'us-east-1\\n' is not a region name" in answer["error_description"]


# --- the token cache --------------------------------------------------------------------


def damaged_entry(directory: Path, name: str = "a" * 64) -> Path:
    """A cache file of this user's, mode 0600, whose obtained_at no float can hold."""
    path = directory / (name + disk_cache.FILE_SUFFIX)
    entry = '{"obtained_at": ' + "9" * 400 + ', "response": {"access_token": "t"}}'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(entry)
    return path


def test_a_damaged_cache_entry_is_no_entry(tmp_path: Path) -> None:
    path = damaged_entry(tmp_path)
    assert disk_cache.read_cached(path) is None
    assert disk_cache.prune_expired(tmp_path) == 0
    assert path.exists()  # not this run's to judge: left alone


def test_a_damaged_cache_entry_does_not_cost_the_token(
    issuer: FakeIssuer, capsys, tmp_path: Path
) -> None:
    """Pruning ran after the exchange and raised OverflowError: the run that got a token
    printed none."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    damaged_entry(cache)
    argv = ["token", "--endpoint", issuer.url, "--audience", "a", "--cache-dir", str(cache)]
    code, out, err = tokex(capsys, *argv)
    assert (code, out, err) == (0, "token-1\n", "")


# --- the output -------------------------------------------------------------------------


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_an_output_that_cannot_be_written_is_said_so_however_python_buffers(
    issuer: FakeIssuer, unbuffered: str
) -> None:
    """With PYTHONUNBUFFERED, the write fails inside the command, not at main's last
    flush: it was an `internal error`."""
    with open("/dev/full", "w") as full:
        done = tokex_process(
            "token", "--endpoint", issuer.url, "--audience", "a",
            env={"PYTHONUNBUFFERED": unbuffered}, stdout=full, stderr=subprocess.PIPE,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "tokex token: cannot write the output: No space left on device\n"


class LargeAnswers(QuietHandler):
    """A tokex issuer whose token answer is larger than stdout's buffer (8 KiB)."""

    def do_GET(self) -> None:
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.document({"issuer": url, "token_endpoint": url + "/token"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.document({"access_token": "t" * 20000, "token_type": "Bearer"})

    def document(self, document: dict) -> None:
        self.send_document(200, json.dumps(document).encode(), {"Content-Type": "application/json"})


def test_an_output_larger_than_the_buffer_that_cannot_be_written_is_said_so(monkeypatch) -> None:
    """Buffered, an output larger than the buffer fails inside the command too."""
    use_static_credentials(monkeypatch)
    with serving(LoopbackServer(LargeAnswers)) as server, open("/dev/full", "w") as full:
        done = tokex_process(
            "token", "--endpoint", server.url, "--audience", "a",
            env={"PYTHONUNBUFFERED": ""}, stdout=full, stderr=subprocess.PIPE,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "tokex token: cannot write the output: No space left on device\n"


@pytest.mark.parametrize(
    ("argv", "refusal"),
    [
        # An empty --state-dir after it is refused too: a port read as 80 never starts one.
        (["local", "--port", " 80", "--state-dir", ""], "argument --port: ' 80' is not a port"),
        (["local", "--port", "8_0", "--state-dir", ""], "argument --port: '8_0' is not a port"),
        (
            ["kong-config", "--max-ttl", "1_0", "--jwks", "jwks.json"],
            "argument --max-ttl: '1_0' is not a whole number",
        ),
        (
            ["kong-config", "--introspection-ttl", " 30", "--jwks", "jwks.json"],
            "argument --introspection-ttl: ' 30' is not a whole number",
        ),
        (
            ["policy", "validate", "--ttl-cap", "\u0663", "-"],
            "argument --ttl-cap: '\u0663' is not a whole number",
        ),
        (
            ["policy", "explain", "--principal", "arn:aws:iam::1:role/r", "--ttl-cap", "3600 "],
            "argument --ttl-cap: '3600 ' is not a whole number",
        ),
        (
            ["policy", "explain", "--principal", "arn:aws:iam::1:role/r", "--default-ttl", "+60"],
            "argument --default-ttl: '+60' is not a whole number",
        ),
        (["revoke", "--jti", "x", "--ttl-cap", "1_000"], "argument --ttl-cap: '1_000' is not"),
    ],
)
def test_a_number_int_would_read_differently_is_a_usage_error(
    capsys, argv: list[str], refusal: str
) -> None:
    """int() takes blanks around digits, `_` between them and other scripts' digits (`\u0663`
    is three): a typo or a pasted value would pass as a number the user did not write."""
    code, out, err = tokex(capsys, *argv)
    assert (code, out) == (2, "")
    assert refusal in err
