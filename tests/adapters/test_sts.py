"""StsForwarder against a real moto STS (signatures checked) and a misbehaving fake upstream.

The moto server runs as a subprocess (tokex.local.emulator): moto's "check signatures"
switch is process-wide, and a server process of our own keeps it out of every other test
and needs no teardown of the switch. Principals are created before checks are switched on.

Attack group 6 (docs/security.md "Known attacks") runs against a tiny http.server on
loopback reached through `connect_override`, exactly as local mode reaches moto.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tokex.adapters.sts import StsForwarder
from tokex.errors import InvalidGrant, TemporarilyUnavailable, TokexError
from tokex.evidence.sigv4_request import STS_BODY, StsRequest, verify_sts_request
from tokex.evidence.sts_endpoints import StsEndpoints
from tokex.local.emulator import SubprocessMotoServer, set_signature_checking

ISSUER = "https://auth.example.com"
HOST = "sts.us-east-1.amazonaws.com"
ACCOUNT = "123456789012"  # moto's default account
MARKER = "UPSTREAM-BODY-MARKER"


def verified_request(
    creds: Credentials, *, tamper: Callable[[dict[str, str]], None] | None = None
) -> StsRequest:
    """Sign like a workload (botocore), let `tamper` change the signed headers, then pass
    tokex's own rules."""
    request = AWSRequest(
        method="POST",
        url=f"https://{HOST}/",
        data=STS_BODY,
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Tokex-Issuer": ISSUER},
    )
    SigV4Auth(creds, "sts", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    if tamper is not None:
        tamper(headers)
    signed = {"method": "POST", "url": f"https://{HOST}/", "headers": headers, "body": STS_BODY}
    return verify_sts_request(
        signed, issuer=ISSUER, endpoints=StsEndpoints(["aws"]), now=datetime.now(UTC)
    )


# --- against moto ---------------------------------------------------------------------


@dataclass(frozen=True)
class MotoStsWorld:
    url: str
    user: Credentials
    session: Credentials


@pytest.fixture(scope="module")
def moto_sts() -> Iterator[MotoStsWorld]:
    """A moto server subprocess with an IAM user and a role session, then SigV4 checks on.

    A subprocess rather than ThreadedMotoServer: the auth switch is process-wide, so
    turning it on in this process would leak into in-process moto tests.
    """
    server = SubprocessMotoServer()
    try:
        kwargs: dict[str, Any] = {
            "endpoint_url": server.url,
            "region_name": "us-east-1",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        iam, sts = boto3.client("iam", **kwargs), boto3.client("sts", **kwargs)
        iam.create_user(UserName="alice", Path="/team/")
        key = iam.create_access_key(UserName="alice")["AccessKey"]
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:*"}],
        }
        role = iam.create_role(
            RoleName="worker", Path="/svc/", AssumeRolePolicyDocument=json.dumps(trust)
        )
        session = sts.assume_role(RoleArn=role["Role"]["Arn"], RoleSessionName="build-42")
        set_signature_checking(server.url, on=True, admin_token=server.admin_token)
        c = session["Credentials"]
        yield MotoStsWorld(
            url=server.url,
            user=Credentials(key["AccessKeyId"], key["SecretAccessKey"]),
            session=Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]),
        )
    finally:
        server.stop()


def test_iam_user_identity(moto_sts: MotoStsWorld) -> None:
    caller = StsForwarder(moto_sts.url).get_caller_identity(verified_request(moto_sts.user))
    assert caller.principal_arn == caller.arn == f"arn:aws:iam::{ACCOUNT}:user/team/alice"
    assert (caller.account, caller.partition, caller.session_name) == (ACCOUNT, "aws", None)
    assert caller.principal_id == caller.user_id and ":" not in caller.user_id


