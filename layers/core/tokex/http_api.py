"""What the handlers share about HTTP: body decoding and the JSON answers' headers.

Plain functions over plain values: the handlers own the framework (Powertools) objects.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from tokex.errors import InvalidRequest

# RFC 6749 §5.1 (token responses) and RFC 7662 §2.2 (introspection, by reference): never
# cached by anyone.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
NOT_FOUND = {"error": "invalid_request", "error_description": "no such endpoint"}


def event_body(body: str | None, is_base64_encoded: bool) -> bytes:
    """The raw request body of an API Gateway HTTP API event."""
    raw = body or ""
    try:
        if not is_base64_encoded:
            # A lone surrogate other than an escaped byte is no text of any request.
            return raw.encode("utf-8", errors="surrogateescape")
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise InvalidRequest("the request body could not be decoded", reason="body") from None


def json_text(body: Mapping[str, object]) -> str:
    return json.dumps(body, separators=(",", ":"))


def no_store(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**NO_STORE, **(headers or {})}


def event_response(
    status: int, body: Mapping[str, object], headers: Mapping[str, str] | None = None
) -> dict[str, object]:
    """An HTTP API (payload 2.0) answer built without the resolver: for a refusal made
    before routing (the origin gate), with the same JSON and no-store headers."""
    return {
        "statusCode": status,
        "headers": no_store({"Content-Type": "application/json", **(headers or {})}),
        "body": json_text(body),
        "isBase64Encoded": False,
    }
