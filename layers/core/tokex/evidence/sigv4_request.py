"""The rules a caller's signed GetCallerIdentity request must pass before we forward it.

Reconstruct, don't forward (docs/security.md "The signed STS request"):
`verify_sts_request` reads top to bottom as the
list of rules, in the manner of aws-iam-authenticator's `Verify`. Each refusal is a typed
error whose description helps an honest client and never echoes secrets or long input.
What it returns holds only validated parts; the forwarder builds its request from those.

Wrong JSON shapes are `invalid_request` (contract: bad base64/JSON); a well-formed request
that breaks a rule is `invalid_grant` (contract: "not an acceptable STS request").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tokex import base64url, identifiers
from tokex.errors import InvalidGrant, InvalidRequest
from tokex.evidence.sts_endpoints import StsEndpoints
from tokex.strict_json import NestedTooDeep, StrictJsonError, loads_strict

MAX_SUBJECT_TOKEN_CHARS = 12 * 1024
# How deep the request's base64url JSON may nest: the signed request nests two levels
# (`headers`), the instance evidence one. Deeper is refused as such on every runtime,
# also past the parser's own limit (strict_json.NestedTooDeep), never as "not JSON".
MAX_REQUEST_JSON_DEPTH = 4
# How old a signed request may be, and how far ahead of our clock its X-Amz-Date may be
# (docs/security.md "The signed STS request"). STS itself allows 15 minutes either way;
# we allow less into the future.
MAX_AGE = timedelta(minutes=15)
MAX_SKEW_FUTURE = timedelta(minutes=5)
MAX_BODY_CHARS = 256
MAX_URL_CHARS = 256
STS_BODY = identifiers.STS_BODY
_BODY_PARAMS = dict(pair.split("=") for pair in STS_BODY.split("&"))
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

# Allowlisted headers: lower-case name -> (casing we send, longest value accepted).
_HEADERS = {
    "authorization": ("Authorization", 1024),
    "x-amz-date": ("X-Amz-Date", 512),
    # AWS fixes no size for a session token (session policies and tags make it longer):
    # generous, and the subject token's 12 KiB bounds the whole request anyway.
    "x-amz-security-token": ("X-Amz-Security-Token", 8192),
    "content-type": ("Content-Type", 512),
    "x-tokex-issuer": ("X-Tokex-Issuer", 512),
    "x-amz-content-sha256": ("X-Amz-Content-Sha256", 512),
    "user-agent": ("User-Agent", 512),
    # Optional, and only meaningful signed: SigV4 has one-second resolution, so without a
    # nonce two exchanges by one workload within a second carry the same signature, and
    # single use (docs/security.md "Single use and the rate limit") would refuse the second.
    "x-tokex-nonce": ("X-Tokex-Nonce", 64),
    # Optional, signed: binds the request to one audience, so a signed request that
    # leaks (or is captured by a look-alike endpoint) cannot buy a token for another API.
    "x-tokex-audience": ("X-Tokex-Audience", 256),
}
_REQUIRED_HEADERS = ("authorization", "x-amz-date", "content-type", "x-tokex-issuer")
_REQUIRED_SIGNED = ("host", "x-amz-date", "x-tokex-issuer")

_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
# Printable ASCII only (no CR/LF/NUL/controls, RFC 9110 §5.5), no surrounding blanks.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_URL = re.compile(r"https://([^/?#]*)(.*)", re.DOTALL)
_CONTENT_TYPE = re.compile(r"application/x-www-form-urlencoded(?:\s*;\s*charset=utf-8)?", re.I)
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9]{16,128}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_SIGNED_HEADER = re.compile(r"[a-z0-9-]{1,64}")
_AUTH_SCHEME = "AWS4-HMAC-SHA256 "
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


@dataclass(frozen=True)
class StsRequest:
    """A signed GetCallerIdentity request built from validated parts only."""

    host: str
    region: str
    partition: str
    headers: tuple[tuple[str, str], ...]  # to send, canonical casing, without Host
    body: str
    amz_date: datetime
    signature: str  # lower-case hex; hashed for optional single use (docs/security.md)
    access_key_id: str  # data for logs and claims, never a privilege decision


def decode_b64url_json(value: str, *, name: str, max_len: int) -> dict[str, Any]:
    """Decode unpadded base64url (RFC 4648 §5) of a UTF-8 JSON object, strictly."""
    if not value:
        raise InvalidRequest(f"{name} is empty")
    if len(value) > max_len:
        raise InvalidRequest(f"{name} is larger than {max_len} characters")
    try:
        raw = base64url.decode(value)
    except ValueError as err:
        raise InvalidRequest(f"{name} {err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name} is not UTF-8 JSON without duplicate keys") from None
    try:
        document = loads_strict(text, max_depth=MAX_REQUEST_JSON_DEPTH)
    except NestedTooDeep as deep:
        raise InvalidRequest(f"{name} is {deep}") from None
    except StrictJsonError:
        raise InvalidRequest(f"{name} is not UTF-8 JSON without duplicate keys") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"{name} must be a JSON object")
    return document


def decode_subject_token(token: str) -> dict[str, Any]:
    """The signed-request JSON (docs/contract.md "The signed request"), still unchecked."""
    return decode_b64url_json(token, name="subject_token", max_len=MAX_SUBJECT_TOKEN_CHARS)


def verify_sts_request(
    signed: dict[str, Any],
    *,
    issuer: str,
    endpoints: StsEndpoints,
    now: datetime,
    audience: str | None = None,
    require_audience: bool = False,
) -> StsRequest:
    """Apply every rule of docs/security.md "The signed STS request"; return what to
    forward. `require_audience`: X-Tokex-Audience must be there (and signed)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    _check_shape(signed)

    if signed["method"] != "POST":
        raise InvalidGrant("method must be POST")
    host = _host_from_url(signed["url"])
    endpoint = endpoints.lookup(host)
    if endpoint is None:
        raise InvalidGrant(endpoints.refusal(host))
    _check_body(signed["body"])

    headers = _allowlisted_headers(signed["headers"])
    for name in _REQUIRED_HEADERS:
        if name not in headers:
            raise InvalidGrant(f"header {_HEADERS[name][0]} is required")
    auth = _parse_authorization(headers["authorization"])

    # SignedHeaders must bind the Host we send and this deployment's issuer
    # (docs/contract.md "The signed request").
    # Exact list entries only: `x-tokex-issuers` is not `x-tokex-issuer`.
    for name in _REQUIRED_SIGNED:
        if name not in auth.signed_headers:
            raise InvalidGrant(f"{name} must be listed in SignedHeaders")
    for name in auth.signed_headers:
        if name != "host" and name not in headers:
            raise InvalidGrant("every signed header except host must be sent")

    # Credential scope: <akid>/<yyyymmdd>/<region>/sts/aws4_request (AWS SigV4 docs,
    # "Elements of an AWS API request signature"). The region must be the host's.
    if auth.region != endpoint.region:
        raise InvalidGrant(f"credential scope region must be {endpoint.region} for this host")
    if auth.service != "sts":
        raise InvalidGrant("credential scope service must be sts")

    amz_date = _parse_amz_date(headers["x-amz-date"])
    if auth.date != headers["x-amz-date"][:8]:
        raise InvalidGrant("credential scope date must be the date of X-Amz-Date")
    if amz_date < now - MAX_AGE:
        # Clients sign just before they send: a request signed just now that is this old
        # was signed on a slow clock, where signing again fails alike.
        raise InvalidGrant(
            f"X-Amz-Date is more than {_minutes(MAX_AGE)} minutes old: sign again, and if"
            " it was signed just now, set the signer's clock right"
        )
    if amz_date > now + MAX_SKEW_FUTURE:
        raise InvalidGrant(
            f"X-Amz-Date is more than {_minutes(MAX_SKEW_FUTURE)} minutes ahead: check the clock"
        )

    if "x-tokex-nonce" in headers and (
        "x-tokex-nonce" not in auth.signed_headers or not _NONCE.fullmatch(headers["x-tokex-nonce"])
    ):
        raise InvalidGrant("X-Tokex-Nonce must be signed and 16-64 characters of base64url")
    if require_audience and "x-tokex-audience" not in headers:
        raise InvalidGrant(
            "this deployment requires a signed X-Tokex-Audience equal to the audience parameter"
        )
    if "x-tokex-audience" in headers and (
        "x-tokex-audience" not in auth.signed_headers or headers["x-tokex-audience"] != audience
    ):
        raise InvalidGrant("X-Tokex-Audience must be signed and equal the audience parameter")
    if headers["x-tokex-issuer"] != issuer:
        raise InvalidGrant("X-Tokex-Issuer does not name this issuer")
    if not _CONTENT_TYPE.fullmatch(headers["content-type"]):
        raise InvalidGrant("Content-Type must be application/x-www-form-urlencoded")
    body_sha256 = hashlib.sha256(STS_BODY.encode()).hexdigest()
    if headers.get("x-amz-content-sha256", body_sha256) != body_sha256:
        raise InvalidGrant("X-Amz-Content-Sha256 must be the SHA-256 of the body")

    return StsRequest(
        host=endpoint.host,
        region=endpoint.region,
        partition=endpoint.partition,
        headers=tuple((_HEADERS[n][0], v) for n, v in headers.items()),
        body=STS_BODY,
        amz_date=amz_date,
        signature=auth.signature,
        access_key_id=auth.access_key_id,
    )


