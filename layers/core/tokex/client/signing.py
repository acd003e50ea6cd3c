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
from botocore.exceptions import BotoCoreError
from botocore.utils import ensure_boolean

from tokex import __version__, base64url, identifiers
from tokex.client.endpoint import redacted_text
from tokex.client.token_error import AWS_ERROR, TokenError
from tokex.evidence.sts_endpoints import FIPS_REGIONS, GLOBAL_HOST, GLOBAL_REGION

GET_CALLER_IDENTITY_BODY = identifiers.STS_BODY
# What turns the SDK's FIPS endpoints on, as botocore reads it (use_fips_endpoint).
FIPS_SETTING = "AWS_USE_FIPS_ENDPOINT or the profile's use_fips_endpoint"


def sts_host(region: str | None) -> str:
    """The regional STS endpoint (the global one only when no region is known)."""
    return sts_endpoint(region)[0]


def sts_endpoint(region: str | None, *, fips: bool = False) -> tuple[str, str]:
    """(host, SigV4 region) of the STS endpoint to sign for.

    Without `fips`: `sts.<region>.<suffix>`, or the global `sts.amazonaws.com` (scoped to
    us-east-1) when no region is known. With `fips` (the SDK's `use_fips_endpoint`): the
    FIPS endpoint of tokex's own table (evidence/sts_endpoints.py FIPS_REGIONS), as
    botocore resolves it: `sts-fips.<region>.<suffix>`, except in GovCloud, whose regular
    `sts.<region>` endpoints are the FIPS ones; no region signs for us-east-1's
    (botocore's `sts-fips.aws-global` does not exist). A Region with no FIPS endpoint in
    the table is a TokenError rather than a request silently signed for a non-FIPS one."""
    if not region:
        if not fips:
            return GLOBAL_HOST, GLOBAL_REGION
        region = GLOBAL_REGION
    # A region of no served partition gets the commercial suffix; tokex refuses its host.
    partition = identifiers.partition_of_region(region) or "aws"
    suffix = identifiers.PARTITION_DNS_SUFFIX[partition]
    if not fips:
        return f"sts.{region}.{suffix}", region
    if region not in FIPS_REGIONS:
        have = ", ".join(sorted(FIPS_REGIONS))
        raise TokenError(
            f"the AWS configuration cannot be used: FIPS endpoints are on"
            f" ({FIPS_SETTING}) and Region {region} has no FIPS STS endpoint this tokex"
            f" version knows (those of {have}): sign for one of them (--region, AWS_REGION),"
            " or turn the setting off",
            error=AWS_ERROR,
        )
    if partition == "aws-us-gov":
        return f"sts.{region}.{suffix}", region
    return f"sts-fips.{region}.{suffix}", region


def use_fips_endpoint(session: Any) -> bool:
    """Whether the SDK is set to use FIPS endpoints, read as botocore reads it: the
    session's `use_fips_endpoint` (AWS_USE_FIPS_ENDPOINT, else the profile's
    `use_fips_endpoint`). `session`: a boto3 or a botocore session."""
    core = getattr(session, "_session", session)  # boto3's Session wraps botocore's
    try:
        value = core.get_config_variable("use_fips_endpoint")
    except BotoCoreError as err:  # a profile that does not exist, a config file unreadable
        raise TokenError(
            f"the AWS configuration cannot be used: {redacted_text(str(err))}", error=AWS_ERROR
        ) from None
    return ensure_boolean(value) if value is not None else False


def signed_get_caller_identity(
    credentials: ReadOnlyCredentials | Any,
    *,
    region: str,
    issuer: str,
    audience: str | None = None,
    fips: bool = False,
) -> dict[str, Any]:
    """The signed-request JSON (docs/contract.md "The signed request"), ready to encode as a
    subject_token; signed for the Region's FIPS STS endpoint with `fips` (sts_endpoint)."""
    host, signing_region = sts_endpoint(region, fips=fips)
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
    SigV4Auth(credentials, "sts", signing_region).add_auth(request)
    headers = {name: value for name, value in request.headers.items() if name.lower() != "host"}
    return {"method": "POST", "url": url, "headers": headers, "body": GET_CALLER_IDENTITY_BODY}


def encode_subject_token(signed_request: dict[str, Any]) -> str:
    """base64url without padding of the compact JSON (docs/contract.md)."""
    return base64url.encode_json(signed_request)