def test_assumed_role_session_identity(moto_sts: MotoStsWorld) -> None:
    caller = StsForwarder(moto_sts.url).get_caller_identity(verified_request(moto_sts.session))
    assert caller.arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/worker/build-42"
    # STS never reveals the role path (/svc/): the principal is the path-less role ARN.
    assert caller.principal_arn == f"arn:aws:iam::{ACCOUNT}:role/worker"
    assert caller.session_name == "build-42"
    assert caller.principal_id.startswith("AROA")
    assert caller.user_id == f"{caller.principal_id}:build-42"


def test_wrong_secret_is_refused(moto_sts: MotoStsWorld) -> None:
    creds = Credentials(moto_sts.user.access_key, "not-the-secret")
    with pytest.raises(InvalidGrant, match="STS refused the signature: SignatureDoesNotMatch"):
        StsForwarder(moto_sts.url).get_caller_identity(verified_request(creds))


def test_tampered_signature_is_refused(moto_sts: MotoStsWorld) -> None:
    req = verified_request(moto_sts.session)
    headers = dict(req.headers)
    flipped = req.signature[:-1] + ("0" if req.signature[-1] != "0" else "1")
    headers["Authorization"] = headers["Authorization"].replace(req.signature, flipped)
    tampered = StsRequest(**{**req.__dict__, "headers": tuple(headers.items())})
    with pytest.raises(InvalidGrant, match="SignatureDoesNotMatch"):
        StsForwarder(moto_sts.url).get_caller_identity(tampered)


def test_tampered_signed_header_is_refused(moto_sts: MotoStsWorld) -> None:
    def another_second(headers: dict[str, str]) -> None:
        # From the date it was signed with (a second signing could land on the very second
        # chosen), and within its day (the scope's date must still match).
        signed_at = datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        step = timedelta(seconds=1 if signed_at.time() == dt_time(0) else -1)
        headers["X-Amz-Date"] = f"{signed_at + step:%Y%m%dT%H%M%SZ}"

    req = verified_request(moto_sts.user, tamper=another_second)
    with pytest.raises(InvalidGrant, match="SignatureDoesNotMatch"):
        StsForwarder(moto_sts.url).get_caller_identity(req)


def test_unknown_access_key_is_refused(moto_sts: MotoStsWorld) -> None:
    creds = Credentials("AKIAUNKNOWNUNKNOWN00", "secret")
    with pytest.raises(InvalidGrant, match="STS refused the signature: InvalidClientTokenId"):
        StsForwarder(moto_sts.url).get_caller_identity(verified_request(creds))


# --- group 6: a misbehaving upstream --------------------------------------------------


class FakeSts:
    """Answers every POST with `response` after `delay` seconds (or at once once `release`
    is set: at `stop` at the latest); records what it got."""

    def __init__(self) -> None:
        self.response: tuple[int, dict[str, str], bytes] = (200, {}, b"")
        self.delay = 0.0
        self.stall_body = False
        self.release = threading.Event()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeStsHandler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval keeps shutdown() (once per test) from costing 0.5 s.
        serve = {"poll_interval": 0.02}
        threading.Thread(target=self._server.serve_forever, kwargs=serve, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


class _FakeStsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        fake: FakeSts = self.server.fake  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        fake.received.append((dict(self.headers.items()), body))
        fake.release.wait(fake.delay)
        status, headers, payload = fake.response
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload) + 100 * fake.stall_body))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
            if fake.stall_body:
                time.sleep(2)
        except OSError:  # the client gave up first: that is the point of some cases
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_sts() -> Iterator[FakeSts]:
    fake = FakeSts()
    yield fake
    fake.stop()


def result_xml(arn: str, user_id: str, account: str = ACCOUNT, results: int = 1) -> bytes:
    result = (
        f"<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>{user_id}</UserId>"
        f"<Account>{account}</Account></GetCallerIdentityResult>"
    )
    return (
        '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"{result * results}<ResponseMetadata><RequestId>{MARKER}</RequestId>"
        "</ResponseMetadata></GetCallerIdentityResponse>"
    ).encode()