def _check_shape(signed: dict[str, Any]) -> None:
    if not isinstance(signed, dict) or set(signed) != {"method", "url", "headers", "body"}:
        raise InvalidRequest("subject_token JSON must have exactly method, url, headers, body")
    if not all(isinstance(signed[k], str) for k in ("method", "url", "body")):
        raise InvalidRequest("subject_token JSON method, url and body must be strings")
    headers = signed["headers"]
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidRequest("subject_token JSON headers must map names to strings")


def _host_from_url(url: str) -> str:
    """The authority of `https://<host>/`, refusing anything that could be read two ways."""
    if len(url) > MAX_URL_CHARS or not re.fullmatch(r"[\x21-\x7e]+", url):
        raise InvalidGrant("url must be short printable ASCII without whitespace")
    # Percent-encoding and backslashes are parsed differently by different URL parsers.
    if "%" in url or "\\" in url:
        raise InvalidGrant("url must not contain percent-encoding or backslashes")
    match = _URL.fullmatch(url)
    if match is None:
        raise InvalidGrant("url must use https")
    host, rest = match.groups()
    if "@" in host:
        raise InvalidGrant("url must not contain user info")
    if host.startswith("["):
        raise InvalidGrant("url host must be an STS hostname, not an IP literal")
    if ":" in host:
        raise InvalidGrant("url must not name a port")
    if "?" in rest:
        raise InvalidGrant("url must not have a query: the parameters go in the body")
    if "#" in rest:
        raise InvalidGrant("url must not have a fragment")
    if rest != "/":
        raise InvalidGrant("url path must be exactly /")
    if host != host.lower():
        raise InvalidGrant("url host must be lower case")
    return host


