"""client/imds.py against a loopback stand-in for IMDS: what does not answer, or answers
broken, is ImdsUnavailable (with `--instance-identity auto` the exchange goes on without
instance evidence), never half an answer taken for evidence. Real instance evidence
against the local IMDS emulator: tests/system/test_instance_evidence.py."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_issuer import FakeIssuer, fake_issuer, use_static_credentials
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex import base64url
from tokex.cli.main import main
from tokex.client import TokenClient, request_token
from tokex.client.imds import (
    ImdsUnavailable,
    encode_instance_evidence,
    imds_endpoint,
    instance_region,
    read_instance_identity,
)


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
        f"no instance identity evidence (IMDS at {imds.url}/latest/api/token answered 401"
        " \\x1b]0;PWNED-TITLE\\x07\\x1b[31mRED: it refused the session token)\n"
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


# --- what IMDS answered, or that nothing did ----------------------------------------------


class DisabledImds(QuietHandler):
    """IMDS turned off on the instance: 403 to everything (EC2 User Guide)."""

    def do_PUT(self) -> None:
        self.send_document(403, b"", {"Content-Type": "text/plain"})


class TokenRefusingImds(Imds):
    """A session token, then 401 to the GETs that bring it."""

    def do_GET(self) -> None:
        self.send_document(401, b"", {"Content-Type": "text/plain"})


@pytest.mark.parametrize(
    ("handler", "said"),
    [
        (
            DisabledImds,
            "/latest/api/token answered 403 Forbidden: IMDS is turned off on this instance"
            " (aws ec2 modify-instance-metadata-options --http-endpoint enabled) or refused"
            " the request",
        ),
        (
            TokenRefusingImds,
            "/latest/dynamic/instance-identity/document answered 401 Unauthorized: it"
            " refused the session token",
        ),
    ],
)
def test_with_instance_identity_on_a_status_imds_answered_is_named_not_off_ec2(
    monkeypatch, capsys, handler, said
) -> None:
    """IMDS answered: it is there (on EC2), and saying it did not answer, or that this is
    off EC2, sent the reader the wrong way."""
    with issuer_and_imds(monkeypatch, handler) as (issuer, imds):
        code = main(
            ["token", "--endpoint", issuer.url, "--audience", "a", "--instance-identity",
             "on", "--json"]
        )  # fmt: skip
        failure = json.loads(capsys.readouterr().out)
    # An answer is AWS's refusal, not a network error: scripts read the code.
    assert (code, failure["error"], failure["input"]) == (1, "aws_error", "--instance-identity")
    assert failure["error_description"] == f"--instance-identity on: IMDS at {imds.url}{said}"
    assert issuer.exchanges == 0


def test_with_instance_identity_auto_v_says_why_imds_gave_no_evidence(monkeypatch, capsys) -> None:
    with issuer_and_imds(monkeypatch, DisabledImds) as (issuer, imds):
        argv = ["--endpoint", issuer.url, "--audience", "a", "--instance-identity", "auto", "-v"]
        code = main(["token", *argv])
        out, err = capsys.readouterr()
    assert (code, out) == (0, "token-1\n")
    assert f"no instance identity evidence (IMDS at {imds.url}/latest/api/token answered 403" in err
    assert "aws_instance_identity" not in issuer.forms[0]


def test_with_instance_identity_on_nothing_listening_suggests_auto_off_ec2(
    monkeypatch, capsys
) -> None:
    """A connection refused is what off EC2 looks like: the hint stays (no hop limit: that
    is for a timeout)."""
    use_static_credentials(monkeypatch)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{port}")
        code, failure = _token(capsys, "--instance-identity", "on", "--json")
    assert (code, failure["error"], failure["input"]) == (1, "unreachable", "--instance-identity")
    description = failure["error_description"]
    assert "did not answer" in description and "Connection refused" in description
    assert description.endswith("(off EC2, use --instance-identity auto or off)")


# --- where IMDS is: as botocore finds it for the instance role's credentials --------------


@pytest.fixture
def no_imds_settings(monkeypatch, tmp_path) -> Path:
    """No IMDS setting from this machine; the config file the test writes."""
    for name in (
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
        "AWS_IMDS_USE_IPV6",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config"
    config.write_text("[default]\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    return config


@pytest.mark.parametrize(
    ("environment", "config", "endpoint"),
    [
        ({}, "", "http://169.254.169.254"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}, "", "http://[fd00:ec2::254]"),
        ({}, "ec2_metadata_service_endpoint_mode = ipv6", "http://[fd00:ec2::254]"),
        ({}, "ec2_metadata_service_endpoint = http://127.0.0.9:1/", "http://127.0.0.9:1"),
        (
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.8:1"},
            "ec2_metadata_service_endpoint = http://127.0.0.9:1",
            "http://127.0.0.8:1",
        ),
        (  # an endpoint named wins over the mode, as in botocore
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"},
            "ec2_metadata_service_endpoint = http://127.0.0.9:1",
            "http://127.0.0.9:1",
        ),
    ],
)
def test_the_endpoint_is_the_one_botocore_reads_credentials_from(
    monkeypatch, no_imds_settings, environment, config, endpoint
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    no_imds_settings.write_text(f"[default]\n{config}\n")
    assert imds_endpoint() == endpoint


def test_an_endpoint_mode_that_is_no_mode_is_unavailable_saying_so(
    monkeypatch, no_imds_settings
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "ipv5")
    with pytest.raises(ImdsUnavailable) as failed:
        imds_endpoint()
    assert "cannot tell which IMDS endpoint to use" in str(failed.value)
    assert "ipv5" in str(failed.value)


def test_tokex_token_reads_the_imds_the_profile_names(
    monkeypatch, capsys, no_imds_settings
) -> None:
    """`ec2_metadata_service_endpoint` of the profile in use (AWS_PROFILE): where botocore
    would read the instance role's credentials, the evidence comes from too."""
    use_static_credentials(monkeypatch)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    with fake_issuer() as issuer, serving(LoopbackServer(Imds)) as imds:
        no_imds_settings.write_text(
            f"[default]\n[profile on-ec2]\nec2_metadata_service_endpoint = {imds.url}\n"
        )
        monkeypatch.setenv("AWS_CONFIG_FILE", str(no_imds_settings))
        monkeypatch.setenv("AWS_PROFILE", "on-ec2")
        code = main(
            ["token", "--endpoint", issuer.url, "--audience", "a", "--instance-identity", "on"]
        )
        out, err = capsys.readouterr()
    assert (code, out, err) == (0, "token-1\n", "")
    [form] = issuer.forms
    sent = json.loads(base64url.decode(form["aws_instance_identity"][0]))
    assert sent["document"] == '{"instanceId": "i-0123456789abcdef0"}'


