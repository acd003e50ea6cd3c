"""`tokex local`'s own listeners besides the front, as hostile clients meet them: the
STS-compatible endpoint and the IMDS emulator (docs/local.md)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.system.local_federation import federation
from tokex.local import sts_endpoint
from tokex.local.imds import TOKEN_HEADER, TTL_HEADER
from tokex.local.sts_endpoint import StsEndpoint


@pytest.fixture
def quick_sts(local_system, monkeypatch):
    """An STS endpoint like the system's, passing to the same emulator, whose requests
    must arrive within 1 s (the system's has 10), and whose reads may each wait 60 s (5):
    only the request's deadline can end a wait at 1 s."""
    monkeypatch.setattr(sts_endpoint, "REQUEST_SECONDS", 1)
    monkeypatch.setattr(sts_endpoint, "READ_TIMEOUT_SECONDS", 60)
    endpoint = StsEndpoint(federation(local_system).oif, local_system.deployment.endpoint_url)
    try:
        yield endpoint
    finally:
        endpoint.stop()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _read_all(sock: socket.socket, within: float) -> bytes:
    sock.settimeout(within)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# A client that the endpoint has not cut off or answered by then sends the rest of its
# request, as a slow client would: an endpoint past its 1 s (or 10 s) deadline then gets
# a whole request, and answers it rather than 408 (or rather than cutting it off).
LATE_REST_SECONDS = {"sts": 5.0, "imds": 50.0}


def test_a_body_shorter_than_its_length_is_408_not_an_internal_failure(quick_sts) -> None:
    """It waited out a 5 s read and answered 500 InternalFailure, printing a bug line."""
    with socket.create_connection(("127.0.0.1", _port(quick_sts.url))) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nAction=")
        sock.settimeout(LATE_REST_SECONDS["sts"])
        try:
            first = sock.recv(65536)
        except TimeoutError:  # no answer yet: the rest of the body, late
            sock.sendall(b"A=1")
            first = b""
        answer = first + _read_all(sock, within=10)
    # The deadline's answer, before the body's last bytes came: not an answer to the body.
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"<Code>RequestTimeout</Code>" in answer


@pytest.mark.parametrize("which", ["sts", "imds"])
def test_a_request_trickled_in_does_not_hold_a_thread(local_system, quick_sts, which) -> None:
    """A byte every 0.3 s kept the connection, and its thread, for ever: only each read
    had a timeout. (The IMDS emulator's deadline is the system's own, 10 s.)"""
    url = quick_sts.url if which == "sts" else local_system.imds.url
    deadline = 1 if which == "sts" else 10
    answer = b""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", _port(url))) as sock:
        try:
            sock.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\nX-Long: ")
            while time.monotonic() - started < LATE_REST_SECONDS[which]:
                sock.sendall(b"a")
                time.sleep(0.3)
            sock.sendall(b"\r\n\r\n")  # still connected: the rest, late
            answer = _read_all(sock, within=10)
        except (BrokenPipeError, ConnectionResetError):
            pass  # cut off while sending: what the test wants
    # Cut off by the deadline, not before it, and never answered.
    assert time.monotonic() - started >= deadline
    assert answer == b"", answer


def test_an_unsigned_request_through_the_sts_endpoint_is_403(local_system) -> None:
    """Passed to the emulator, it was a 500 and a traceback on the console."""
    request = urllib.request.Request(
        federation(local_system).sts_url + "/",
        data=b"Action=GetCallerIdentity&Version=2011-06-15",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert b"<Code>MissingAuthenticationToken</Code>" in refused.value.read()


@pytest.mark.parametrize(
    ("headers", "body", "answer"),
    [
        (
            {"Content-Type": "application/x-www-form-urlencoded", "Authorization": "garbage"},
            b"Action=GetCallerIdentity&Version=2011-06-15",
            b"<Code>IncompleteSignature</Code>",
        ),
        (
            {
                # SigV4 for STS, with a KMS target: moto's exception quoted the target.
                "Content-Type": "application/x-amz-json-1.1",
                "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/"
                "us-east-1/sts/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
                "X-Amz-Target": "TrentService.\x1b[2J\x1b]0;owned\x07",
            },
            b"{}",
            b'"__type": "UnknownOperationException"',
        ),
    ],
)
def test_a_malformed_signature_through_the_sts_endpoint_is_400_not_a_crash(
    local_system, capfd, headers: dict[str, str], body: bytes, answer: bytes
) -> None:
    """Passed to the emulator, it was a 500 and a traceback on the console; the endpoint
    passes the emulator's refusal on and prints nothing itself."""
    capfd.readouterr()
    request = urllib.request.Request(
        federation(local_system).sts_url + "/", data=body, headers=headers
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert answer in refused.value.read()
    assert capfd.readouterr() == ("", "")


def _imds(url: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, ""


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({TTL_HEADER: "abc"}, 400),
        ({TTL_HEADER: "0"}, 400),
        ({TTL_HEADER: "21601"}, 400),
        ({TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.1"}, 403),
        ({TTL_HEADER: "21600"}, 200),
    ],
)
def test_imds_token_puts_are_checked_as_imds_checks_them(local_system, headers, status) -> None:
    url = local_system.imds.url
    assert _imds(url, "PUT", "/latest/api/token", headers)[0] == status


def test_an_imds_session_token_expires_with_its_ttl(local_system) -> None:
    url = local_system.imds.url
    status, token = _imds(url, "PUT", "/latest/api/token", {TTL_HEADER: "1"})
    assert status == 200
    path = "/latest/dynamic/instance-identity/document"
    assert _imds(url, "GET", path, {TOKEN_HEADER: token})[0] == 200
    time.sleep(1.1)
    assert _imds(url, "GET", path, {TOKEN_HEADER: token})[0] == 401
