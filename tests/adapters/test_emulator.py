"""The emulator's subprocess binds a port of the OS's choosing itself and names its URL
(local/emulator.py): emulators started side by side never share a port, and each URL
leads to its own process's state; moto's own API answers only its admin token; what a
hostile local client sends is answered as AWS would, never with a traceback on the
console (local/moto_fixes.py "Crashes")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tokex.local.emulator import SubprocessMotoServer, first_line, set_signature_checking
from tokex.local.moto_fixes import ADMIN_HEADER, CONSOLE_TEXT_CHARS


def _s3(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_emulators_started_at_once_each_serve_their_own_state() -> None:
    with ThreadPoolExecutor(2) as pool:
        servers = list(pool.map(lambda _: SubprocessMotoServer(), range(2)))
    try:
        assert len({server.url for server in servers}) == 2
        for number, server in enumerate(servers):
            s3 = _s3(server.url)
            s3.create_bucket(Bucket=f"bucket-{number}")
            assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [f"bucket-{number}"]
    finally:
        for server in servers:
            server.stop()
    assert all(server._process.returncode is not None for server in servers)


def _moto_api(url: str, path: str, *, token: str | None, data: bytes | None = None) -> int:
    headers = {"Content-Type": "text/plain"}
    if token is not None:
        headers[ADMIN_HEADER] = token
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_the_emulators_own_api_needs_its_admin_token() -> None:
    """Any local process can reach a loopback port: without the token none may switch
    signature checks off, reset the emulator or dump its state (every access key in it)."""
    server = SubprocessMotoServer()
    try:
        s3 = _s3(server.url)
        s3.create_bucket(Bucket="kept")
        set_signature_checking(server.url, True, admin_token=server.admin_token)
        for path, data in [
            ("/moto-api/reset-auth", b"inf"),
            ("/moto-api/reset", b""),
            ("/moto-api/data.json", None),
            ("/moto-api/", None),
        ]:
            for token in (None, "not-the-token", server.admin_token[:-1]):
                assert _moto_api(server.url, path, token=token, data=data) == 403, (path, token)
        # Signature checks are still on (an unsigned-by-a-known-key call is refused) and
        # nothing was reset.
        with pytest.raises(ClientError):
            s3.list_buckets()
        set_signature_checking(server.url, False, admin_token=server.admin_token)
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kept"]
        assert _moto_api(server.url, "/moto-api/", token=server.admin_token) == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("headers", "body", "answer"),
    [
        (
            {"Content-Type": "application/x-www-form-urlencoded"},
            b"Action=GetCallerIdentity&Version=2011-06-15",
            b"<Code>MissingAuthenticationToken</Code>",
        ),
        (
            {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"},
            b"{}",
            b'"__type": "MissingAuthenticationTokenException"',
        ),
    ],
)
def test_an_unsigned_request_is_403_not_a_crash(
    headers: dict[str, str], body: bytes, answer: bytes
) -> None:
    """moto read `Authorization` without looking for it: an unsigned request was a 500 and
    a traceback on `tokex local`'s console, printed for any local process that asked."""
    server = SubprocessMotoServer()
    try:
        set_signature_checking(server.url, True, admin_token=server.admin_token)
        request = urllib.request.Request(server.url + "/", data=body, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        assert answer in refused.value.read()
    finally:
        server.stop()


# `tokex local`'s own emulator (ThreadMotoServer: moto in a thread, its werkzeug log at
# ERROR), in a process of its own (moto's signature switch is process-wide) whose stdout,
# once the URL and admin token are out, and stderr are the console: a file.
_CONSOLE_EMULATOR = """
import os, threading
from tokex.local.emulator import ThreadMotoServer
server = ThreadMotoServer()
print(server.url, server.admin_token, flush=True)
os.dup2(2, 1)
threading.Event().wait()
"""


@dataclass
class ConsoleEmulator:
    url: str
    admin_token: str
    process: subprocess.Popen[str]
    console_path: Path

    def console(self) -> str:
        """Everything the emulator wrote, once it has stopped (nothing is still on its way)."""
        self.process.terminate()
        self.process.wait(timeout=10)
        return self.console_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def console_emulator(tmp_path: Path) -> Iterator[ConsoleEmulator]:
    """The emulator as `tokex local` runs it, with its SigV4 checks on."""
    console_path = tmp_path / "console"
    with console_path.open("w") as console:
        process = subprocess.Popen(
            [sys.executable, "-c", _CONSOLE_EMULATOR],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=console,
            env={**os.environ, "MOTO_CALL_RESET_API": "false"},
            text=True,
        )
    try:
        announced = first_line(process.stdout, time.monotonic() + 60).split()
        assert len(announced) == 2, console_path.read_text()
        url, admin_token = announced
        set_signature_checking(url, True, admin_token=admin_token)
        yield ConsoleEmulator(url, admin_token, process, console_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """A plain HTTP client's POST: the status and body of the answer."""
    request = urllib.request.Request(url + "/", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def _printable(console: str) -> bool:
    return all(c.isprintable() or c == "\n" for c in console)


# Terminal escapes a local process would like on the developer's console: clear the
# screen, retitle the window, wipe the line and forge another; a C1 CSI too.
ESCAPES = "\x1b[2J\x1b]0;owned\x07\x1b[2K\x1b[1Gtokex local stopped\x9b"
_SIGNATURE = "0" * 64


def _sigv4(service: str, key: str = "AKIAIOSFODNN7EXAMPLE") -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential={key}/20250101/us-east-1/{service}/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={_SIGNATURE}"
    )


QUERY = {"Content-Type": "application/x-www-form-urlencoded"}
GET_CALLER_IDENTITY = b"Action=GetCallerIdentity&Version=2011-06-15"
KMS = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"}
DYNAMODB = {
    "Content-Type": "application/x-amz-json-1.0",
    "X-Amz-Target": "DynamoDB_20120810.ListTables",
}
INCOMPLETE_XML = (400, b"<Code>IncompleteSignature</Code>")
INCOMPLETE_JSON = (400, b'"__type": "IncompleteSignatureException"')
INCOMPLETE_DYNAMODB = (400, b'"__type": "com.amazon.coral.service#IncompleteSignatureException"')

HOSTILE_REQUESTS = [
    # Not SigV4 at all: moto's routing split the header and crashed (IndexError).
    ({**QUERY, "Authorization": "garbage"}, GET_CALLER_IDENTITY, INCOMPLETE_XML),
    ({**KMS, "Authorization": "garbage"}, b"{}", INCOMPLETE_JSON),
    ({**DYNAMODB, "Authorization": "garbage"}, b"{}", INCOMPLETE_DYNAMODB),
    ({**QUERY, "Authorization": ""}, GET_CALLER_IDENTITY, INCOMPLETE_XML),
    ({**QUERY, "Authorization": "AWS AKIAIOSFODNN7EXAMPLE:c2lnbmF0dXJl"}, b"", INCOMPLETE_XML),
    (
        {**QUERY, "Authorization": "AWS4-HMAC-SHA256 Credential=x"},
        GET_CALLER_IDENTITY,
        INCOMPLETE_XML,
    ),
    # A scope that is not one, or holds the escapes itself.
    ({**KMS, "Authorization": _sigv4("kms").replace("/kms/", "/")}, b"{}", INCOMPLETE_JSON),
    ({**KMS, "Authorization": _sigv4("k\x1b[2Jms")}, b"{}", INCOMPLETE_JSON),
    (
        {**QUERY, "Authorization": _sigv4("sts", key="AKIA\x1b[2J")},
        GET_CALLER_IDENTITY,
        INCOMPLETE_XML,
    ),
    # SigV4, but another service's scope: moto looked the target up in STS's operations
    # and its exception quoted the target, escapes and all.
    (
        {**KMS, "Authorization": _sigv4("sts"), "X-Amz-Target": "TrentService." + ESCAPES},
        b"{}",
        (400, b'"__type": "UnknownOperationException"'),
    ),
    (
        {**QUERY, "Authorization": _sigv4("sts")},
        b"Action=NoSuchAction&Version=2011-06-15",
        (400, b"<Code>InvalidAction</Code>"),
    ),
]


def test_a_malformed_authorization_is_refused_as_aws_does_and_the_console_stays_quiet(
    console_emulator: ConsoleEmulator,
) -> None:
    """moto split `Authorization` before anything checked it: a 500, and a traceback on
    `tokex local`'s console that quoted the request (raw escapes included) for any local
    process that asked."""
    answers = [_post(console_emulator.url, headers, body) for headers, body, _ in HOSTILE_REQUESTS]
    # A well-formed signature by a key the emulator does not know is still moto's to refuse.
    unknown_key = _post(console_emulator.url, {**KMS, "Authorization": _sigv4("kms")}, b"{}")
    assert console_emulator.console() == ""
    for (headers, _, (status, code)), answer in zip(HOSTILE_REQUESTS, answers, strict=True):
        assert answer[0] == status and code in answer[1], (headers, answer)
    assert unknown_key == (
        400,
        b'{"__type": "UnrecognizedClientException", '
        b'"message": "The security token included in the request is invalid."}',
    )


def test_what_escapes_moto_is_a_500_with_one_escaped_console_line(
    console_emulator: ConsoleEmulator,
) -> None:
    """An operation moto's DynamoDB handler does not have raised out of moto with the
    operation's name in its message: each is one line, its control characters escaped,
    however long the name. (Signature checks off, as while `tokex local` sets up: with
    them on, the request of any key the emulator knows gets as far.)"""
    set_signature_checking(console_emulator.url, False, admin_token=console_emulator.admin_token)
    flood = "A" * 60_000  # under the server's 64 KiB header line
    answers = [
        _post(
            console_emulator.url,
            {**DYNAMODB, "Authorization": _sigv4("dynamodb"), "X-Amz-Target": target},
            b"{}",
        )
        for target in ("DynamoDBStreams_20120810." + ESCAPES, "DynamoDB_1." + flood)
    ]
    console = console_emulator.console()
    assert "Traceback" not in console
    assert _printable(console), console
    lines = console.splitlines()
    assert len(lines) == 2, console
    assert all(line.startswith("tokex local: AWS emulator: 500 for ") for line in lines)
    assert "\\x1b[2_j\\x1b]0;owned\\x07" in lines[0]  # escaped, as moto spelled the name
    assert all(len(line) < CONSOLE_TEXT_CHARS + 100 for line in lines)
    for status, body in answers:
        assert status == 500, body
        assert b'"__type": "com.amazon.coral.service#InternalFailure"' in body
