"""Exchanges the workload's AWS identity for a tokex access token.

client = TokenClient("https://auth.example.com")
token = client.token("orders-api", scopes=["orders:read"])   # cached until near expiry
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError

from tokex.client.signing import encode_subject_token, signed_get_caller_identity
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

# Refresh this long before expiry, so a token is never presented in its last seconds.
REFRESH_MARGIN_SECONDS = 60
MAX_RESPONSE_BYTES = 64 * 1024


class TokenError(Exception):
    """The token endpoint refused (error/description from the server) or was unreachable."""

    def __init__(self, message: str, *, error: str | None = None, status: int | None = None):
        super().__init__(message)
        self.error = error
        self.status = status


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A signed request goes to the endpoint the workload named, nowhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def check_endpoint(endpoint: str) -> str:
    """https only (plain http on loopback, for `tokex local`); no path, query or userinfo."""
    parts = urllib.parse.urlsplit(endpoint.rstrip("/"))
    local = parts.scheme == "http" and parts.hostname in _LOOPBACK
    if not (parts.scheme == "https" or local) or not parts.hostname:
        raise TokenError(f"endpoint must be an https URL (got {endpoint!r})")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise TokenError("endpoint must be a plain base URL")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def discover_issuer(endpoint: str, *, timeout: float = 5.0) -> str:
    """The issuer named by the endpoint's discovery document, which must be the endpoint
    itself. Otherwise a look-alike endpoint could name a real issuer, collect requests
    signed for it and replay them there: use `issuer=` (`--issuer`) to bind deliberately
    when the token endpoint is not served at the issuer URL."""
    url = endpoint.rstrip("/") + "/.well-known/openid-configuration"
    document = _get_json(url, timeout)
    issuer = document.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise TokenError(f"{url} has no issuer")
    if issuer.rstrip("/") != endpoint.rstrip("/"):
        raise TokenError(
            f"{url} names issuer {issuer!r}, not this endpoint: pass --issuer to bind to it "
            "explicitly if you trust this endpoint to act for that issuer"
        )
    return issuer


def request_token(
    endpoint: str,
    audience: str,
    *,
    scopes: Sequence[str] = (),
    region: str | None = None,
    issuer: str | None = None,
    instance_evidence: str | None = None,
    session: boto3.session.Session | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """One exchange: the token endpoint's whole JSON response (RFC 8693 §2.2.1).

    The signed request names the issuer (X-Tokex-Issuer) and the audience
    (X-Tokex-Audience): it can buy nothing else, anywhere else."""
    endpoint = check_endpoint(endpoint)
    try:
        session = session or boto3.session.Session()
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials else None
    except BotoCoreError as err:
        raise TokenError(f"cannot load AWS credentials: {err}") from None
    if frozen is None:
        raise TokenError("no AWS credentials found (default credential chain)")
    region = region or session.region_name or "us-east-1"
    signed = signed_get_caller_identity(
        frozen,
        region=region,
        issuer=issuer or discover_issuer(endpoint, timeout=timeout),
        audience=audience,
    )
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": encode_subject_token(signed),
        "audience": audience,
    }
    if scopes:
        form["scope"] = " ".join(scopes)
    if instance_evidence:
        form["aws_instance_identity"] = instance_evidence
    request = urllib.request.Request(  # noqa: S310 - endpoint is the operator's tokex
        endpoint + "/token",
        data=urllib.parse.urlencode(form).encode("ascii"),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        method="POST",
    )
    return _send(request, timeout)


class TokenClient:
    """Caches one token per (audience, scopes) until shortly before it expires."""

    def __init__(self, endpoint: str, **options: Any) -> None:
        self._endpoint = endpoint
        self._options = options
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def token(self, audience: str, scopes: Sequence[str] = ()) -> str:
        key = (audience, tuple(scopes))
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            response = request_token(self._endpoint, audience, scopes=scopes, **self._options)
            lifetime = max(int(response.get("expires_in", 0)) - REFRESH_MARGIN_SECONDS, 0)
            self._cache[key] = (response["access_token"], time.monotonic() + lifetime)
            return str(response["access_token"])


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    return _send(request, timeout)


def _send(request: urllib.request.Request, timeout: float) -> dict[str, Any]:
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return _parse(response.read(MAX_RESPONSE_BYTES + 1), response.status)
    except urllib.error.HTTPError as err:
        body = _parse(err.read(MAX_RESPONSE_BYTES + 1), err.code, strict=False)
        error = body.get("error")
        description = body.get("error_description") or err.reason
        raise TokenError(
            f"{error or 'HTTP ' + str(err.code)}: {description}", error=error, status=err.code
        ) from None
    except (urllib.error.URLError, OSError) as err:
        raise TokenError(f"cannot reach {request.full_url}: {err}") from None


def _parse(data: bytes, status: int, *, strict: bool = True) -> dict[str, Any]:
    try:
        if len(data) > MAX_RESPONSE_BYTES:
            raise ValueError("response too large")
        parsed = json.loads(data)
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
        return parsed
    except ValueError:
        if strict:
            raise TokenError(f"unexpected response (HTTP {status})", status=status) from None
        return {}
