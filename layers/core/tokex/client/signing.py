"""Builds the `subject_token`: a GetCallerIdentity request signed with SigV4 by botocore.

The workload's credentials never leave it; only the signed request does, and it is bound
to one tokex deployment by the signed `X-Tokex-Issuer` header.
"""

from __future__ import annotations

import secrets
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from tokex import __version__, base64url, identifiers

GET_CALLER_IDENTITY_BODY = identifiers.STS_BODY


def sts_host(region: str | None) -> str:
    """The regional STS endpoint (the global one only when no region is known)."""
    if not region:
        return "sts.amazonaws.com"
    # A region of no served partition gets the commercial suffix; tokex refuses its host.
    partition = identifiers.partition_of_region(region) or "aws"
    suffix = identifiers.PARTITION_DNS_SUFFIX[partition]
    return f"sts.{region}.{suffix}"


def signed_get_caller_identity(
    credentials: ReadOnlyCredentials | Any,
    *,
    region: str,
    issuer: str,
    audience: str | None = None,
) -> dict[str, Any]:
    """The signed-request JSON (docs/contract.md "The signed request"), ready to encode as a
    subject_token."""
    host = sts_host(region)
    url = f"https://{host}/"
    bound = {"X-Tokex-Audience": audience} if audience else {}
    request = AWSRequest(
        method="POST",
        url=url,
        data=GET_CALLER_IDENTITY_BODY,
        headers={
            **bound,
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "X-Tokex-Issuer": issuer,
            # Signed, so each request is unique even within one X-Amz-Date second: a
            # deployment with single use on refuses a second identical signature.
            "X-Tokex-Nonce": secrets.token_urlsafe(16),
            "User-Agent": f"tokex-client/{__version__}",
        },
    )
    signing_region = "us-east-1" if host == "sts.amazonaws.com" else region
    SigV4Auth(credentials, "sts", signing_region).add_auth(request)
    headers = {name: value for name, value in request.headers.items() if name.lower() != "host"}
    return {"method": "POST", "url": url, "headers": headers, "body": GET_CALLER_IDENTITY_BODY}


def encode_subject_token(signed_request: dict[str, Any]) -> str:
    """base64url without padding of the compact JSON (docs/contract.md)."""
    return base64url.encode_json(signed_request)
