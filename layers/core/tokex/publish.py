"""The S3 adapter: the only module that writes S3 (the JWKS and discovery documents).

The publisher runs on a schedule, on deploy and on rotation, so publishing must be
idempotent: the documents are serialized deterministically and an object whose bytes and
headers are already right is not written again (no needless CloudFront-visible change).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tokex.errors import TemporarilyUnavailable

JWKS_KEY = ".well-known/jwks.json"
DISCOVERY_KEY = ".well-known/openid-configuration"
CONTENT_TYPE = "application/json"
# docs/contract.md "Issuer": both documents are served with
# `Cache-Control: public, max-age=300`.
CACHE_CONTROL = "public, max-age=300"
# A missing key answers HeadObject with 404, or 403 without s3:ListBucket.
_ABSENT = frozenset({"404", "403", "NoSuchKey", "NotFound", "AccessDenied", "Forbidden"})


def serialize_document(document: dict[str, Any]) -> bytes:
    """Compact JSON with sorted keys: the same document always gives the same bytes."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def publish_documents(
    s3_client: Any, bucket: str, *, jwks: dict[str, Any], discovery: dict[str, Any]
) -> list[str]:
    """Write `.well-known/jwks.json` then `.well-known/openid-configuration` to `bucket`.

    Returns the keys actually written: an object whose body (by ETag) and headers already
    match is skipped. The JWKS goes first so the discovery document never points at a key
    set older than itself. S3 failures are TemporarilyUnavailable.
    """
    if not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("the JWKS must list at least one key")
    if not discovery.get("issuer") or not discovery.get("jwks_uri"):
        raise ValueError("the discovery document needs issuer and jwks_uri")
    written = []
    for key, document in ((JWKS_KEY, jwks), (DISCOVERY_KEY, discovery)):
        body = serialize_document(document)
        if not _is_current(s3_client, bucket, key, body):
            _put(s3_client, bucket, key, body)
            written.append(key)
    return written


def _is_current(s3_client: Any, bucket: str, key: str, body: bytes) -> bool:
    """Whether the stored object already has these exact bytes and our headers.

    A single-part PUT's ETag is the MD5 of the body (without SSE-KMS); any other ETag
    (multipart, SSE-KMS) never matches, which only costs a rewrite.
    """
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") in _ABSENT:
            return False
        raise _unavailable("head_object", exc) from exc
    except BotoCoreError as exc:
        raise _unavailable("head_object", exc) from exc
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    return (
        head.get("ETag", "").strip('"') == md5
        and head.get("ContentType") == CONTENT_TYPE
        and head.get("CacheControl") == CACHE_CONTROL
    )


def _put(s3_client: Any, bucket: str, key: str, body: bytes) -> None:
    try:
        s3_client.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType=CONTENT_TYPE,
            CacheControl=CACHE_CONTROL,
        )
    except (ClientError, BotoCoreError) as exc:
        raise _unavailable("put_object", exc) from exc


def _unavailable(operation: str, exc: Exception) -> TemporarilyUnavailable:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "ClientError")
    else:
        code = type(exc).__name__
    return TemporarilyUnavailable(
        "the key set could not be published, retry later", reason=f"s3_{operation}_failed: {code}"
    )
