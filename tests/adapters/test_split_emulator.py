"""The benchmark's emulator copies itself into a second process (benchmarks/split_emulator.py):
the copy knows every identity made before the fork and still checks SigV4 with it, shares
nothing made afterwards, serves requests at once, and ends with the original."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError

from benchmarks import split_emulator
from benchmarks.aws_proxy import ProxyProcess
from tokex.local.emulator import SubprocessMotoServer, set_signature_checking

REGION = "us-east-1"
TABLE = "state"


def _aws(service: str, url: str, key: str, secret: str):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def _client(url: str, key: str, secret: str):
    return _aws("dynamodb", url, key, secret)


def _kms(url: str, key: str, secret: str):
    return _aws("kms", url, key, secret)


def _accepts_connections(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def emulator():
    server = SubprocessMotoServer(module=split_emulator.__name__)
    try:
        admin = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", endpoint_url=server.url, region_name=REGION, **admin)
        iam.create_user(UserName="service")
        iam.put_user_policy(
            UserName="service",
            PolicyName="tables",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": ["dynamodb:*", "kms:*"], "Resource": "*"}
                    ],
                }
            ),
        )
        key = iam.create_access_key(UserName="service")["AccessKey"]
        _client(server.url, "setup", "setup").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        set_signature_checking(server.url, True, admin_token=server.admin_token)
        yield server, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.stop()


def test_the_copy_checks_signatures_with_the_identities_made_before_it(emulator) -> None:
    server, key, secret = emulator
    copy = split_emulator.fork_copy(server.url)
    assert copy != server.url and copy.startswith("http://127.0.0.1:")
    _client(copy, key, secret).put_item(TableName=TABLE, Item={"id": {"S": "a"}})
    with pytest.raises(ClientError) as refused:
        _client(copy, key, "not-the-secret").put_item(TableName=TABLE, Item={"id": {"S": "b"}})
    # In JSON, as DynamoDB answers them (tokex.local.moto_fixes), in the copy too.
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(ClientError) as unknown:
        _client(copy, "AKIAUNKNOWNUNKNOWN00", secret).list_tables()
    assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert unknown.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_what_changes_after_the_fork_is_not_shared(emulator) -> None:
    server, key, secret = emulator
    copy = split_emulator.fork_copy(server.url)
    _client(copy, key, secret).put_item(TableName=TABLE, Item={"id": {"S": "only-in-copy"}})
    original = _client(server.url, key, secret)
    assert "Item" not in original.get_item(TableName=TABLE, Key={"id": {"S": "only-in-copy"}})


def test_the_copy_serves_concurrent_requests(emulator) -> None:
    server, key, secret = emulator
    copy = _client(split_emulator.fork_copy(server.url), key, secret)

    def put(n: int) -> None:
        copy.put_item(
            TableName=TABLE,
            Item={"id": {"S": f"item#{n}"}},
            ConditionExpression="attribute_not_exists(id)",
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(32)))
    assert copy.scan(TableName=TABLE, Select="COUNT")["Count"] == 32


def test_only_a_post_forks(emulator) -> None:
    server, _key, _secret = emulator
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.url + split_emulator.FORK_PATH, timeout=10)
    assert refused.value.code == 405


def _gone_within(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _accepts_connections(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _accepts_connections(url)


def test_the_copy_ends_with_the_original(emulator) -> None:
    """SIGTERM (how SubprocessMotoServer stops it): the original ends its copies and
    waits for them before it exits, so they are gone once `stop` returns."""
    server, _key, _secret = emulator
    copy = split_emulator.fork_copy(server.url)
    assert _accepts_connections(copy)
    server.stop()
    assert not _accepts_connections(copy)


def test_a_copy_whose_original_was_killed_exits(emulator) -> None:
    """SIGKILL gives the original no chance to end its copies: each notices alone."""
    server, _key, _secret = emulator
    copy = split_emulator.fork_copy(server.url)
    server._process.kill()
    server._process.wait()
    assert _gone_within(copy, 5)


def test_the_proxy_sends_dynamodb_to_the_copy_and_the_rest_to_the_original(emulator) -> None:
    server, key, secret = emulator
    copy = split_emulator.fork_copy(server.url)
    proxy = ProxyProcess(server.url)
    try:
        proxy.send_dynamodb_to(copy)
        _client(proxy.url, key, secret).put_item(TableName=TABLE, Item={"id": {"S": "routed"}})
        _kms(proxy.url, key, secret).create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")
        calls = proxy.take()
    finally:
        proxy.stop()
    routed = {"id": {"S": "routed"}}
    assert "Item" in _client(copy, key, secret).get_item(TableName=TABLE, Key=routed)
    assert "Item" not in _client(server.url, key, secret).get_item(TableName=TABLE, Key=routed)
    assert len(_kms(server.url, key, secret).list_keys()["Keys"]) == 1
    assert _kms(copy, key, secret).list_keys()["Keys"] == []
    assert calls == {"dynamodb:PutItem": 1, "kms:CreateKey": 1}


@pytest.mark.parametrize("missing", [("/proc/self/fd",), ("/proc/self/fd", "/dev/fd")])
def test_the_copy_finds_its_descriptors_without_proc(monkeypatch, missing) -> None:
    """Linux lists them in /proc/self/fd, macOS in /dev/fd; else the low numbers are tried."""
    import os

    listdir = os.listdir

    def without(path: str):
        if path in missing:
            raise FileNotFoundError(path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", without)
    with socket.socket() as held:
        found = split_emulator._open_descriptors()
        assert held.fileno() in found
    if len(missing) == 2:
        assert found == list(range(3, 1024))
