"""The emulator's subprocess binds a port of the OS's choosing itself and names its URL
(local/emulator.py): emulators started side by side never share a port, and each URL
leads to its own process's state; moto's own API answers only its admin token."""

from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tokex.local.emulator import SubprocessMotoServer, set_signature_checking
from tokex.local.moto_fixes import ADMIN_HEADER


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