def error_xml(code: str) -> bytes:
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
        f"<Type>Sender</Type><Code>{code}</Code><Message>{MARKER}</Message></Error>"
        "</ErrorResponse>"
    ).encode()


ROLE_ARN = f"arn:aws:sts::{ACCOUNT}:assumed-role/worker/build-42"
ROLE_USER_ID = "AROAEXAMPLEEXAMPLE123:build-42"
XML = {"Content-Type": "text/xml"}
BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    b"<GetCallerIdentityResult><Arn>&lol3;</Arn></GetCallerIdentityResult>"
    b"</GetCallerIdentityResponse>"
)
XXE = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
JSON_FORGERY = json.dumps(
    {"GetCallerIdentityResponse": {"GetCallerIdentityResult": {"Arn": ROLE_ARN, "x": MARKER}}}
).encode()
HTML = f"<html><body><h1>502 Bad Gateway</h1>{MARKER}</body></html>".encode()

HTML_TYPE = {"Content-Type": "text/html"}
NOT_ACCEPTED = "only IAM roles and IAM users can exchange tokens (not root or federated users)"
GOOD = result_xml(ROLE_ARN, ROLE_USER_ID)

STS_503 = "sts GetCallerIdentity"
# id -> (status, headers, body, the audit reason it must be refused for)
UPSTREAM_CASES: dict[str, tuple[int, dict[str, str], bytes, str]] = {
    "redirect-302": (302, {"Location": "https://evil.example/"}, HTML, "sts_status:302"),
    "redirect-301": (301, {"Location": "http://127.0.0.1:1/"}, b"", "sts_status:301"),
    "json-body": (200, {"Content-Type": "application/json"}, JSON_FORGERY, "sts_content_type"),
    "json-labelled-xml": (200, XML, JSON_FORGERY, "sts_response_malformed"),
    "html-page": (200, HTML_TYPE, HTML, "sts_content_type"),
    "xml-labelled-html": (200, HTML_TYPE, GOOD, "sts_content_type"),
    "two-results": (200, XML, result_xml(ROLE_ARN, ROLE_USER_ID, results=2), "sts_result_count"),
    "entity-bomb": (200, XML, BOMB, "sts_response_malformed"),
    "external-entity": (200, XML, XXE, "sts_response_malformed"),
    "12-mb-body": (200, XML, b"<" + MARKER.encode() * 600_000, "sts_response_too_large:200"),
    "truncated-xml": (200, XML, GOOD[:-10], "sts_response_malformed"),
    "wrong-namespace": (200, XML, GOOD.replace(b"2011-06-15", b"2099"), "sts_response_malformed"),
    "empty-arn": (200, XML, result_xml("", ROLE_USER_ID), "sts_result_arn"),
    "short-account": (200, XML, result_xml(ROLE_ARN, ROLE_USER_ID, "12345"), "sts_result_values"),
    "other-account": (200, XML, result_xml(ROLE_ARN, ROLE_USER_ID, "9" * 12), "sts_arn_account"),
    "other-partition": (
        200,
        XML,
        result_xml(ROLE_ARN.replace(":aws:", ":aws-cn:"), ROLE_USER_ID),
        "sts_arn_partition",
    ),
    "other-session": (200, XML, result_xml(ROLE_ARN, "AROAX:other"), "sts_user_id_session"),
    "bad-user-id": (200, XML, result_xml(ROLE_ARN, "bad user id"), "sts_result_values"),
    # An IAM user's UserId is its unique id alone: a session part belongs to a role.
    "user-with-session": (
        200,
        XML,
        result_xml(f"arn:aws:iam::{ACCOUNT}:user/alice", "AIDAEXAMPLEEXAMPLE123:alice"),
        "sts_user_id_user",
    ),
    "result-not-at-top": (
        200,
        XML,
        GOOD.replace(b"<GetCallerIdentityResult>", b"<x><GetCallerIdentityResult>").replace(
            b"</GetCallerIdentityResult>", b"</GetCallerIdentityResult></x>"
        ),
        "sts_result_count",
    ),
    "two-arns": (
        200,
        XML,
        GOOD.replace(b"<UserId>", f"<Arn>{ROLE_ARN}</Arn><UserId>".encode()),
        "sts_result_arn",
    ),
    "arn-with-markup": (
        200,
        XML,
        GOOD.replace(b"</Arn>", b"<b/></Arn>"),
        "sts_result_arn",
    ),
    "no-user-id": (
        200,
        XML,
        GOOD.replace(b"<UserId>", b"<Other>").replace(b"</UserId>", b"</Other>"),
        "sts_result_userid",
    ),
    "empty-account": (200, XML, result_xml(ROLE_ARN, ROLE_USER_ID, ""), "sts_result_account"),
    "root": (200, XML, result_xml(f"arn:aws:iam::{ACCOUNT}:root", ACCOUNT), "sts_principal_type"),
    "federated-user": (
        200,
        XML,
        result_xml(f"arn:aws:sts::{ACCOUNT}:federated-user/bob", f"{ACCOUNT}:bob"),
        "sts_principal_type",
    ),
    "gzip-encoded": (200, {**XML, "Content-Encoding": "gzip"}, GOOD, "sts_response_encoded"),
    "status-204": (204, XML, b"", "sts_status:204"),
    "status-404": (404, XML, error_xml("UnknownOperation"), "sts_status:404"),
    "bad-signature": (
        403,
        XML,
        error_xml("SignatureDoesNotMatch"),
        "sts_refused:403: SignatureDoesNotMatch",
    ),
    "unlisted-code": (403, XML, error_xml(MARKER), "sts_refused:403"),
    "403-html": (403, HTML_TYPE, HTML, "sts_refused:403"),
    "expired-token": (400, XML, error_xml("ExpiredToken"), "sts_refused:400: ExpiredToken"),
    # A 503's reason (the log only) keeps STS's error code, else the status, and the host.
    "throttling-400": (400, XML, error_xml("Throttling"), f"{STS_503}: Throttling ({HOST})"),
    "throttling-429": (
        429,
        XML,
        error_xml("ThrottlingException"),
        f"{STS_503}: ThrottlingException ({HOST})",
    ),
    "status-500": (500, XML, error_xml("InternalFailure"), f"{STS_503}: InternalFailure ({HOST})"),
    "502-html": (502, HTML_TYPE, HTML, f"{STS_503}: HTTP 502 ({HOST})"),
    "503-retry-after": (503, {"Retry-After": "17"}, b"", f"{STS_503}: HTTP 503 ({HOST})"),
    "500-no-code-shape": (500, XML, error_xml(MARKER), f"{STS_503}: HTTP 500 ({HOST})"),
    "502-entity-bomb": (502, XML, BOMB, f"{STS_503}: HTTP 502 ({HOST})"),
}


