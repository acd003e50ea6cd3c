"""Errors that carry their OAuth meaning.

Every refusal tokex makes is one of these. Each carries the RFC 6749 §5.2 / RFC 8693
§2.2.2 `error` code, the HTTP status and a description written for the caller: it must
help an honest client fix its request and never contain stack traces, upstream bodies,
policy contents or secrets. `reason` is for the audit log only (it may name a policy).
"""

from __future__ import annotations

import copy

# A slow upstream is usually slow for a while: a prompt retry would likely wait again.
DEADLINE_RETRY_AFTER_SECONDS = 5
# A misconfiguration lasts until an operator acts: each retry sooner would only cost the
# caller's next exchange (an STS call, the admission write and its release) for nothing.
# The most the client library holds a failure for (client/token_client.py).
MISCONFIGURED_RETRY_AFTER_SECONDS = 60


def oauth_text(text: str) -> str:
    """`text` in the characters RFC 6749 §5.2 allows an `error_description` (printable
    ASCII but the double quote and the backslash): a strict OAuth client library refuses
    any other. The section sign is spelled out; a double quote becomes a single one, a
    backslash a slash, anything else `?`."""
    text = text.replace("§", "section ").replace('"', "'").replace("\\", "/")
    return "".join(c if " " <= c <= "~" else "?" for c in text)


class TokexError(Exception):
    """Base: an OAuth error response."""

    error = "invalid_request"
    status = 400

    def __init__(self, description: str, *, reason: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        # Short machine-readable reason for logs and metrics; defaults to the description.
        self.reason = reason or description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": oauth_text(self.description)}

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(TokexError):
    """Missing, repeated, malformed or unsupported parameter (RFC 6749 §5.2)."""


class MethodNotAllowed(InvalidRequest):
    status = 405


class UnsupportedMediaType(InvalidRequest):
    status = 415


class PayloadTooLarge(InvalidRequest):
    status = 413


class UnsupportedGrantType(TokexError):
    error = "unsupported_grant_type"


class InvalidGrant(TokexError):
    """The evidence (the signed STS request, IMDS evidence) was rejected."""

    error = "invalid_grant"


class InvalidTarget(TokexError):
    """No policy lets this caller have a token for this audience (RFC 8693 §2.2.2)."""

    error = "invalid_target"


class InvalidScope(TokexError):
    error = "invalid_scope"


class TemporarilyUnavailable(TokexError):
    """An upstream (STS, KMS, DynamoDB) failed or throttled us: retry later (503)."""

    error = "temporarily_unavailable"
    status = 503

    def __init__(
        self, description: str, *, reason: str | None = None, retry_after: int = 5
    ) -> None:
        super().__init__(description, reason=reason)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}

    def again(self) -> TemporarilyUnavailable:
        """The same failure (class, description, reason, Retry-After) as a new exception
        without traceback: for another request to raise (one object raised by several
        threads shares and chains their tracebacks, and keeps their frames alive)."""
        return copy.copy(self)


class Misconfigured(TemporarilyUnavailable):
    """An upstream refuses tokex itself, and will until an operator changes the deployment
    (IAM or a key policy denies tokex's role, the signing key is disabled, deleted or
    cannot sign JWTs, a table is missing): to the caller a 503 like an outage, with a
    longer Retry-After; to the operator its own outcome, `misconfigured`, in the audit line
    and the metric (docs/deploy.md "Troubleshooting")."""

    def __init__(self, description: str, *, reason: str | None = None) -> None:
        super().__init__(description, reason=reason, retry_after=MISCONFIGURED_RETRY_AFTER_SECONDS)


class RateLimited(TemporarilyUnavailable):
    status = 429


class DeadlineExceeded(TemporarilyUnavailable):
    """The request's time budget (`TOKEX_DEADLINE_SECONDS`, deadline.py) ran out while
    `upstream` was still to answer: 503, retry later (docs/contract.md "Deadline")."""

    def __init__(self, upstream: str) -> None:
        super().__init__(
            "the request could not be completed in time; retry later",
            reason=f"deadline:{upstream}",
            retry_after=DEADLINE_RETRY_AFTER_SECONDS,
        )


class ConfigurationError(Exception):
    """The deployment is misconfigured (raised at cold start, never per request)."""
