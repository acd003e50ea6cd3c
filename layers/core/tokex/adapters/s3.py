"""The S3 adapter: the only module that writes S3 (the issuer documents of publish.py).

An object whose bytes and headers are already right is not written again, so publishing
stays idempotent without a needless CloudFront-visible change.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tokex.adapters import errors
from tokex.errors import TemporarilyUnavailable

# A missing key answers HeadObject with 404, or 403 without s3:ListBucket.
_ABSENT = frozenset({"404", "403", "NoSuchKey", "NotFound", "AccessDenied", "Forbidden"})
_UNAVAILABLE = "the key set could not be published, retry later"


class S3Documents:
    """The `DocumentStore` of publish.py: objects of one bucket."""

    def __init__(self, s3_client: Any, bucket: str) -> None:
        self._s3 = s3_client
        self._bucket = bucket

    def write_if_changed(
        self, key: str, body: bytes, *, content_type: str, cache_control: str
    ) -> bool:
        """Write `body` at `key` unless the object already has these exact bytes and
        headers; whether it wrote. S3 failures are TemporarilyUnavailable."""
        if self._is_current(key, body, content_type, cache_control):
            return False
        try:
            self._s3.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                CacheControl=cache_control,
            )
        except errors.SDK_ERRORS as exc:
            raise _unavailable("PutObject", exc) from exc
        return True

    def _is_current(self, key: str, body: bytes, content_type: str, cache_control: str) -> bool:
        """Whether the stored object already has these exact bytes and headers.

        A single-part PUT's ETag is the MD5 of the body (without SSE-KMS); any other ETag
        (multipart, SSE-KMS) never matches, which only costs a rewrite.
        """
        try:
            head = self._s3.head_object(Bucket=self._bucket, Key=key)
        except errors.SDK_ERRORS as exc:
            if errors.is_client_error(exc, *_ABSENT):
                return False
            raise _unavailable("HeadObject", exc) from exc
        md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
        return (
            head.get("ETag", "").strip('"') == md5
            and head.get("ContentType") == content_type
            and head.get("CacheControl") == cache_control
        )


def _unavailable(operation: str, exc: Exception) -> TemporarilyUnavailable:
    return errors.unavailable(_UNAVAILABLE, "s3", operation, exc)