def expected_error(reason: str) -> tuple[type[Exception], str]:
    """The error class and exact description a caller sees for each kind of refusal."""
    if reason.startswith(STS_503):
        return TemporarilyUnavailable, "STS is unavailable or throttling; retry later"
    if reason.startswith("sts_refused"):
        _, _, code = reason.partition(": ")
        return InvalidGrant, "STS refused the signature" + (f": {code}" if code else "")
    if reason == "sts_principal_type":
        return InvalidGrant, NOT_ACCEPTED
    return InvalidGrant, "STS response could not be verified"


@pytest.mark.parametrize(
    ("asked", "answered"),
    [("17", "17"), ("0", "1"), ("60", "60"), ("99999999", "60"), ("soon", "5"), ("-3", "5")],
)
def test_sts_retry_after_is_passed_on_within_bounds(
    fake_sts: FakeSts, asked: str, answered: str
) -> None:
    """STS's own Retry-After, at least 1 s and at most 60 s (a longer one is the cap, not
    the 5 s default); one that is no number of seconds, the default."""
    fake_sts.response = (503, {"Retry-After": asked}, b"")
    with pytest.raises(TemporarilyUnavailable) as caught:
        StsForwarder(fake_sts.url).get_caller_identity(verified_request(Credentials("A" * 20, "s")))
    assert caught.value.headers() == {"Retry-After": answered}


