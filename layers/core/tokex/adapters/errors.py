"""AWS SDK error → `TemporarilyUnavailable` (503, docs/contract.md): the one mapping.

Every adapter reports a failed AWS call the same way: a generic description for the
caller (never a table, key ARN, account or upstream message) and, for the audit log, the
reason `"<service> <operation>: <error code or exception name>"`, e.g.
`"dynamodb PutItem: ProvisionedThroughputExceededException"`, `"kms Sign:
EndpointConnectionError"`. The operation is the AWS API name.

A failure that lasts until an operator changes the deployment (`CONFIGURATION_ERRORS`) is
`Misconfigured`: the same 503 to the caller, a longer Retry-After, and its own outcome for
the operator; anything else (throttling, a 5xx, no connection, a timeout) passes.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.parsers import ResponseParserError

from tokex.errors import Misconfigured, TemporarilyUnavailable

# What the adapters catch around an AWS SDK call: the service answered with an error,
# botocore could not get an answer (unreachable, timeout, no credentials), or what it got
# is no answer (an XML service's body that does not parse; aws_clients.MalformedResponse).
SDK_ERRORS = (ClientError, BotoCoreError, ResponseParserError)
# The error codes (each service's documented errors) and botocore exceptions that say the
# deployment is wrong, not that the service is having a bad minute: a retry cannot help
# until an operator acts.
CONFIGURATION_ERRORS = frozenset(
    {
        # IAM, a key policy or an SCP denies tokex's role (each service's spelling).
        "AccessDenied",
        "AccessDeniedException",
        # tokex's own credentials are not recognised (no role, or none at all).
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        NoCredentialsError.__name__,
        # DynamoDB: no such table (a wrong name, or another Region's).
        "ResourceNotFoundException",
        # DynamoDB: a request the table can never accept, asked again or not (a table of
        # another key schema than tokex's, or a bug of tokex's).
        "ValidationException",
        "SerializationException",
        # KMS: the key is missing, disabled, pending deletion or not a signing key.
        "NotFoundException",
        "DisabledException",
        "KMSInvalidStateException",
        "InvalidKeyUsageException",
        "InvalidArnException",
        "UnsupportedOperationException",
    }
)


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
    """The 503 for a failed `service` `operation`: `Misconfigured` for one of
    `CONFIGURATION_ERRORS`. `exc_or_detail` is the SDK exception, its error code, or a
    short detail when the call answered something unusable ("malformed response")."""
    detail = exc_or_detail if isinstance(exc_or_detail, str) else error_code(exc_or_detail)
    failed = reason(service, operation, detail)
    if detail in CONFIGURATION_ERRORS:
        return Misconfigured(description, reason=failed)
    return TemporarilyUnavailable(description, reason=failed)


def scan_items(page: dict[str, Any], description: str) -> list[Any]:
    """A DynamoDB Scan page's items: it always lists them, none or some, so a page without
    the list is no answer (`description`'s 503), never "no items"."""
    items = page.get("Items")
    if not isinstance(items, list):
        raise unavailable(description, "dynamodb", "Scan", "malformed response")
    return items
