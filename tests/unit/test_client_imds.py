"""client/imds.py against a loopback stand-in for IMDS: what does not answer, or answers
broken, is ImdsUnavailable (with `--instance-identity auto` the exchange goes on without
instance evidence), never half an answer taken for evidence. Real instance evidence
against the local IMDS emulator: tests/system/test_instance_evidence.py."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest

from tests.support.fake_issuer import FakeIssuer, fake_issuer, use_static_credentials
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex.cli.main import main
from tokex.client.imds import ImdsUnavailable, read_instance_identity


class Imds(QuietHandler):
    """A session token; a document and signature cut off when `cut_off` says so."""

    cut_off = False

    def do_PUT(self) -> None:
        self.send_document(200, b"session-token", {"Content-Type": "text/plain"})

    def do_GET(self) -> None:
        body = b'{"instanceId": "i-0123456789abcdef0"}'
        if not self.cut_off:
            self.send_document(200, body, {"Content-Type": "text/plain"})
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:10])
        self.close_connection = True


class CutOffImds(Imds):
    cut_off = True


def test_a_whole_answer_is_the_evidence(monkeypatch) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    with serving(LoopbackServer(Imds)) as server:
        evidence = read_instance_identity(server.url)
    assert evidence["document"] == '{"instanceId": "i-0123456789abcdef0"}'


def test_an_answer_cut_off_is_unavailable_not_evidence(monkeypatch) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    with serving(LoopbackServer(CutOffImds)) as server, pytest.raises(ImdsUnavailable) as failed:
        read_instance_identity(server.url)
    assert "broke off" in str(failed.value)


class NotHttp(QuietHandler):
    def do_PUT(self) -> None:
        self.wfile.write(b"garbage, not an HTTP status line\r\n\r\n")
        self.close_connection = True


def test_an_answer_that_is_not_http_is_unavailable(monkeypatch) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    with serving(LoopbackServer(NotHttp)) as server, pytest.raises(ImdsUnavailable):
        read_instance_identity(server.url)


class DrippingImds(QuietHandler):
    """The session token a byte every 0.2 s: its 50 bytes take 10 s (10 times the longest
    IMDS timeout), each read well within a socket timeout. The document and signature come
    at once: a client that waits the token out ends with evidence, not ImdsUnavailable."""

    def do_PUT(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "50")
        self.end_headers()
        try:
            for _ in range(50):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the reader gave up

    def do_GET(self) -> None:
        body = b'{"instanceId": "i-0123456789abcdef0"}'
        self.send_document(200, body, {"Content-Type": "text/plain"})


def test_the_whole_read_is_within_its_timeout_however_slowly_imds_answers(monkeypatch) -> None:
    """Timed out within the 1 s: bounding each read only, the reads would have the whole
    token after 10 s, and the evidence."""
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    with (
        serving(LoopbackServer(DrippingImds)) as server,
        pytest.raises(ImdsUnavailable) as failed,
    ):
        read_instance_identity(server.url, timeout=1.0)
    assert "did not answer: timed out" in str(failed.value)


def _token(capsys, *argv: str) -> tuple[int, dict[str, str]]:
    code = main(["token", "--endpoint", "https://tokex.example.com", "--audience", "a", *argv])
    out, err = capsys.readouterr()
    assert err == ""
    return code, json.loads(out)


def test_with_instance_identity_on_a_timeout_ends_the_call_naming_the_hop_limit(
    monkeypatch, capsys
) -> None:
    """--timeout is the whole call's: IMDS reads that drip on for 10 s are cut off by it,
    and the evidence is missing (waited out, the evidence would have come, and the call
    failed at the exchange instead)."""
    use_static_credentials(monkeypatch)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    with serving(LoopbackServer(DrippingImds)) as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        code, failure = _token(capsys, "--instance-identity", "on", "--timeout", "0.8", "--json")
    assert (code, failure["input"]) == (1, "--instance-identity")
    assert "did not answer: timed out" in failure["error_description"]
    assert "--http-put-response-hop-limit 2" in failure["error_description"]


@contextlib.contextmanager
def issuer_and_imds(
    monkeypatch, imds_handler: type[QuietHandler]
) -> Iterator[tuple[FakeIssuer, LoopbackServer]]:
    """A fake issuer, and an IMDS served by `imds_handler` that the client is pointed at."""
    use_static_credentials(monkeypatch)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    with fake_issuer(expires_in=900) as issuer, serving(LoopbackServer(imds_handler)) as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        yield issuer, imds


def test_with_instance_identity_auto_an_imds_that_drips_leaves_time_for_the_exchange(
    monkeypatch, capsys
) -> None:
    """`auto` goes on without the evidence: the IMDS reads get at most half of --timeout,
    the exchange the rest, and the token comes without instance evidence (waited out, the
    evidence would have come, and no time been left for the exchange)."""
    with issuer_and_imds(monkeypatch, DrippingImds) as (issuer, _):
        code = main(
            ["token", "--endpoint", issuer.url, "--audience", "a", "--instance-identity",
             "auto", "--timeout", "1", "--json"]
        )  # fmt: skip
        out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert json.loads(out)["access_token"] == "token-1"
    assert "aws_instance_identity" not in issuer.forms[0]


class HostileImds(QuietHandler):
    """A 401 whose reason phrase retitles the terminal and turns its text red."""

    def do_PUT(self) -> None:
        self.send_response(401, "\x1b]0;PWNED-TITLE\x07\x1b[31mRED")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_with_instance_identity_auto_v_shows_what_imds_answered_escaped(
    monkeypatch, capsys
) -> None:
    """-v printed ImdsUnavailable's text, which quotes IMDS's reason phrase, raw."""
    with issuer_and_imds(monkeypatch, HostileImds) as (issuer, imds):
        argv = ["--endpoint", issuer.url, "--audience", "a", "--instance-identity", "auto", "-v"]
        code = main(["token", *argv])
        out, err = capsys.readouterr()
    assert (code, out) == (0, "token-1\n")
    assert "\x1b" not in err and "\x07" not in err
    assert (
        f"no instance identity evidence (IMDS at {imds.url}/latest/api/token did not answer:"
        " HTTP Error 401: \\x1b]0;PWNED-TITLE\\x07\\x1b[31mRED)\n"
    ) in err


@pytest.mark.parametrize(
    ("environment", "said"),
    [
        ({"AWS_EC2_METADATA_DISABLED": "true"}, "IMDS is disabled"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "169.254.169.254"}, "is not an http URL"),
    ],
)
def test_with_instance_identity_on_other_failures_say_what_they_are(
    monkeypatch, capsys, environment, said
) -> None:
    """Only a timeout names the hop limit; an endpoint without a scheme is a clear error,
    not a crash."""
    use_static_credentials(monkeypatch)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    if "AWS_EC2_METADATA_DISABLED" not in environment:
        monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    code, failure = _token(capsys, "--instance-identity", "on", "--json")
    assert (code, failure["input"]) == (1, "--instance-identity")
    assert said in failure["error_description"]
    assert "hop-limit" not in failure["error_description"]
