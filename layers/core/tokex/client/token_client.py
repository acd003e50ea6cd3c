"""Exchanges the workload's AWS identity for a tokex access token.

client = TokenClient("https://auth.example.com")
token = client.token("orders-api", scopes=["orders:read"])   # refreshed at 80 % of its lifetime

The evidence is a signed GetCallerIdentity by default (`evidence="sigv4"`), or a JWT:
`evidence="aws-oif"` (`"oif"`; sts:GetWebIdentityToken) or `evidence="eks"` (the pod's
projected service-account token, `token_file=`): client/evidence.py.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import BotoCoreError

from tokex.client.evidence import (
    AWS_OIF,
    EKS,
    SIGV4,
    EvidenceOptions,
    check_token_audience,
    read_token_file,
    web_identity_token,
)
from tokex.client.signing import encode_subject_token, signed_get_caller_identity
from tokex.client.token_error import (
    INVALID_ENDPOINT,
    ISSUER_MISMATCH,
    NO_CREDENTIALS,
    NOT_TOKEX,
    UNREACHABLE,
    TokenError,
)
from tokex.token_request import JWT_TOKEN_TYPE, SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

# A token is refreshed once this fraction of its lifetime has passed: with tokex's default
# 15-minute tokens, after 12 minutes, so a token is never presented in its last minutes and
# a refresh that fails has the remaining 20 % of the lifetime to be retried.
REFRESH_AT = 0.8

MAX_RESPONSE_BYTES = 64 * 1024

# Paths a tokex issuer serves (docs/contract.md): an endpoint ending in one is not the base
# URL.
ISSUER_PATHS = (
    "/token",
    "/introspect",
    "/.well-known/openid-configuration",
    "/.well-known/jwks.json",
)
_LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    """Plain http is allowed to this host: only `tokex local` serves http, on loopback."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A signed request goes to the endpoint the workload named, nowhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def check_endpoint(endpoint: str) -> str:
    """The issuer's base URL: https (plain http only on loopback, for `tokex local`), no
    query, fragment or userinfo, not one of the issuer's own endpoints."""

    def refuse(why: str) -> TokenError:
        return TokenError(f"endpoint {endpoint!r} {why}", error=INVALID_ENDPOINT, url=endpoint)

    if "://" not in endpoint:
        host = endpoint.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        scheme = "http" if is_loopback(host) else "https"
        raise refuse(f"has no scheme: pass {scheme}://{endpoint}")
    parts = urllib.parse.urlsplit(endpoint.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse("is not an http(s) URL with a host")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise refuse(
            "is plain http: use https (http only on loopback, e.g. http://127.0.0.1:8787 of "
            "`tokex local`)"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise refuse("must be a plain base URL, without user, query or fragment")
    path = parts.path.rstrip("/")
    for served in ISSUER_PATHS:
        if path.endswith(served):  # e.g. the "token endpoint" `tokex local` prints
            base = urllib.parse.urlunsplit(
                (parts.scheme, parts.netloc, path[: -len(served)], "", "")
            )
            raise refuse(
                f"is the issuer's {served} endpoint, not its base URL: pass the issuer URL {base}"
            )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def discover_issuer(endpoint: str, *, timeout: float = 5.0) -> str:
    """The issuer named by the endpoint's discovery document, which must be the endpoint
    itself. Otherwise a look-alike endpoint could name a real issuer, collect requests
    signed for it and replay them there: use `issuer=` (`--issuer`) to bind deliberately
    when the token endpoint is not served at the issuer URL."""
    url = endpoint.rstrip("/") + "/.well-known/openid-configuration"
    try:
        document = _get_json(url, timeout)
    except TokenError as err:
        if err.status is None:  # unreachable: nothing answered
            raise
        raise TokenError(
            f"{endpoint} is not a tokex issuer: its discovery document {url} answered "
            f"{err.answer}. Pass the issuer URL: `tokex local` prints it, a deployment has "
            "it as its IssuerUrl stack output",
            error=NOT_TOKEX,
            status=err.status,
            url=url,
        ) from None
    issuer = document.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise TokenError(
            f"{url} names no issuer: {endpoint} does not look like a tokex issuer",
            error=NOT_TOKEX,
            url=url,
        )
    if issuer.rstrip("/") != endpoint.rstrip("/"):
        raise TokenError(
            f"{url} names issuer {issuer!r}, not this endpoint: pass --issuer to bind to it "
            "explicitly if you trust this endpoint to act for that issuer",
            error=ISSUER_MISMATCH,
            url=url,
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
    evidence: str = SIGV4,
    token_file: str | Path | None = None,
    signing_algorithm: str | None = None,
) -> dict[str, Any]:
    """One exchange: the token endpoint's whole JSON response (RFC 8693 §2.2.1).

    `evidence`: "sigv4" (a signed GetCallerIdentity, with `instance_evidence` if any),
    "aws-oif" or "oif" (a JWT from sts:GetWebIdentityToken, `signing_algorithm` RS256 by
    default or ES384) or "eks" (the projected service-account token in `token_file`,
    default /var/run/secrets/tokex/serviceaccount/token). An option another kind does not
    take is a ValueError. Each kind is bound to this issuer: the signed request names it
    (X-Tokex-Issuer) and the audience (X-Tokex-Audience); an OIF token has it as its only
    audience; a service-account token is sent only if its audience is this issuer."""
    chosen = EvidenceOptions.of(
        evidence,
        token_file=token_file,
        signing_algorithm=signing_algorithm,
        instance_evidence=instance_evidence,
    )
    endpoint = check_endpoint(endpoint)
    token_type, subject_token = _subject_token(
        chosen,
        endpoint,
        audience,
        region=region,
        issuer=issuer,
        session=session,
        timeout=timeout,
    )
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": token_type,
        "subject_token": subject_token,
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
    response = _send(request, timeout)
    if not isinstance(response.get("access_token"), str):
        url = request.full_url
        raise TokenError(f"{url} answered without an access_token", error=NOT_TOKEX, url=url)
    return response


def _subject_token(
    chosen: EvidenceOptions,
    endpoint: str,
    audience: str,
    *,
    region: str | None,
    issuer: str | None,
    session: boto3.session.Session | None,
    timeout: float,
) -> tuple[str, str]:
    """(subject_token_type, subject_token) of the chosen evidence."""
    if chosen.kind == EKS:
        # Read first: a pod without its token volume fails before any network call.
        token = read_token_file(chosen.token_file)
        bound = issuer or discover_issuer(endpoint, timeout=timeout)
        check_token_audience(token, bound, source=chosen.token_file)
        return JWT_TOKEN_TYPE, token
    session = session or boto3.session.Session()
    # For the region asked for, else the session's, else the global partition's default:
    # a workload needs no configuration beyond its credentials.
    region = region or session.region_name or "us-east-1"
    if chosen.kind == AWS_OIF:
        bound = issuer or discover_issuer(endpoint, timeout=timeout)
        token = web_identity_token(
            issuer=bound,
            region=region,
            signing_algorithm=chosen.signing_algorithm,
            session=session,
            timeout=timeout,
        )
        return JWT_TOKEN_TYPE, token
    frozen = aws_credentials(session)
    signed = signed_get_caller_identity(
        frozen,
        region=region,
        issuer=issuer or discover_issuer(endpoint, timeout=timeout),
        audience=audience,
    )
    return SIGV4_TOKEN_TYPE, encode_subject_token(signed)


def aws_credentials(session: boto3.session.Session) -> ReadOnlyCredentials:
    """The session's credentials, frozen (a refreshable set is read once)."""
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials else None
    except BotoCoreError as err:
        raise TokenError(f"cannot load AWS credentials: {err}", error=NO_CREDENTIALS) from None
    if frozen is None:
        raise TokenError(
            "no AWS credentials found (the default credential chain: AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE, ~/.aws, an instance or task role)",
            error=NO_CREDENTIALS,
        )
    return frozen


class TokenClient:
    """Caches one token per (audience, scopes) and refreshes it ahead of expiry.

    A cached token is served while more than `1 - REFRESH_AT` of its lifetime is left:
    the cached path is one lock and a dict look-up (no signing, no I/O). From
    `REFRESH_AT` of its lifetime on, one caller per (audience, scopes) exchanges a new
    token; the others keep getting the old token while it is still valid, and wait for the
    new one only once it has expired. Safe to share between threads.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        evidence: str = SIGV4,
        token_file: str | Path | None = None,
        **options: Any,
    ) -> None:
        """`evidence` and `token_file` (and `options`: request_token's other keyword
        arguments, `signing_algorithm` among them) are request_token's; a choice of
        evidence that cannot work is refused here (ValueError), not at the first token."""
        EvidenceOptions.of(
            evidence,
            token_file=token_file,
            signing_algorithm=options.get("signing_algorithm"),
            instance_evidence=options.get("instance_evidence"),
        )
        self._endpoint = endpoint
        self._clock = clock
        self._options = {**options, "evidence": evidence, "token_file": token_file}
        self._cache: dict[CacheKey, CachedToken] = {}
        self._flights: dict[CacheKey, threading.Lock] = {}  # one exchange in flight per key
        self._lock = threading.Lock()  # guards the two dicts, never held over I/O

    def token(self, audience: str, scopes: Sequence[str] = ()) -> str:
        key = cache_key(audience, scopes)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now < cached.refresh_at:
                return cached.access_token
            flight = self._flights.setdefault(key, threading.Lock())
        # Past the refresh point: while the old token is still valid, only the caller that
        # wins the flight lock waits for the exchange.
        if cached is not None and now < cached.expires_at:
            if not flight.acquire(blocking=False):
                return cached.access_token
        else:
            flight.acquire()
        try:
            with self._lock:  # refreshed by the caller we waited for?
                cached = self._cache.get(key)
            if cached is not None and self._clock() < cached.refresh_at:
                return cached.access_token
            response = request_token(self._endpoint, audience, scopes=scopes, **self._options)
            fresh = CachedToken.from_response(response, obtained_at=self._clock())
            with self._lock:
                self._cache[key] = fresh
            return fresh.access_token
        finally:
            flight.release()

    def cached_token(self, audience: str, scopes: Sequence[str] = ()) -> str | None:
        """The cached token if it is not due for refresh, else None: never any I/O (what an
        event loop may call before handing `token` to a thread)."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(cache_key(audience, scopes))
        return cached.access_token if cached is not None and now < cached.refresh_at else None

    def invalidate(
        self, audience: str, scopes: Sequence[str] = (), token: str | None = None
    ) -> bool:
        """Forget the cached token, so that the next `token` call exchanges a new one (the
        API answered 401 to it: revoked, or signed with a key it no longer trusts). With
        `token`, only if that is still the cached one: a token another caller already
        replaced stays. True if a token was forgotten."""
        key = cache_key(audience, scopes)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None or (token is not None and cached.access_token != token):
                return False
            del self._cache[key]
            return True


CacheKey = tuple[str, tuple[str, ...]]


def cache_key(audience: str, scopes: Sequence[str]) -> CacheKey:
    """Scopes in any order ask for the same token."""
    return audience, tuple(sorted(set(scopes)))


@dataclass(frozen=True)
class CachedToken:
    access_token: str
    refresh_at: float  # the clock of `obtained_at` (monotonic in memory, epoch on disk)
    expires_at: float

    @classmethod
    def from_response(cls, response: dict[str, Any], *, obtained_at: float) -> CachedToken:
        """`expires_in` (RFC 6749 §5.1) counted from when the answer arrived; a token
        without one is refreshed at the next call."""
        try:
            lifetime = max(float(response.get("expires_in", 0)), 0.0)
        except (TypeError, ValueError):
            lifetime = 0.0
        return cls(
            access_token=str(response["access_token"]),
            refresh_at=obtained_at + REFRESH_AT * lifetime,
            expires_at=obtained_at + lifetime,
        )


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    return _send(request, timeout)


def _send(request: urllib.request.Request, timeout: float) -> dict[str, Any]:
    url = request.full_url
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            data = response.read(MAX_RESPONSE_BYTES + 1)
            return _parse(data, response.status, response.headers.get_content_type(), url)
    except urllib.error.HTTPError as err:
        try:
            body = _parse(err.read(MAX_RESPONSE_BYTES + 1), err.code, "", url)
        except TokenError:
            body = {}
        error = body.get("error")
        kind = err.headers.get_content_type() if err.headers else "no content type"
        answer = f"HTTP {err.code} {err.reason} ({kind})"
        if not isinstance(error, str):  # not an OAuth error response (RFC 6749 §5.2)
            raise TokenError(
                f"{url} answered {answer}, not a tokex answer",
                error=NOT_TOKEX,
                status=err.code,
                url=url,
                answer=answer,
            ) from None
        description = body.get("error_description") or err.reason
        raise TokenError(
            f"{error}: {description}",
            error=error,
            status=err.code,
            url=url,
            answer=f"HTTP {err.code} {error}: {description}",
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        why = getattr(reason, "strerror", None) or str(reason)
        raise TokenError(f"cannot reach {url}: {why}", error=UNREACHABLE, url=url) from None


def _parse(data: bytes, status: int, content_type: str, url: str) -> dict[str, Any]:
    try:
        if len(data) > MAX_RESPONSE_BYTES:
            raise ValueError("response too large")
        parsed = json.loads(data)
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
        return parsed
    except ValueError:
        answer = f"HTTP {status} ({content_type or 'no content type'}), not a JSON object"
        raise TokenError(
            f"{url} answered {answer}", error=NOT_TOKEX, status=status, url=url, answer=answer
        ) from None
