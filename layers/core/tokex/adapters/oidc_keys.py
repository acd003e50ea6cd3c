"""A trusted JWT issuer's verification keys, from its OpenID Connect discovery document
and JWKS (OpenID Connect Discovery 1.0 §4; RFC 7517 §5): the `IssuerKeys` of
evidence/jwt_evidence.py.

Fetching: `{issuer}/.well-known/openid-configuration`, whose `issuer` must be the
configured issuer exactly (Discovery §4.3: otherwise the document is another issuer's),
then its `jwks_uri` (https; plain http only on loopback in local mode; an IP address of
a non-global range, however spelt, only if it is the issuer's own host). Both over the
bounded transport (bounded_http.py), so every read ends by the request's
deadline; TLS verified against the system CA store; no proxy from the environment; no
redirect followed (a 3xx is a failure); the size limit enforced while reading; strict
JSON objects only (strict_json.py). Keys are parsed one by one with `jwt.PyJWK`, each
bound to one algorithm; a key of another type, curve, algorithm or `use`, a weak RSA key,
and every key of a `kid` listed twice are skipped, never a failure of the whole set.

Caching, per issuer: the keys by `kid` and when they were fetched.
- A cache older than `refresh_seconds` is refetched on its next use. If that refetch
  fails and the cached keys are younger than MAX_STALE_SECONDS (24 h), they stay in use
  (a warning is logged): an issuer's short outage must not stop every exchange.
- An unknown `kid` refetches (a rotation may have published it) only if the last fetch
  started more than `min_refetch_seconds` ago; otherwise the key is unknown (None). A
  flood of random kids costs at most one fetch per interval per issuer.
- After a failed fetch, the next one waits FAILED_FETCH_BACKOFF_SECONDS: an issuer that is
  down is asked once per backoff, not once per request; meanwhile callers get the same
  503 (or the usable stale keys).
- One fetch in flight per issuer: a lock per issuer; concurrent callers wait for it
  (never past their deadline) and share its result.

Failures are `TemporarilyUnavailable` (503, Retry-After) with the reason
`jwks:<issuer host>:<what>`; descriptions never echo what the issuer sent. Whatever else
a fetch raises is such a failure too (`unexpected`, logged with its traceback), so the
backoff and the cached keys apply to it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
import urllib3
from cryptography.hazmat.primitives.asymmetric import rsa

from tokex import bounded_http, deadline
from tokex.adapters.tracing import Traced, untraced
from tokex.clock import SuspendAwareClock
from tokex.errors import DeadlineExceeded, TemporarilyUnavailable
from tokex.evidence.jwt_evidence import MAX_KID_LENGTH
from tokex.evidence.trusted_issuers import TrustedIssuer
from tokex.issuer_url import LOOPBACK_HOSTS
from tokex.strict_json import StrictJsonError, loads_strict

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
# How long keys stay usable when their issuer cannot be reached for a refresh.
MAX_STALE_SECONDS = 24 * 3600
FAILED_FETCH_BACKOFF_SECONDS = 5.0
MAX_JWKS_KEYS = 100
MAX_URL_LENGTH = 2048
MIN_RSA_BITS = 2048
# The algorithm each supported key type and curve verifies (jwt_evidence.ALGORITHMS).
_ALGORITHM_OF: dict[tuple[object, object], str] = {("RSA", None): "RS256", ("EC", "P-384"): "ES384"}
# Members only a private or symmetric JWK has (RFC 7518 §6.2.2, §6.3.2, §6.4).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_DESCRIPTION = "the token issuer's signing keys could not be fetched; retry later"


@dataclass
class _IssuerCache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    keys: dict[str, jwt.PyJWK] | None = None  # None: never fetched
    fetched_at: float = 0.0  # the last successful fetch
    attempted_at: float | None = None  # the last fetch, successful or not
    failure: TemporarilyUnavailable | None = None  # the last fetch's, if it failed


class OidcIssuerKeys:
    """`IssuerKeys` over each issuer's discovery document and JWKS (see the module).

    `traced`: what each GET runs in (adapters/tracing.py), an X-Ray subsegment `jwks
    discovery` or `jwks jwks` (as the reasons name them) when the function traces."""

    def __init__(
        self,
        *,
        allow_http_loopback: bool = False,
        clock: Callable[[], float] | None = None,
        refresh_seconds: float = 3600,
        min_refetch_seconds: float = 60,
        max_document_bytes: int = 64 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        traced: Traced = untraced,
    ) -> None:
        self._allow_http_loopback = allow_http_loopback
        # Ages on a clock that a wall-clock step back cannot stop (a frozen environment's
        # sleep counted), as every other cache's: unless given.
        self._clock = clock or SuspendAwareClock()
        self._refresh_seconds = refresh_seconds
        self._min_refetch_seconds = min_refetch_seconds
        self._backoff_seconds = min(FAILED_FETCH_BACKOFF_SECONDS, min_refetch_seconds)
        self._max_document_bytes = max_document_bytes
        self._connect_timeout = connect_timeout
        self._traced = traced
        self._http = bounded_http.pool_manager(
            connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        if ssl_context is not None:  # tests: a private CA instead of the system store
            self._http.connection_pool_kw["ssl_context"] = ssl_context
        self._caches: dict[str, _IssuerCache] = {}
        self._caches_lock = threading.Lock()

    def key(self, issuer: TrustedIssuer, kid: str) -> jwt.PyJWK | None:
        with self._caches_lock:
            cache = self._caches.setdefault(issuer.issuer, _IssuerCache())
        deadline.acquire_within_deadline(cache.lock, "jwks")
        try:
            return self._key(cache, issuer, kid)
        finally:
            cache.lock.release()

    def _key(self, cache: _IssuerCache, issuer: TrustedIssuer, kid: str) -> jwt.PyJWK | None:
        now = self._clock()
        failed: TemporarilyUnavailable | None = None
        if cache.keys is None or now - cache.fetched_at >= self._refresh_seconds:
            if not (cache.failure and _age(cache.attempted_at, now) < self._backoff_seconds):
                failed = self._fetch_into(cache, issuer, now)
            if cache.keys is None or now - cache.fetched_at >= MAX_STALE_SECONDS:
                raise failed or _again(cache.failure)
        found = cache.keys.get(kid)
        if found is not None:
            return found
        if failed is None and _age(cache.attempted_at, now) >= self._min_refetch_seconds:
            # An unknown kid: the issuer may have rotated its keys since the last fetch.
            failed = self._fetch_into(cache, issuer, now)
            found = cache.keys.get(kid)
        if found is None and (failed or cache.failure) is not None:
            # The keys may be out of date: whether the issuer publishes `kid` is unknown.
            raise failed or _again(cache.failure)
        return found

    def _fetch_into(
        self, cache: _IssuerCache, issuer: TrustedIssuer, now: float
    ) -> TemporarilyUnavailable | None:
        """Fetch the issuer's keys into `cache`; the failure, if it failed."""
        attempted_before, cache.attempted_at = cache.attempted_at, now
        budget = deadline.current()
        fair_chance = budget is None or budget.remaining() >= self._connect_timeout
        try:
            keys = self._fetch(issuer)
        except DeadlineExceeded as exc:
            if fair_chance:  # given its connect timeout or more, the issuer did not answer
                return _failed(cache, issuer, exc, now)
            # This request came with too little time left to tell anything of the issuer:
            # the next one, with a budget of its own, tries at once (no backoff, no
            # refetch limit).
            cache.attempted_at = attempted_before
            return exc
        except TemporarilyUnavailable as exc:
            return _failed(cache, issuer, exc, now)
        except Exception:  # a bug, or input nothing above foresaw: the issuer's failure
            # all the same, so its cached keys keep serving and the backoff holds.
            log.exception("fetching the keys of %s failed unexpectedly", issuer.issuer)
            host = urlsplit(issuer.issuer).hostname or "?"
            return _failed(cache, issuer, _unavailable(host, "unexpected"), now)
        cache.keys, cache.fetched_at, cache.failure = keys, now, None
        return None

    def _fetch(self, issuer: TrustedIssuer) -> dict[str, jwt.PyJWK]:
        host = urlsplit(issuer.issuer).hostname or "?"
        discovery_url = issuer.issuer + DISCOVERY_PATH
        if not self._allowed_url(discovery_url):
            raise _unavailable(host, "issuer_url")
        discovery = self._get_json(discovery_url, host, "discovery")
        if discovery.get("issuer") != issuer.issuer:
            raise _unavailable(host, "discovery_issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not self._allowed_url(jwks_uri):
            raise _unavailable(host, "jwks_uri")
        if _internal_address(jwks_uri, host):
            # The discovery document must not point the exchange at an address of its own
            # network (IMDS, a private service): only the issuer's own host may be one.
            raise _unavailable(host, "jwks_uri_internal")
        return _verification_keys(self._get_json(jwks_uri, host, "jwks"), host)

    def _allowed_url(self, url: str) -> bool:
        """https with a host; plain http only on loopback, only when allowed (local
        mode). No credentials, no control characters."""
        if len(url) > MAX_URL_LENGTH or any(ord(c) < 0x21 or ord(c) > 0x7E for c in url):
            return False
        try:
            parts = urlsplit(url)
            connected = urllib3.util.parse_url(url)
        except (ValueError, urllib3.exceptions.LocationParseError):
            return False
        if parts.username or parts.password or not parts.hostname:
            return False
        # The checks read the URL as urlsplit does, the connection as urllib3 does: they
        # must name the same host (`https://169.254.169.254\.example/`: urllib3 ends the
        # host at the backslash, urlsplit does not, and the address check saw a name).
        if (connected.host or "").strip("[]").lower() != parts.hostname.lower():
            return False
        if parts.scheme == "https":
            return True
        return (
            parts.scheme == "http"
            and self._allow_http_loopback
            and parts.hostname in LOOPBACK_HOSTS
        )

    def _get_json(self, url: str, host: str, what: str) -> dict[str, Any]:
        """`url`'s document (`_get`), a strict JSON object."""
        with self._traced(f"jwks {what}", urlsplit(url).hostname or host):
            data = self._get(url, host, what)
        try:
            document = loads_strict(data.decode("utf-8"))
        except (ValueError, StrictJsonError):  # UnicodeDecodeError is a ValueError
            raise _unavailable(host, f"{what}_json") from None
        if not isinstance(document, dict):
            raise _unavailable(host, f"{what}_json")
        return document

    def _get(self, url: str, host: str, what: str) -> bytes:
        """GET `url`: HTTP 200, no content encoding, at most max_document_bytes (read no
        further)."""
        current = deadline.current()
        if current is not None:
            current.check("jwks")
        limit = self._max_document_bytes
        try:
            response = self._http.request(
                "GET",
                url,
                headers={"Accept": "application/json"},
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
            )
            try:
                data = _read_body(response, limit, host, what)
            except BaseException:
                response.close()  # never drain a refused body to reuse the connection
                raise
            response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired():
                raise DeadlineExceeded("jwks") from None
            timed_out = isinstance(
                exc, urllib3.exceptions.TimeoutError | TimeoutError
            ) and not isinstance(exc, urllib3.exceptions.NewConnectionError)
            raise _unavailable(
                host, f"{what}_{'timeout' if timed_out else 'unreachable'}"
            ) from None
        return data


def _failed(
    cache: _IssuerCache, issuer: TrustedIssuer, exc: TemporarilyUnavailable, now: float
) -> TemporarilyUnavailable:
    """Records the issuer's failure (the backoff counts from it; keys under a day old
    still serve); returns it."""
    cache.failure = exc
    age = now - cache.fetched_at
    if cache.keys is not None and age < MAX_STALE_SECONDS:
        log.warning(
            "JWKS of %s could not be refreshed (%s): keeping the keys fetched %d s ago",
            issuer.issuer,
            exc.reason,
            age,
        )
    else:
        log.warning("JWKS of %s could not be fetched (%s)", issuer.issuer, exc.reason)
    return exc


def _read_body(response: Any, limit: int, host: str, what: str) -> bytes:
    if response.status != 200:  # a redirect above all: never followed
        raise _unavailable(host, f"{what}_http_{response.status}")
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise _unavailable(host, f"{what}_encoded")
    declared = response.headers.get("Content-Length")
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        raise _unavailable(host, f"{what}_content_length")
    # Length first: int() refuses strings of more than 4300 digits.
    if declared is not None and (len(declared) > len(str(limit)) or int(declared) > limit):
        raise _unavailable(host, f"{what}_too_large")
    data: bytes = response.read(limit + 1, decode_content=False)
    if len(data) > limit:
        raise _unavailable(host, f"{what}_too_large")
    return data


def _verification_keys(jwks: dict[str, Any], host: str) -> dict[str, jwt.PyJWK]:
    """The JWKS's usable signing keys by kid; a kid listed twice is nobody's."""
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise _unavailable(host, "jwks_keys")
    if len(entries) > MAX_JWKS_KEYS:
        raise _unavailable(host, "jwks_too_many_keys")
    kids = [entry.get("kid") if isinstance(entry, dict) else None for entry in entries]
    keys: dict[str, jwt.PyJWK] = {}
    for entry, kid in zip(entries, kids, strict=True):
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH:
            continue
        if kids.count(kid) > 1:
            log.warning("JWKS of %s lists a kid more than once: none of its keys is used", host)
            continue
        key = _verification_key(entry)
        if key is not None:
            keys[kid] = key
    return keys


def _verification_key(entry: dict[str, Any]) -> jwt.PyJWK | None:
    """A public signing key bound to the one algorithm its type verifies, or None."""
    if entry.get("use", "sig") != "sig" or _PRIVATE_MEMBERS & entry.keys():
        return None
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kty = entry.get("kty")
    crv = entry.get("crv") if kty == "EC" else None
    if not isinstance(kty, str) or not isinstance(crv, str | None):
        return None  # a key of another type: skipped, never a failure of the whole set
    algorithm = _ALGORITHM_OF.get((kty, crv))
    if algorithm is None or entry.get("alg", algorithm) != algorithm:
        return None
    try:
        key = jwt.PyJWK(entry, algorithm)
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
        return None
    return key


def _internal_address(url: str, issuer_host: str) -> bool:
    """`url`'s host is an IP address that is not global (loopback, private, link-local,
    unique local, reserved) and not the issuer's own host. Any spelling the resolver reads
    as an IPv4 address counts (`2852039166`, `0xa9.0xfe.0xa9.0xfe`, `127.1`); a name that
    resolves to such an address is not looked up here."""
    hostname = urlsplit(url).hostname or ""
    if hostname == issuer_host:
        return False
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(hostname)
    except ValueError:
        try:  # inet_aton reads the spellings getaddrinfo does, ip_address only dotted quads
            address = ipaddress.IPv4Address(socket.inet_aton(hostname))
        except OSError:
            return False  # a name
    return not address.is_global


def _age(moment: float | None, now: float) -> float:
    return float("inf") if moment is None else now - moment


def _again(failure: TemporarilyUnavailable | None) -> TemporarilyUnavailable:
    """The last fetch's failure, as a new exception (each request raises its own)."""
    assert failure is not None
    return failure.again()


def _unavailable(host: str, what: str) -> TemporarilyUnavailable:
    return TemporarilyUnavailable(_DESCRIPTION, reason=f"jwks:{host}:{what}")
