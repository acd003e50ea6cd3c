"""AWS SDK error → `TemporarilyUnavailable` (503, docs/contract.md): the one mapping.

Every adapter reports a failed AWS call the same way: a generic description for the
caller (never a table, key ARN, account or upstream message) and, for the audit log, the
reason `"<service> <operation>: <error code or exception name>"`, e.g.
`"dynamodb PutItem: ProvisionedThroughputExceededException"`, `"kms Sign:
EndpointConnectionError"`. The operation is the AWS API name.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from tokex.errors import TemporarilyUnavailable

# What the adapters catch around an AWS SDK call: the service answered with an error, or
# botocore could not get an answer (unreachable, timeout, no credentials).
SDK_ERRORS = (ClientError, BotoCoreError)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a `ClientError` (`"unknown"` without one), otherwise the
    exception's class name (`EndpointConnectionError`, `ReadTimeoutError`, ...)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "unknown")
    return type(exc).__name__


def is_client_error(exc: BaseException, *codes: str) -> bool:
    """Whether `exc` is the service's answer with one of `codes` (any code if none)."""
    return isinstance(exc, ClientError) and (not codes or error_code(exc) in codes)


def reason(service: str, operation: str, detail: str) -> str:
    return f"{service} {operation}: {detail}"


def unavailable(
    description: str, service: str, operation: str, exc_or_detail: BaseException | str
) -> TemporarilyUnavailable:
    """The 503 for a failed `service` `operation`; `exc_or_detail` is the SDK exception,
    or a short detail when the call answered something unusable ("malformed response")."""
    detail = exc_or_detail if isinstance(exc_or_detail, str) else error_code(exc_or_detail)
    return TemporarilyUnavailable(description, reason=reason(service, operation, detail))