@pytest.mark.parametrize("case", list(UPSTREAM_CASES))
def test_group6_upstream_answers(fake_sts: FakeSts, case: str) -> None:
    status, headers, body, reason = UPSTREAM_CASES[case]
    fake_sts.response = (status, headers, body)
    with pytest.raises(TokexError) as caught:
        StsForwarder(fake_sts.url).get_caller_identity(verified_request(Credentials("A" * 20, "s")))
    error, description = expected_error(reason)
    assert type(caught.value) is error
    assert caught.value.description == description
    assert caught.value.reason == reason  # refused for the intended reason
    assert MARKER not in caught.value.description and MARKER not in caught.value.reason
    if status == 503:
        assert caught.value.headers() == {"Retry-After": "17"}


def test_forwarded_request_is_rebuilt_with_our_host_and_accept(fake_sts: FakeSts) -> None:
    fake_sts.response = (200, {"Content-Type": "text/xml; charset=utf-8"}, GOOD)
    req = verified_request(Credentials("A" * 20, "s", "session-token"))
    caller = StsForwarder(fake_sts.url).get_caller_identity(req)
    assert caller.principal_arn == f"arn:aws:iam::{ACCOUNT}:role/worker"
    assert caller.principal_id == "AROAEXAMPLEEXAMPLE123"
    [(headers, body)] = fake_sts.received
    assert body == STS_BODY.encode()
    assert headers["Host"] == HOST and headers["Accept"] == "text/xml"
    for name, value in req.headers:
        assert headers[name] == value


# How late STS answers below: far past the 0.2 s read timeout given, short of the
# forwarder's default read timeout (5 s), the one it would wait out if it ignored its own.
LATE_ANSWER_SECONDS = 3.5


def test_no_answer_within_the_read_timeout(fake_sts: FakeSts) -> None:
    """STS answers a good identity, but LATE_ANSWER_SECONDS after the request: the
    forwarder has given up at its 0.2 s read timeout (503, a timeout). Waiting on, with
    its default read timeout or none, it would return the late identity instead."""
    fake_sts.response = (200, XML, GOOD)
    fake_sts.delay = LATE_ANSWER_SECONDS
    forwarder = StsForwarder(fake_sts.url, read_timeout=0.2)
    with pytest.raises(TemporarilyUnavailable, match="did not answer in time") as failed:
        forwarder.get_caller_identity(verified_request(Credentials("A" * 20, "s")))
    assert failed.value.reason == f"sts GetCallerIdentity: timeout ({HOST})"


def test_body_stalls_past_the_read_timeout(fake_sts: FakeSts) -> None:
    fake_sts.response = (200, XML, result_xml(ROLE_ARN, ROLE_USER_ID))
    fake_sts.stall_body = True
    with pytest.raises(TemporarilyUnavailable):
        StsForwarder(fake_sts.url, read_timeout=0.2).get_caller_identity(
            verified_request(Credentials("A" * 20, "s"))
        )


def test_connection_refused(refused_port: int) -> None:
    forwarder = StsForwarder(f"http://127.0.0.1:{refused_port}")
    with pytest.raises(TemporarilyUnavailable, match="could not be reached") as failed:
        forwarder.get_caller_identity(verified_request(Credentials("A" * 20, "s")))
    assert failed.value.reason == f"sts GetCallerIdentity: unreachable ({HOST})"