# --- the Region signed for: the instance's, when none is configured ------------------------


class RegionalImds(Imds):
    """An instance of cn-north-1 (aws-cn): EC2 sets no AWS_REGION there."""

    def do_GET(self) -> None:
        document = {"instanceId": "i-0123456789abcdef0", "region": "cn-north-1"}
        self.send_document(200, json.dumps(document).encode(), {"Content-Type": "text/plain"})


def signed_url(form: dict[str, list[str]]) -> str:
    return json.loads(base64url.decode(form["subject_token"][0]))["url"]


@pytest.mark.parametrize(
    ("region_variable", "signed_for"),
    [
        (None, "https://sts.cn-north-1.amazonaws.com.cn/"),
        ("cn-northwest-1", "https://sts.cn-northwest-1.amazonaws.com.cn/"),  # configured wins
    ],
)
def test_tokex_token_signs_for_the_instances_region_when_none_is_configured(
    monkeypatch, capsys, region_variable, signed_for
) -> None:
    """Signed for us-east-1, an aws-cn or aws-us-gov instance's request was refused by a
    deployment that serves its partition only."""
    with issuer_and_imds(monkeypatch, RegionalImds) as (issuer, _):
        monkeypatch.delenv("AWS_REGION")
        if region_variable:
            monkeypatch.setenv("AWS_REGION", region_variable)
        argv = ["--endpoint", issuer.url, "--audience", "a", "--instance-identity", "on", "-v"]
        code = main(["token", *argv])
        out, err = capsys.readouterr()
    assert (code, out) == (0, "token-1\n")
    [form] = issuer.forms
    assert signed_url(form) == signed_for
    region = region_variable or "cn-north-1"
    assert f"sending a GetCallerIdentity request signed for {region}\n" in err


def test_request_token_signs_for_the_region_of_the_instance_evidence(monkeypatch) -> None:
    use_static_credentials(monkeypatch)
    monkeypatch.delenv("AWS_REGION")
    document = json.dumps({"instanceId": "i-0123456789abcdef0", "region": "us-gov-west-1"})
    evidence = encode_instance_evidence({"document": document, "rsa2048": "c2ln"})
    with fake_issuer() as issuer:
        request_token(issuer.url, "a", instance_evidence=evidence)
        TokenClient(issuer.url, instance_evidence=evidence).token("a")
        request_token(issuer.url, "a")  # no instance evidence: the aws partition's default
    assert [signed_url(form) for form in issuer.forms] == [
        "https://sts.us-gov-west-1.amazonaws.com/",
        "https://sts.us-gov-west-1.amazonaws.com/",
        "https://sts.us-east-1.amazonaws.com/",
    ]


@pytest.mark.parametrize(
    "document",
    ['{"region": "cn-north-1\\n"}', '{"region": 7}', '["cn-north-1"]', "not json", "{}"],
)
def test_a_document_without_a_region_name_names_no_region(document) -> None:
    evidence = encode_instance_evidence({"document": document, "rsa2048": "c2ln"})
    assert instance_region(evidence) is None
    assert instance_region("not base64url!") is None