def _check_body(body: str) -> None:
    """Exactly Action=GetCallerIdentity&Version=2011-06-15 (CVE-2022-2385 added keys)."""
    if len(body) > MAX_BODY_CHARS:
        raise InvalidGrant(f"body must be exactly {STS_BODY}")
    if "%" in body or "+" in body:
        raise InvalidGrant("body must not contain percent-encoding or '+'")
    pairs = [pair.partition("=") for pair in body.split("&")]
    if any(not sep or "=" in value for _, sep, value in pairs):
        raise InvalidGrant("body must be key=value pairs separated by &")
    keys = [key.lower() for key, _, _ in pairs]
    if len(set(keys)) != len(keys):
        raise InvalidGrant("body must not repeat a parameter (compared ignoring case)")
    # Anything else (AssumeRole, the X-Amz-Credential of CVE-2022-2385, ...) is refused.
    if any(_BODY_PARAMS.get(key) != value for key, _, value in pairs):
        raise InvalidGrant("body may only hold Action=GetCallerIdentity, Version=2011-06-15")
    if body != STS_BODY:
        raise InvalidGrant(f"body must be exactly {STS_BODY}")


def _allowlisted_headers(raw: dict[str, str]) -> dict[str, str]:
    """Lower-case name -> value, in allowlist order; each name once, ignoring case."""
    found: dict[str, str] = {}
    for name, value in raw.items():
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidGrant("header names must be ASCII letters, digits and '-'")
        lower = name.lower()
        # A caller-chosen Host or Accept is how CVE-2020-16250 forged identities in Vault.
        if lower in ("host", "accept"):
            raise InvalidGrant(f"header {name} must not be sent: tokex sets it")
        if lower not in _HEADERS:
            raise InvalidGrant(f"header {name} is not accepted")
        if lower in found:
            raise InvalidGrant(f"header {_HEADERS[lower][0]} is sent more than once")
        if not _HEADER_VALUE.fullmatch(value):
            raise InvalidGrant(f"header {_HEADERS[lower][0]} must be printable ASCII")
        if len(value) > _HEADERS[lower][1]:
            raise InvalidGrant(f"header {_HEADERS[lower][0]} is too long")
        found[lower] = value
    return {n: found[n] for n in _HEADERS if n in found}


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def _parse_authorization(value: str) -> _Authorization:
    """`AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`, each once."""
    if not value.startswith(_AUTH_SCHEME):
        raise InvalidGrant("Authorization must be an AWS4-HMAC-SHA256 header signature")
    fields: dict[str, str] = {}
    for index, part in enumerate(value[len(_AUTH_SCHEME) :].split(",")):
        # One scheme-space, then fields joined by ", " (what SDKs send) or ",".
        name, sep, field = (part.removeprefix(" ") if index else part).partition("=")
        if not sep or name not in ("Credential", "SignedHeaders", "Signature"):
            raise InvalidGrant("Authorization must hold Credential, SignedHeaders, Signature")
        if name in fields:
            raise InvalidGrant(f"Authorization must hold {name} only once")
        fields[name] = field
    if len(fields) != 3:
        raise InvalidGrant("Authorization must hold Credential, SignedHeaders, Signature")

    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise InvalidGrant("Credential must be <key id>/<date>/<region>/sts/aws4_request")
    access_key_id, date, region, service, _ = scope
    if not _ACCESS_KEY_ID.fullmatch(access_key_id) or not re.fullmatch(r"[0-9]{8}", date):
        raise InvalidGrant("Credential must be <key id>/<date>/<region>/sts/aws4_request")

    # SigV4: lower-case names, sorted, separated by ';' (AWS SigV4 docs, canonical request).
    signed = tuple(fields["SignedHeaders"].split(";"))
    if not all(_SIGNED_HEADER.fullmatch(n) for n in signed) or signed != tuple(sorted(set(signed))):
        raise InvalidGrant("SignedHeaders must be sorted unique lower-case names joined by ;")
    if not _SIGNATURE.fullmatch(fields["Signature"]):
        raise InvalidGrant("Signature must be 64 lower-case hex digits")
    return _Authorization(
        access_key_id=access_key_id,
        date=date,
        region=region,
        service=service,
        signed_headers=signed,
        signature=fields["Signature"],
    )


def _parse_amz_date(value: str) -> datetime:
    if not _AMZ_DATE.fullmatch(value):
        raise InvalidGrant("X-Amz-Date must be YYYYMMDDTHHMMSSZ")
    try:
        return datetime.strptime(value, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidGrant("X-Amz-Date must be YYYYMMDDTHHMMSSZ") from None


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds()) // 60
