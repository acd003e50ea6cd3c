"""The S3 adapter: the only module that writes S3 (the issuer documents of publish.py).

An object whose bytes and headers are already right is not written again, so publishing
stays idempotent without a needless CloudFront-visible change. Each write marks the
object with when the writing run's configuration was read (user metadata:
`x-amz-meta-tokex-configured-at`), and an object written with a configuration read later
is left alone (publish.py says why).

The write is conditional on the object read just before it (S3's `If-Match` on its ETag,
`If-None-Match: *` when there was none), so a run writing between the two is never
overwritten unseen: the decision is made again on what that run wrote. An SDK whose S3
model predates conditional writes (botocore before 1.35.69, which a Lambda runtime may
still ship) writes unconditionally, leaving that window of milliseconds open.
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
# Reads and conditional writes of one document before the run gives up (503, retried by
# the next run): each lost race means another run wrote it in between.
MAX_WRITE_ATTEMPTS = 3
# What S3 answers a conditional write whose condition no longer holds: 412, 409 when a
# concurrent conditional write of the same key is in flight, 404 when the object read
# was deleted since.
_LOST_RACE = frozenset(
    {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"}
)


class S3Documents:
    """The `DocumentStore` of publish.py: objects of one bucket."""

    def __init__(
        self, s3_client: Any, bucket: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._s3 = s3_client
        self._bucket = bucket
        self._clock = clock
        self._conditional = writes_conditionally(s3_client)

    def write_if_changed(
        self, key: str, body: bytes, *, content_type: str, cache_control: str, configured_at: int
    ) -> Write:
        """Write `body` at `key`, marked with `configured_at`, unless the object already has
        these exact bytes and headers (the mark alone never causes a write) or, holding
        something else, was written with a configuration read later. S3 failures are
        TemporarilyUnavailable."""
        for _ in range(MAX_WRITE_ATTEMPTS):
            head = self._head(key)
            if head is not None:
                if _is_current(head, body, content_type, cache_control):
                    return Write.UNCHANGED
                written_by = _configured_at(head, now=int(self._clock() * 1000))
                if written_by is not None and written_by > configured_at:
                    return Write.YIELDED
            try:
                self._s3.put_object(
                    Bucket=self._bucket,
                    Key=key,
                    Body=body,
                    ContentType=content_type,
                    CacheControl=cache_control,
                    Metadata={CONFIGURED_AT: str(configured_at)},
                    **self._unchanged_since(head),
                )
            except errors.SDK_ERRORS as exc:
                if self._conditional and errors.is_client_error(exc, *_LOST_RACE):
                    continue  # another run wrote (or deleted) it since: decide again
                raise _unavailable("PutObject", exc) from exc
            return Write.WRITTEN
        raise _unavailable("PutObject", "the object kept changing under this run")

    def _unchanged_since(self, head: dict[str, Any] | None) -> dict[str, str]:
        """PutObject's condition: the object is still the one `head` read (or still none)."""
        if not self._conditional:
            return {}
        if head is None:
            return {"IfNoneMatch": "*"}
        return {"IfMatch": head["ETag"]}

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's HeadObject answer; None when there is no object."""
        try:
            head: dict[str, Any] = self._s3.head_object(Bucket=self._bucket, Key=key)
        except errors.SDK_ERRORS as exc:
            if errors.is_client_error(exc, *_ABSENT):
                return None
            raise _unavailable("HeadObject", exc) from exc
        return head


def writes_conditionally(s3_client: Any) -> bool:
    """Whether the client's S3 model has PutObject's `IfMatch` (botocore 1.35.69 on)."""
    put_object = s3_client.meta.service_model.operation_model("PutObject")
    return "IfMatch" in put_object.input_shape.members


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


def _unavailable(operation: str, exc_or_detail: Exception | str) -> TemporarilyUnavailable:
    return errors.unavailable(_UNAVAILABLE, "s3", operation, exc_or_detail)
