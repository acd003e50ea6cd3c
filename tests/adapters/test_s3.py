"""publish_documents through the S3 adapter against moto's S3 (in process), fed from
moto's KMS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from tokex.adapters.kms import public_jwk_for_key
from tokex.adapters.s3 import S3Documents
from tokex.errors import TemporarilyUnavailable
from tokex.publish import DISCOVERY_KEY, JWKS_KEY, publish_documents
from tokex.tokens.jwks import build_jwks, discovery_document

REGION = "us-east-1"
ISSUER = "https://auth.example.com"
DISCOVERY = discovery_document(issuer=ISSUER, token_endpoint=ISSUER + "/token", algs=["ES256"])


@pytest.fixture
def aws() -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="issuer")
        yield s3, boto3.client("kms", region_name=REGION)


def new_jwk(kms: Any) -> dict[str, Any]:
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    return public_jwk_for_key(kms, key["Arn"])


def test_documents_are_published_with_their_headers(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    written = publish_documents(S3Documents(s3, "issuer"), jwks=jwks, discovery=DISCOVERY)
    assert written == [JWKS_KEY, DISCOVERY_KEY]
    for key, document in ((JWKS_KEY, jwks), (DISCOVERY_KEY, DISCOVERY)):
        stored = s3.get_object(Bucket="issuer", Key=key)
        assert stored["ContentType"] == "application/json"
        assert stored["CacheControl"] == "public, max-age=300"
        body = stored["Body"].read()
        assert json.loads(body) == document
        assert b" " not in body and b"\n" not in body  # compact, deterministic


def test_second_run_writes_nothing(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    publish_documents(S3Documents(s3, "issuer"), jwks=jwks, discovery=DISCOVERY)
    # Same content, other key order: same bytes, nothing written.
    reordered = {"keys": [dict(reversed(list(jwk.items()))) for jwk in jwks["keys"]]}
    assert (
        publish_documents(S3Documents(s3, "issuer"), jwks=reordered, discovery=dict(DISCOVERY))
        == []
    )


def test_changed_jwks_is_rewritten(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    current, following = new_jwk(kms), new_jwk(kms)
    publish_documents(S3Documents(s3, "issuer"), jwks=build_jwks([current]), discovery=DISCOVERY)
    rotated = build_jwks([current, following])
    assert publish_documents(S3Documents(s3, "issuer"), jwks=rotated, discovery=DISCOVERY) == [
        JWKS_KEY
    ]
    stored = json.loads(s3.get_object(Bucket="issuer", Key=JWKS_KEY)["Body"].read())
    assert [jwk["kid"] for jwk in stored["keys"]] == [current["kid"], following["kid"]]


def test_wrong_headers_are_repaired(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    publish_documents(S3Documents(s3, "issuer"), jwks=jwks, discovery=DISCOVERY)
    body = s3.get_object(Bucket="issuer", Key=DISCOVERY_KEY)["Body"].read()
    s3.put_object(Bucket="issuer", Key=DISCOVERY_KEY, Body=body, ContentType="text/plain")
    assert publish_documents(S3Documents(s3, "issuer"), jwks=jwks, discovery=DISCOVERY) == [
        DISCOVERY_KEY
    ]
    assert s3.head_object(Bucket="issuer", Key=DISCOVERY_KEY)["ContentType"] == "application/json"


def test_missing_bucket_is_temporarily_unavailable(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    with pytest.raises(TemporarilyUnavailable) as caught:
        publish_documents(S3Documents(s3, "no-such-bucket"), jwks=jwks, discovery=DISCOVERY)
    assert "no-such-bucket" not in caught.value.description
    assert caught.value.reason == "s3 HeadObject: NoSuchBucket"


def test_unreachable_s3_is_temporarily_unavailable() -> None:
    closed = boto3.client(
        "s3", region_name=REGION, endpoint_url="http://127.0.0.1:1",
        config=Config(connect_timeout=1, retries={"max_attempts": 1}),
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    jwks = {"keys": [{"kty": "EC", "kid": "k", "use": "sig", "alg": "ES256"}]}
    with pytest.raises(TemporarilyUnavailable):
        publish_documents(S3Documents(closed, "issuer"), jwks=jwks, discovery=DISCOVERY)


def test_empty_jwks_is_refused(aws: tuple[Any, Any]) -> None:
    s3, _ = aws
    with pytest.raises(ValueError):
        publish_documents(S3Documents(s3, "issuer"), jwks={"keys": []}, discovery=DISCOVERY)
    assert s3.list_objects_v2(Bucket="issuer").get("KeyCount") == 0
