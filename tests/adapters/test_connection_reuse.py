"""Warm invocations reuse their connections to AWS (issue 11): a TLS handshake per call
would add a round trip or two to every exchange.

A local TLS server, with a certificate from a throwaway CA (tests/support/tls.py) trusted
through `SSL_CERT_FILE` (the transports verify against the default CA store, which reads
it), counts the TCP connections it accepts while one warm adapter makes 100 calls, each
inside its own request deadline as an invocation of the handler is.
"""

from __future__ import annotations

import datetime
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.loopback import QuietHandler, serving
from tests.support.tls import HttpsServer, make_pki
from tokex import deadline
from tokex.adapters import aws_clients
from tokex.adapters.sts import StsForwarder
from tokex.evidence.sigv4_request import STS_BODY, StsRequest, verify_sts_request
from tokex.evidence.sts_endpoints import StsEndpoints

CALLS = 100
ISSUER = "https://auth.example.com"
HOST = "sts.us-east-1.amazonaws.com"
ACCOUNT = "123456789012"
STS_ANSWER = (
    '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    f"<GetCallerIdentityResult><Arn>arn:aws:sts::{ACCOUNT}:assumed-role/worker/build-42</Arn>"
    f"<UserId>AROAEXAMPLEEXAMPLE123:build-42</UserId><Account>{ACCOUNT}</Account>"
    "</GetCallerIdentityResult></GetCallerIdentityResponse>"
).encode()


class CountingTlsServer(HttpsServer):
    """HTTPS on loopback, HTTP/1.1 keep-alive, answering every POST with `answer`; counts
    the TCP connections it accepts (`connections`) and the requests."""

    def __init__(self, tls: ssl.SSLContext, answer: tuple[int, dict[str, str], bytes]) -> None:
        super().__init__(_Handler, tls)
        self.answer = answer
        self.requests = 0


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK wait
    server: CountingTlsServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests += 1
        status, headers, payload = self.server.answer
        self.send_document(status, payload, headers)


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """The server's side of a throwaway CA, which the default CA store holds alone."""
    pki = make_pki(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    return pki.server


@pytest.fixture
def fake_sts(tls: ssl.SSLContext) -> Iterator[CountingTlsServer]:
    answer = (200, {"Content-Type": "text/xml"}, STS_ANSWER)
    with serving(CountingTlsServer(tls, answer)) as server:
        yield server


@pytest.fixture
def fake_dynamodb(tls: ssl.SSLContext) -> Iterator[CountingTlsServer]:
    answer = (200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps({}).encode())
    with serving(CountingTlsServer(tls, answer)) as server:
        yield server


def signed_request() -> StsRequest:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Tokex-Issuer": ISSUER}
    request = AWSRequest(method="POST", url=f"https://{HOST}/", data=STS_BODY, headers=headers)
    SigV4Auth(Credentials("AKIAIOSFODNN7EXAMPLE", "secret"), "sts", "us-east-1").add_auth(request)
    signed = {
        "method": "POST",
        "url": f"https://{HOST}/",
        "headers": dict(request.headers.items()),
        "body": STS_BODY,
    }
    return verify_sts_request(
        signed,
        issuer=ISSUER,
        endpoints=StsEndpoints(["aws"]),
        now=datetime.datetime.now(datetime.UTC),
    )


def test_100_forwarded_sts_calls_use_one_connection(fake_sts: CountingTlsServer) -> None:
    forwarder = StsForwarder(fake_sts.url)  # built once per cold start, as wiring.py does
    request = signed_request()
    for _ in range(CALLS):
        with deadline.request_deadline(5):  # one invocation
            assert forwarder.get_caller_identity(request).account == ACCOUNT
    assert (fake_sts.requests, fake_sts.connections) == (CALLS, 1)


def test_100_hot_path_dynamodb_calls_use_one_connection(fake_dynamodb: CountingTlsServer) -> None:
    """The botocore clients send through one process-wide keep-alive pool
    (adapters/aws_clients.py); KMS goes the same way."""
    dynamodb = aws_clients.client(
        "dynamodb",
        endpoint_url=fake_dynamodb.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    item = {"id": {"S": "sig#x"}}
    for _ in range(CALLS):
        with deadline.request_deadline(5):
            dynamodb.put_item(TableName="state", Item=item)
    assert (fake_dynamodb.requests, fake_dynamodb.connections) == (CALLS, 1)
