"""Warm invocations reuse their connections to AWS (issue 11): a TLS handshake per call
would add a round trip or two to every exchange.

A local TLS server, with a certificate made here and trusted through `SSL_CERT_FILE`
(the transports verify against the default CA store, which reads it), counts the TCP
connections it accepts while one warm adapter makes 100 calls, each inside its own
request deadline as an invocation of the handler is.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def self_signed_for_loopback(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokex test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "upstream.pem", directory / "upstream.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class CountingTlsServer(ThreadingHTTPServer):
    """HTTPS on loopback, HTTP/1.1 keep-alive, answering every POST with `answer`;
    counts the TCP connections it accepts."""

    daemon_threads = True

    def __init__(self, cert: Path, key: Path, answer: tuple[int, dict[str, str], bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._tls = context
        self.url = f"https://127.0.0.1:{self.server_address[1]}"

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self._lock:
            self.connections += 1
        return self._tls.wrap_socket(connection, server_side=True), address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK wait

    def do_POST(self) -> None:
        server: CountingTlsServer = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        server.requests += 1
        status, headers, payload = server.answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def tls_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    cert, key = self_signed_for_loopback(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default CA store: this cert alone
    return cert, key


def serving(server: CountingTlsServer) -> Iterator[CountingTlsServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def fake_sts(tls_files: tuple[Path, Path]) -> Iterator[CountingTlsServer]:
    yield from serving(
        CountingTlsServer(*tls_files, (200, {"Content-Type": "text/xml"}, STS_ANSWER))
    )


@pytest.fixture
def fake_dynamodb(tls_files: tuple[Path, Path]) -> Iterator[CountingTlsServer]:
    answer = (200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps({}).encode())
    yield from serving(CountingTlsServer(*tls_files, answer))


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
