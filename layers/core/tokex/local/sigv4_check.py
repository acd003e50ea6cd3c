"""Checks a request's AWS Signature Version 4 as STS does, for the local STS-compatible
endpoint (tokex.local.sts_endpoint): the signature is recomputed with botocore's own signer
for the secret of an access key this process made, so only the demo identities of
`tokex local` can sign, and only with their own secrets (AWS General Reference, "Signature
Version 4 signing process"; errors as STS names them).

`verify_sigv4` reads top to bottom as the list of rules; each refusal is an `StsError`
with STS's code and HTTP status.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from tokex import identifiers
from tokex.local.provision import Credentials
from tokex.local.sts_protocol import StsError

# AWS refuses a signature whose X-Amz-Date is more than 15 minutes from its clock.
MAX_CLOCK_SKEW_SECONDS = 15 * 60
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]{16,128})/(?P<date>[0-9]{8})/"
    r"(?P<region>[^/\s,]{1,64})/(?P<service>[^/\s,]{1,64})/aws4_request,\s*"
    r"SignedHeaders=(?P<signed>[a-z0-9-]+(?:;[a-z0-9-]+)*),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

_INVALID_KEY = StsError(
    403, "InvalidClientTokenId", "The security token included in the request is invalid."
)
_MISMATCH = StsError(
    403,
    "SignatureDoesNotMatch",
    "The request signature we calculated does not match the signature you provided. Check "
    "your AWS Secret Access Key and signing method. Consult the service documentation for "
    "details.",
)
_NONCONFORMING = StsError(
    400, "IncompleteSignature", "The request signature does not conform to AWS standards."
)


@dataclass(frozen=True)
class SignedBy:
    """Who signed a request that passed every rule, and for which Region."""

    access_key_id: str
    region: str


def verify_sigv4(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    credentials_of: Callable[[str], Credentials | None],
    service: str = "sts",
    now: float | None = None,
) -> SignedBy:
    """The signer of a request (its `target` is the path and query as sent), or StsError."""
    now = time.time() if now is None else now
    authorization = _values(headers, "authorization")
    if not authorization:
        raise StsError(403, "MissingAuthenticationToken", "Request is missing Authentication Token")
    if len(authorization) > 1 or not (auth := _AUTHORIZATION.fullmatch(authorization[0])):
        raise _NONCONFORMING
    amz_date = _values(headers, "x-amz-date")
    if len(amz_date) != 1 or not _AMZ_DATE.fullmatch(amz_date[0]):
        raise StsError(
            400, "IncompleteSignature", "Authorization header requires a 'X-Amz-Date' header."
        )
    if auth["date"] != amz_date[0][:8]:
        raise _mismatch(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{auth['date']}' != '{amz_date[0][:8]}'"
        )
    if auth["service"] != service:
        raise _mismatch(f"Credential should be scoped to correct service: '{service}'.")
    if not identifiers.is_region(auth["region"]):
        raise _mismatch("Credential should be scoped to a valid region.")
    signed = auth["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        raise StsError(
            400,
            "IncompleteSignature",
            "'Host' and 'X-Amz-Date' must be SignedHeaders in the AWS Authorization.",
        )
    if any(not _values(headers, name) for name in signed):
        raise _MISMATCH  # a signed header that was not sent
    try:
        signed_at = calendar.timegm(time.strptime(amz_date[0], _AMZ_DATE_FORMAT))
    except ValueError:  # the right shape, but no date (month 13, hour 25)
        raise _NONCONFORMING from None
    earliest, latest = now - MAX_CLOCK_SKEW_SECONDS, now + MAX_CLOCK_SKEW_SECONDS
    if signed_at < earliest:
        raise _mismatch(
            f"Signature expired: {amz_date[0]} is now earlier than {_amz(earliest)} "
            f"({_amz(now)} - 15 min.)"
        )
    if signed_at > latest:
        raise _mismatch(
            f"Signature not yet current: {amz_date[0]} is still later than {_amz(latest)} "
            f"({_amz(now)} + 15 min.)"
        )
    credentials = credentials_of(auth["key"])
    if credentials is None:
        raise _INVALID_KEY
    if not _session_token_matches(_values(headers, "x-amz-security-token"), credentials):
        raise _INVALID_KEY  # a session key without its token, or with another one
    if credentials.expiration is not None and now >= credentials.expiration:
        raise StsError(400, "ExpiredToken", "The security token included in the request is expired")
    content_sha256 = _values(headers, "x-amz-content-sha256")
    if content_sha256 and content_sha256 != [hashlib.sha256(body).hexdigest()]:
        raise _MISMATCH  # botocore would sign the header's hash, not the body's
    expected = _signature(method, target, headers, body, signed, amz_date[0], auth, credentials)
    if not hmac.compare_digest(expected, auth["signature"]):
        raise _MISMATCH
    return SignedBy(auth["key"], auth["region"])


def _signature(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    signed: list[str],
    amz_date: str,
    auth: re.Match[str],
    credentials: Credentials,
) -> str:
    """The signature botocore computes for this request with the key's secret."""
    host = _values(headers, "host")[0]
    request = AWSRequest(method=method, url=f"http://{host}{target}", data=body)
    for name, value in headers:
        if name.lower() in signed:
            request.headers[name] = value  # appends: a repeated header keeps every value
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        ReadOnlyCredentials(
            credentials.access_key_id, credentials.secret_access_key, credentials.session_token
        ),
        auth["service"],
        auth["region"],
    )
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))


def _session_token_matches(sent: list[str], credentials: Credentials) -> bool:
    """A session's key comes with its token, exactly once; a long-term key with none."""
    if credentials.session_token is None:
        return not sent
    expected = credentials.session_token.encode()
    return len(sent) == 1 and hmac.compare_digest(sent[0].encode(), expected)


def _values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [value for field, value in headers if field.lower() == name]


def _mismatch(message: str) -> StsError:
    return StsError(403, "SignatureDoesNotMatch", message)


def _amz(seconds: float) -> str:
    return time.strftime(_AMZ_DATE_FORMAT, time.gmtime(seconds))
