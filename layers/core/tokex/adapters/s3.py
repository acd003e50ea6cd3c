"""The S3 adapter: the only module that writes S3 (the issuer documents of publish.py).

An object whose bytes and headers are already right is not written again, so publishing
stays idempotent without a needless CloudFront-visible change. Each write marks the
object with when the writing run's configuration was read (user metadata:
`x-amz-meta-tokex-configured-at`), and an object written with a configuration read later
is left alone (publish.py says why).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from tokex.adapters import errors
from tokex.errors import TemporarilyUnavailable
from tokex.publish import Write

# A missing key answers HeadObject with 404, or 403 without s3:ListBucket.
_ABSENT = frozenset({"404", "403", "NoSuchKey", "NotFound", "AccessDenied", "Forbidden"})
_UNAVAILABLE = "the key set could not be published, retry later"
# When the configuration of the run that wrote the object was read, epoch milliseconds.
CONFIGURED_AT = "tokex-configured-at"
# A mark later than the run's clock by more than this is no time a writer read its
# configuration at.
MAX_CLOCK_SKEW_MS = 60_000


class S3Documents:
    """The `DocumentStore` of publish.py: objects of one bucket."""

    def __init__(
        self, s3_client: Any, bucket: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._s3 = s3_client
        self._bucket = bucket
        self._clock = clock

    def write_if_changed(
        self, key: str, body: bytes, *, content_type: str, cache_control: str, configured_at: int
    ) -> Write:
        """Write `body` at `key`, marked with `configured_at`, unless the object already has
        these exact bytes and headers (the mark alone never causes a write) or, holding
        something else, was written with a configuration read later. S3 failures are
        TemporarilyUnavailable."""
        head = self._head(key)
        if head is not None:
            if _is_current(head, body, content_type, cache_control):
                return Write.UNCHANGED
            written_by = _configured_at(head, now=int(self._clock() * 1000))
            if written_by is not None and written_by > configured_at:
                return Write.YIELDED
        # A run that writes between this HeadObject and this PutObject can still be
        # overwritten: a narrow window. A conditional write (If-Match on the ETag read
        # above) would close it, but the Lambda runtime's botocore may predate S3's.
        try:
            self._s3.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                CacheControl=cache_control,
                Metadata={CONFIGURED_AT: str(configured_at)},
            )
        except errors.SDK_ERRORS as exc:
            raise _unavailable("PutObject", exc) from exc
        return Write.WRITTEN

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's HeadObject answer; None when there is no object."""
        try:
            head: dict[str, Any] = self._s3.head_object(Bucket=self._bucket, Key=key)
        except errors.SDK_ERRORS as exc:
            if errors.is_client_error(exc, *_ABSENT):
                return None
            raise _unavailable("HeadObject", exc) from exc
        return head


def _configured_at(head: dict[str, Any], *, now: int) -> int | None:
    """When the writer's configuration was read; None for an object written otherwise
    (before runs were marked, or by hand), which is rewritten as before when it changed,
    and for a mark that is no such time: not a number, or later than `now` (epoch ms) by
    more than clocks differ (an object copied in with its metadata, or set by hand),
    which would otherwise stop every run from ever writing it again."""
    mark = head.get("Metadata", {}).get(CONFIGURED_AT, "")
    if not (mark.isascii() and mark.isdigit()):
        return None
    written_by = int(mark)
    return written_by if written_by <= now + MAX_CLOCK_SKEW_MS else None


def _is_current(head: dict[str, Any], body: bytes, content_type: str, cache_control: str) -> bool:
    """Whether the stored object already has these exact bytes and headers.

    A single-part PUT's ETag is the MD5 of the body (without SSE-KMS); any other ETag
    (multipart, SSE-KMS) never matches, which only costs a rewrite.
    """
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    return (
        head.get("ETag", "").strip('"') == md5
        and head.get("ContentType") == content_type
        and head.get("CacheControl") == cache_control
    )


def _unavailable(operation: str, exc: Exception) -> TemporarilyUnavailable:
    return errors.unavailable(_UNAVAILABLE, "s3", operation, exc)
