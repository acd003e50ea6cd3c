"""Exchanges the workload's AWS identity for a tokex access token.

client = TokenClient("https://auth.example.com")
token = client.token("orders-api", scopes=["orders:read"])   # refreshed at 80 % of its lifetime

The evidence is a signed GetCallerIdentity by default (`evidence="sigv4"`), or a JWT:
`evidence="aws-oif"` (`"oif"`; sts:GetWebIdentityToken) or `evidence="eks"` (the pod's
projected service-account token, `token_file=`): client/evidence.py.

A multi-Region deployment lists its Regions in its discovery document (`tokex_regions`):
the client asks the workload's own Region first, and fails over to the next one when a
Region does not answer or answers 5xx (or a 4xx that is no tokex answer), or refuses
evidence made for it (fails_over), all within `timeout` (request_token). A Regional
token endpoint is only ever `{endpoint}/regions/<region>/token` (discover). When the
document cannot be read (home, which publishes it, is down), the last good one this
process read is used (current_discovery).
"""

from __future__ import annotations

import email.utils
import http.client
import inspect
import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import BotoCoreError, ClientError

from tokex import bounded_http, deadline, identifiers
from tokex.client.endpoint import check_endpoint, is_loopback, redacted_text
from tokex.client.evidence import (
    AWS_OIF,
    EKS,
    REGIONAL_STS_REFUSALS,
    SIGV4,
    EvidenceOptions,
    check_token_audience,
    read_token_file,
    web_identity_token,
)
from tokex.client.imds import instance_region
from tokex.client.signing import (
    encode_subject_token,
    signed_get_caller_identity,
    use_fips_endpoint,
)
from tokex.client.token_error import (
    AWS_ERROR,
    AWS_SDK,
    ISSUER_MISMATCH,
    NO_CREDENTIALS,
    NOT_TOKEX,
    TEMPORARILY_UNAVAILABLE,
    UNREACHABLE,
    TokenError,
    raised_in,
)
from tokex.clock import SuspendAwareClock
from tokex.errors import InvalidGrant
from tokex.evidence.sts_endpoints import FIPS_REGIONS, THROTTLING_CODES
from tokex.regions import DISCOVERY_MEMBER, REGION_VARIABLES, TOKEN_PATH, regional_path
from tokex.token_request import JWT_TOKEN_TYPE, SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

# Each Region tried and the evidence sent to it (DEBUG: a line per exchange would fill a
# workload's INFO logs, and cost it a record each time), each failover and each discovery
# document fallen back on (WARNING); silent unless the application configures logging
# (`tokex token -v` shows them all).
log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

# A token is refreshed once this fraction of its lifetime has passed: with tokex's default
# 15-minute tokens, after 12 minutes, so a token is never presented in its last minutes and
# a refresh that fails has the remaining 20 % of the lifetime to be retried.
REFRESH_AT = 0.8
# After a refresh failed while the token it was to replace is still valid, that token is
# served (no I/O) for this long before the refresh is tried again: a short outage of tokex
# is no outage of the workload, and its calls do not each wait for a failing exchange.
REFRESH_RETRY_SECONDS = 5.0
# With no valid token to stand in, a failed exchange is the answer to every call for this
# long (or its `Retry-After`, up to MAX_FAILURE_HOLD_SECONDS), raised again without I/O: a
# busy workload does not turn tokex's 429 or outage into an exchange per call, each one
# spending its role's rate limit again.
FAILURE_HOLD_SECONDS = 1.0
MAX_FAILURE_HOLD_SECONDS = 60.0
# An API's 401 forgets the token it refused only once the token is this old: one refused
# as soon as it was issued would be refused again (the audience or scopes are wrong), and
# forgetting it would cost an exchange per request.
INVALIDATE_MIN_AGE_SECONDS = 5.0
# A call waiting for the exchange another caller leads waits at most that exchange's
# timeout and this much more, then fails: loading the AWS credentials (a
# credential_process, an assume-role profile) happens outside the timeout and may hang.
FLIGHT_WAIT_MARGIN_SECONDS = 5.0

MAX_RESPONSE_BYTES = 64 * 1024
# The longest a tokex token lives (CDK `ttlCapSeconds`, TOKEX_TTL_CAP_SECONDS: 60-43200).
MAX_TOKEN_LIFETIME_SECONDS = 43200.0
# A token's life is counted from this long before it was asked for. tokex counts
# `expires_in` from its answer, to the whole second after it, so this is a second to spare
# there; an issuer that counts from the whole second before it issued the token
# (`exp - iat`, as tokex did before) names a life that may have begun up to a second
# before the request left.
ISSUED_TO_THE_SECOND = 1.0
# RFC 6750 §2.1 b64token: what a bearer token may be (a JWT is).
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

# The seconds one token call may take, discovery and every Region's attempt together
# (`timeout=`, `tokex token --timeout`): above the exchange's own 6 s deadline, so a
# single-Region caller hears its 503 rather than giving up first (docs/contract.md).
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 3600.0  # an hour: anything longer is a mistake (and overflows clocks at 1e20)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A signed request goes to the endpoint the workload named, nowhere else: a redirect
    is answered as the non-2xx answer it is (not a tokex answer). Its `Location` is never
    read: urllib parses it before asking `redirect_request`, and one that is no URL
    (`http://[::1/x`) raised a bare ValueError."""

    def http_error_302(self, *args: Any, **kwargs: Any) -> None:
        return None  # the default handler raises the answer as an HTTPError

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


# Connections that open, send and read within the call's budget (`_send`).
_OPENER = bounded_http.urllib_opener(_NoRedirects)


@dataclass(frozen=True)
class RegionalEndpoint:
    """One Region of a multi-Region deployment, as its discovery document lists it."""

    region: str
    token_endpoint: str


@dataclass(frozen=True)
class Discovery:
    """What the client reads from the issuer's discovery document: the issuer it binds
    to and, for a multi-Region deployment, its Regions (home first) with their token
    endpoints; none for a single-Region one."""

    issuer: str
    regions: tuple[RegionalEndpoint, ...] = ()


def discover(endpoint: str, *, timeout: float = 5.0) -> Discovery:
    """The endpoint's discovery document, read once: its issuer, which must be the
    endpoint itself (otherwise a look-alike endpoint could name a real issuer, collect
    requests signed for it and replay them there: use `issuer=` (`--issuer`) to bind
    deliberately when the token endpoint is not served at the issuer URL), and its
    `tokex_regions` (tokex/regions.py): the Regions' own token endpoints, each exactly
    `{endpoint}/regions/<region>/token`."""
    endpoint = check_endpoint(endpoint)  # a host urllib cannot send is a TokenError
    url = endpoint.rstrip("/") + "/.well-known/openid-configuration"
    try:
        document = get_json(url, timeout)
    except TokenError as err:
        if err.status is None or err.status >= 500 or err.status == 429:  # none, or down
            raise
        raise TokenError(
            f"{endpoint} is not a tokex issuer: its discovery document {url} answered "
            f"{err.answer}. Pass the issuer URL: `tokex local` prints it, a deployment has "
            "it as its IssuerUrl stack output",
            error=NOT_TOKEX,
            status=err.status,
            url=url,
        ) from None
    return discovery_of(document, endpoint, url)


def discovery_of(document: dict[str, Any], endpoint: str, url: str) -> Discovery:
    """The issuer and Regions of `document`, the discovery document of `endpoint` read
    from `url`, checked as `discover` says (TokenError otherwise)."""
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
    regions = _regional_endpoints(document.get(DISCOVERY_MEMBER), endpoint.rstrip("/"), url)
    return Discovery(issuer, regions)


class LastGoodDiscoveries:
    """Per endpoint, the last good discovery document this process read, for when a later
    fetch gets no usable answer: the home Region publishes the document, and its outage
    must not take with it the Regions that would fail over (`current_discovery`). Shared
    by every TokenClient, auth class and thread of the process (one lock, never held over
    I/O); at most MAX_ENDPOINTS endpoints, the least recently fetched forgotten first."""

    MAX_ENDPOINTS = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # endpoint -> (when its answer came, on the monotonic clock; the document)
        self._kept: dict[str, tuple[float, Discovery]] = {}

    def keep(self, endpoint: str, discovery: Discovery, *, fetched_at: float) -> None:
        """Keeps `discovery` unless one fetched later is kept already (threads whose
        fetches overlap store in any order: the newest answer wins)."""
        with self._lock:
            kept = self._kept.get(endpoint)
            if kept is not None and kept[0] > fetched_at:
                return
            self._kept.pop(endpoint, None)  # re-inserted last: the most recent
            self._kept[endpoint] = (fetched_at, discovery)
            while len(self._kept) > self.MAX_ENDPOINTS:
                del self._kept[next(iter(self._kept))]

    def last(self, endpoint: str) -> Discovery | None:
        with self._lock:
            kept = self._kept.get(endpoint)
        return kept[1] if kept is not None else None

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def _forked(self) -> None:
        """In the child of os.fork(): a lock another thread held at the fork stays held
        there for good."""
        self._lock = threading.Lock()


# The process's one store (`tokex token`, a fresh process each run, starts with what
# --cache-dir kept, if anything).
LAST_GOOD_DISCOVERIES = LastGoodDiscoveries()


def current_discovery(endpoint: str, budget: _Budget) -> Discovery:
    """The endpoint's discovery document (`discover`), fetched now and kept. When the fetch
    gets no usable answer (none, a 5xx or 429, an answer that is no JSON object) and the
    last good document this process read lists Regions, that one: the workload fails over
    between the Regions it knows while home, which publishes the document, is down. A
    fresh document is always the one used; an answer that is a document but a wrong one
    (another issuer, a malformed `tokex_regions`, a 4xx) is refused as it always was; a
    process that never read the document has nothing to fall back on."""
    last = LAST_GOOD_DISCOVERIES.last(endpoint)
    fallback = last if last is not None and last.regions else None
    timeout = budget.left()
    if fallback is not None:
        # The fetch gets one share, as one more Region would: one that never answers
        # leaves the Regions their time.
        timeout /= len(fallback.regions) + 1
    try:
        discovery = discover(endpoint, timeout=timeout)
    except TokenError as err:
        if fallback is None or not _no_usable_answer(err):
            raise
        log.warning(
            "%s; trying the Regions of the last discovery document read: %s",
            err,
            ", ".join(r.region for r in fallback.regions),
        )
        return fallback
    LAST_GOOD_DISCOVERIES.keep(endpoint, discovery, fetched_at=time.monotonic())
    return discovery


def _no_usable_answer(err: TokenError) -> bool:
    """A discovery fetch that got no answer, a 5xx or 429 (an outage, not a verdict), or a
    2xx that is no JSON object (an error page); not a 3xx or 4xx, nor a JSON document
    that is wrong."""
    if err.status is None:
        return err.error == UNREACHABLE
    return err.status >= 500 or err.status == 429 or 200 <= err.status < 300


def _regional_endpoints(listed: object, issuer: str, url: str) -> tuple[RegionalEndpoint, ...]:
    """`tokex_regions` in its order (tokex/regions.py), each Region's token endpoint exactly
    the one tokex publishes for it under `issuer` (the endpoint the workload configured):
    `{issuer}/regions/<region>/token`. An entry that is not what tokex publishes refuses
    the whole document (`not_tokex`) rather than be skipped."""
    if listed is None or listed == []:
        return ()

    def refuse(why: str) -> TokenError:
        return TokenError(f"{url}: {DISCOVERY_MEMBER} {why}", error=NOT_TOKEX, url=url)

    if not isinstance(listed, list):
        raise refuse("is not a list")
    found: list[RegionalEndpoint] = []
    for entry in listed:
        region = entry.get("region") if isinstance(entry, dict) else None
        token_endpoint = entry.get("token_endpoint") if isinstance(entry, dict) else None
        if not isinstance(region, str) or not identifiers.is_region(region):
            raise refuse(f"has an entry without a region name: {json.dumps(entry)[:200]}")
        if any(known.region == region for known in found):
            raise refuse(f"lists {region} twice")
        # The client posts its signed evidence there: a request that proves the workload's
        # AWS credentials and can be replayed for minutes. Before multi-Region it only ever
        # went to `{issuer}/token`, the issuer the workload configured; a tampered or
        # misconfigured discovery document must not be able to send it anywhere else (another
        # host, port or path), so a Regional endpoint is only ever the one tokex publishes for
        # that Region under this issuer, compared exactly.
        expected = issuer + regional_path(region, TOKEN_PATH)
        # The shape first (the clearer message), then the exact URL.
        if not isinstance(token_endpoint, str) or not _plain_https_url(token_endpoint):
            raise refuse(
                f"has no https token endpoint for {region} (plain http only on loopback): "
                f"tokex publishes {expected}"
            )
        if token_endpoint != expected:
            raise refuse(
                f"gives {region} the token endpoint {token_endpoint!r}, not {expected}: a "
                "Regional token endpoint must be the one this issuer publishes for that Region"
            )
        found.append(RegionalEndpoint(region, token_endpoint))
    return tuple(found)


def _plain_https_url(url: str) -> bool:
    """https (http on loopback) with a host, without user, query or fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return (
        bool(host)
        and (parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host or "")))
        and not (parts.username or parts.password or parts.query or parts.fragment)
    )


def check_timeout(timeout: object) -> float:
    """A positive number of seconds, at most MAX_TIMEOUT (ValueError otherwise)."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise ValueError(
            f"timeout must be a positive number of seconds, at most {MAX_TIMEOUT:g}, "
            f"not {timeout!r}"
        )
    return float(timeout)


def request_token(
    endpoint: str,
    audience: str,
    *,
    scopes: Sequence[str] = (),
    region: str | None = None,
    issuer: str | None = None,
    instance_evidence: str | None = None,
    session: boto3.session.Session | None = None,
    timeout: float = DEFAULT_TIMEOUT,
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
    audience; a service-account token is sent only if its audience is this issuer.

    `timeout`: the seconds the whole call may take (discovery and every attempt).

    A multi-Region deployment (its discovery document lists `tokex_regions`) is asked
    Region by Region: `region` first if it is listed (default: AWS_REGION,
    AWS_DEFAULT_REGION, the profile's region), then the others in the listed order. Each
    attempt brings evidence for that Region (signed for its STS, or an OIF token from its
    STS) to its own token endpoint, within an equal share of the time left (the last one
    gets all of it). Only a Region that does not answer (connection refused or reset, DNS,
    a timeout), answers 5xx or a 4xx that is no tokex answer, or refuses the evidence made
    for it (tokex's `invalid_grant`; with aws-oif, its STS refusing or throttling the call)
    is failed over (fails_over); tokex's other 4xx is a refusal, raised at once. When every
    Region failed, the first refusal of the evidence (refused_in_region) is raised, else
    (all down or throttling) the last error, naming the Regions tried. The Regions are those of
    the discovery document read now, or, when it gets no usable answer, of the last good
    one this process read (current_discovery). Without
    `tokex_regions`, or with `issuer` given (no discovery), one attempt at
    `{endpoint}/token`, signed for `region`, else the region of the `session` given, else
    AWS_REGION, AWS_DEFAULT_REGION or the profile's (as the CLI resolves it), else the
    region the instance identity document in `instance_evidence` names (EC2 sets no
    region variable), else us-east-1: outside the aws partition, a workload without
    instance evidence must configure its region. (A `session` given with a region of its
    own, or the instance's region, is asked first among the Regions too.)"""
    chosen = EvidenceOptions.of(
        evidence,
        token_file=token_file,
        signing_algorithm=signing_algorithm,
        instance_evidence=instance_evidence,
    )
    scopes = check_scopes(scopes)
    endpoint = check_endpoint(endpoint)
    budget = _Budget(check_timeout(timeout))
    if region is not None and not identifiers.is_region(region):  # as TokenClient's
        raise ValueError(f"region {region!r} is not an AWS Region name (e.g. eu-west-1)")
    evidence_for = _EvidenceSource(
        chosen,
        endpoint,
        audience,
        issuer=issuer,
        session=session,
        instance_evidence=instance_evidence,
        budget=budget,
    )
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": "",
        "subject_token": "",
        "audience": audience,
    }
    if scopes:
        form["scope"] = " ".join(scopes)
    if instance_evidence:
        form["aws_instance_identity"] = instance_evidence
    attempts = evidence_for.attempts(region)
    failed: list[tuple[str, TokenError]] = []  # (Region, its error), in the order asked
    for index, (attempt_region, url) in enumerate(attempts):
        left = budget.left()
        if left <= 0:
            break
        # An equal share of what is left, so that a Region that never answers leaves time
        # for the others; the last one tried gets all of it.
        share = _Budget(left / (len(attempts) - index))
        if evidence_for.regional:
            log.debug("exchanging at %s (Region %s)", url, attempt_region)
        if log.isEnabledFor(logging.DEBUG):
            # Per attempt: in a multi-Region deployment, each Region has evidence of its own.
            log.debug("sending %s", chosen.described(attempt_region))
        try:
            token_type, subject_token = evidence_for.subject_token(attempt_region, share)
            form.update(subject_token_type=token_type, subject_token=subject_token)
            return _post_form(url, form, share)
        except TokenError as err:
            if not evidence_for.regional or not fails_over(err, evidence=chosen.kind):
                raise
            failed.append((str(attempt_region), err))
            if index + 1 < len(attempts):
                log.warning(
                    "Region %s failed: %s; trying %s", attempt_region, err, attempts[index + 1][0]
                )
    tried = [failed_region for failed_region, _ in failed]
    untried = [str(r) for r, _ in attempts[len(failed) :]]
    ran_out = f"the {budget.seconds:g} s timeout ran out before {', '.join(untried)}"
    if not failed:  # the budget was spent before the first attempt (on discovery)
        url = attempts[0][1]
        raise TokenError(f"cannot reach {url}: {ran_out}", error=UNREACHABLE, url=url)
    # A refusal says more than an outage, and the first one most: the Region asked first
    # (the workload's own, when it answered) says in its words what is wrong with the
    # evidence (a bad signature, expired credentials); a later one may only say that STS is
    # off in that Region. With none, the last failure (it had the most time).
    reported_region, reported = next(
        ((r, err) for r, err in failed if refused_in_region(err)), failed[-1]
    )
    if reported is not failed[-1][1]:  # every Region's failure is in the log (-v)
        log.warning("Region %s failed: %s", *failed[-1])
    raise reported.again(
        f"no Region gave a token (tried {', '.join(tried)}{'; ' + ran_out if untried else ''})"
        f"; {reported_region}: {reported}"
    )


def fails_over(err: TokenError, *, evidence: str = SIGV4) -> bool:
    """Whether another Region may give the token this one did not: no answer (refused,
    reset, DNS, timed out), a 5xx, or a 4xx that is no tokex answer (API Gateway's 404 of a
    Region whose stack is not deployed yet, CloudFront's 403 of one just removed: its
    path is not a tokex endpoint; API Gateway's 429 `{"message": "Too Many Requests"}` of
    a Regional API over its stage throttle); with aws-oif, its STS throttling the client's
    own call (with sigv4, tokex's 503); and, for `evidence` made for each Region (sigv4,
    aws-oif), a refusal that may be that Region's own (refused_in_region).
    tokex's other refusals (`invalid_target`, `invalid_scope`, `invalid_request`,
    `invalid_client`, its 429 of a caller over its rate limit: asking on would multiply
    the load), an answer that is no token, a local failure (credentials, the token file)
    would be the same everywhere; so would an `invalid_grant` of `eks` evidence, the same
    token everywhere. Each Region is asked with evidence of its own, so asking another
    spends nothing twice."""
    if err.status is not None:
        no_tokex_answer = err.error in (NOT_TOKEX, TEMPORARILY_UNAVAILABLE) and not err.oauth
        if err.status >= 500 or (no_tokex_answer and 400 <= err.status < 500):
            return True
    elif err.error == UNREACHABLE:
        return True
    if err.aws_code in THROTTLING_CODES:
        return True
    return evidence != EKS and refused_in_region(err)


def refused_in_region(err: TokenError) -> bool:
    """Whether a Region refused the evidence made for it, which another Region's own may
    not: tokex's `invalid_grant` (its exchange answers so any 4xx of its Region's STS:
    RegionDisabledException where the account deactivated STS, as AWS recommends for
    Regions it does not use; InvalidClientTokenId in an opt-in Region it has not enabled),
    or, with aws-oif, that Region's STS refusing the client's own call for the same reasons
    (REGIONAL_STS_REFUSALS)."""
    invalid_grant = err.oauth and err.error == InvalidGrant.error
    return invalid_grant or err.aws_code in REGIONAL_STS_REFUSALS


def _post_form(url: str, form: dict[str, str], budget: _Budget) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the operator's tokex (check_endpoint)
        url,
        data=urllib.parse.urlencode(form).encode("ascii"),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        method="POST",
    )
    response = _send(request, budget.left())  # a spent budget: "timed out", nothing sent
    token = response.get("access_token")
    if not isinstance(token, str):
        raise TokenError(f"{url} answered without an access_token", error=NOT_TOKEX, url=url)
    if not BEARER_TOKEN.fullmatch(token):
        # It goes into Authorization headers and onto terminals: anything else (CR LF,
        # escapes, a lone surrogate, nothing at all) would break or abuse them.
        raise TokenError(
            f"{url} answered an access_token that is not a bearer token (RFC 6750 b64token)",
            error=NOT_TOKEX,
            url=url,
        )
    lifetime = response.get("expires_in")
    if lifetime is not None and not (
        isinstance(lifetime, int | float)
        and not isinstance(lifetime, bool)
        and 0 <= lifetime < math.inf
    ):
        raise TokenError(
            f"{url} answered an expires_in that is not a number of seconds",
            error=NOT_TOKEX,
            url=url,
        )
    return response


class _Budget:
    """Seconds from now, counted on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends = time.monotonic() + seconds

    def left(self) -> float:
        return self._ends - time.monotonic()


class _EvidenceSource:
    """The chosen evidence for one call, gathered in today's order (credentials or the
    token file before the network; then discovery, once) and made for each Region."""

    def __init__(
        self,
        chosen: EvidenceOptions,
        endpoint: str,
        audience: str,
        *,
        issuer: str | None,
        session: boto3.session.Session | None,
        instance_evidence: str | None,
        budget: _Budget,
    ) -> None:
        self.chosen = chosen
        self.endpoint = endpoint
        self.audience = audience
        self.session: boto3.session.Session | None = None
        # A region the caller set on its session (`Session(region_name=...)`) wins over the
        # environment's; one botocore filled in from AWS_DEFAULT_REGION or the profile does
        # not (`region_name` says both alike: the explicit one is the session's instance
        # variable).
        self.given_region = _explicit_region(session)
        # The instance's own Region, for an instance with none configured (EC2 sets no
        # AWS_REGION): signing for us-east-1 there is refused outside the aws partition.
        self.instance_region = instance_region(instance_evidence) if instance_evidence else None
        self.credentials: ReadOnlyCredentials | None = None
        # Whether the SDK is set to use FIPS endpoints: sigv4 evidence is then signed for
        # the Region's FIPS STS (signing.sts_endpoint); aws-oif's botocore client honours
        # the setting itself.
        self.fips = False
        self.token = ""
        if chosen.kind == EKS:
            # Read first: a pod without its token volume fails before any network call.
            self.token = read_token_file(chosen.token_file)
        else:
            self.session = session or _session()
            # Read first for aws-oif too (its STS client reuses them): a credential_process
            # that answers garbage, or credentials no request could carry, fail here.
            self.credentials = aws_credentials(self.session)
            self.fips = chosen.kind == SIGV4 and use_fips_endpoint(self.session)
            if budget.left() <= 0:  # botocore's own timeouts, not the call's, bound this
                raise TokenError(
                    f"loading the AWS credentials took longer than the {budget.seconds:g} s"
                    " timeout",
                    error=UNREACHABLE,
                )
        self.discovery = Discovery(issuer) if issuer else current_discovery(endpoint, budget)
        if chosen.kind == EKS:
            check_token_audience(self.token, self.discovery.issuer, source=chosen.token_file)

    @property
    def regional(self) -> bool:
        return bool(self.discovery.regions)

    def attempts(self, region: str | None) -> list[tuple[str | None, str]]:
        """(Region to make evidence for, token endpoint) in the order to try them."""
        if not self.regional:
            if self.session is not None:
                # Else the aws partition's default: a workload there needs no configuration
                # beyond its credentials.
                region = self.preferred(region) or "us-east-1"
            return [(region, self.endpoint + "/token")]
        preferred = self.preferred(region)
        listed = list(self.discovery.regions)
        if self.fips:
            # Only a Region with a FIPS STS endpoint can take FIPS evidence (a Regional
            # exchange accepts its own Region's STS only); with none listed, the first
            # attempt says why (sts_endpoint's TokenError).
            capable = [r for r in listed if r.region in FIPS_REGIONS]
            if capable and len(capable) < len(listed):
                left_out = ", ".join(r.region for r in listed if r not in capable)
                log.debug("FIPS endpoints are on: not asking %s (no FIPS STS)", left_out)
                listed = capable
        first = [r for r in listed if r.region == preferred]
        return [(r.region, r.token_endpoint) for r in first + [r for r in listed if r not in first]]

    def preferred(self, region: str | None) -> str | None:
        """The region asked for (or the session's own), else AWS_REGION,
        AWS_DEFAULT_REGION or the profile's (as the CLI resolves it; botocore's session
        reads no AWS_REGION), else the instance identity document's, in this order."""
        return preferred_region(region or self.given_region, self.session) or self.instance_region

    def subject_token(self, region: str | None, budget: _Budget) -> tuple[str, str]:
        """(subject_token_type, subject_token) made for `region`."""
        if self.chosen.kind == EKS:
            return JWT_TOKEN_TYPE, self.token  # accepted in every Region
        assert region is not None
        if self.chosen.kind == AWS_OIF:
            token = web_identity_token(
                issuer=self.discovery.issuer,
                region=region,
                signing_algorithm=self.chosen.signing_algorithm,
                session=self.session,
                timeout=max(budget.left(), 0.001),
            )
            return JWT_TOKEN_TYPE, token
        signed = signed_get_caller_identity(
            self.credentials,
            region=region,
            issuer=self.discovery.issuer,
            audience=self.audience,
            fips=self.fips,
        )
        return SIGV4_TOKEN_TYPE, encode_subject_token(signed)


def _explicit_region(session: boto3.session.Session | None) -> str | None:
    core = getattr(session, "_session", None)
    variables = core.instance_variables() if core is not None else {}
    region = variables.get("region")
    return region if isinstance(region, str) and region else None


def preferred_region(region: str | None, session: boto3.session.Session | None) -> str | None:
    """The Region a workload asks first: `region`, else AWS_REGION, AWS_DEFAULT_REGION (an
    empty one counts as unset), else the session's profile region."""
    if region:
        return region
    for variable in REGION_VARIABLES:
        if value := os.environ.get(variable):
            return value
    return session.region_name if session is not None else None


def _session() -> boto3.session.Session:
    """The default session: a profile that does not exist (AWS_PROFILE) is the AWS set-up's
    fault, a TokenError like missing credentials, not botocore's exception."""
    try:
        return boto3.session.Session()
    except BotoCoreError as err:
        raise TokenError(f"cannot load AWS credentials: {err}", error=NO_CREDENTIALS) from None


def aws_credentials(session: boto3.session.Session) -> ReadOnlyCredentials:
    """The session's credentials, frozen (a refreshable set is read once), each part
    printable ASCII, as every AWS credential is."""
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials else None
    except BotoCoreError as err:
        why = redacted_text(str(err))
        raise TokenError(f"cannot load AWS credentials: {why}", error=NO_CREDENTIALS) from None
    except ClientError as err:
        # AWS refused the call that gets them: an assume-role profile's sts:AssumeRole
        # (AccessDenied, Throttling), an SSO profile's GetRoleCredentials.
        error = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise TokenError(
            f"cannot load AWS credentials: {_first_line(err)}",
            error=AWS_ERROR,
            status=status if isinstance(status, int) else None,
            aws_code=str(error.get("Code", "error")),
        ) from None
    except ValueError as err:  # botocore's own refusal: a credential_process answer not JSON
        raise TokenError(
            f"the AWS configuration cannot be used: cannot load AWS credentials: "
            f"{type(err).__name__}: {redacted_text(str(err))}",
            error=AWS_ERROR,
        ) from None
    except Exception as err:
        if not raised_in(err, AWS_SDK):
            raise
        # An answer botocore cannot read (an STS answer that is no XML: ResponseParserError;
        # one without its Credentials: KeyError): the AWS set-up's failure, not a bug.
        raise TokenError(
            f"cannot load AWS credentials: {type(err).__name__}: {_first_line(err)}",
            error=AWS_ERROR,
        ) from None
    if frozen is None:
        raise TokenError(
            "no AWS credentials found (the default credential chain: AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE, ~/.aws, an instance or task role)",
            error=NO_CREDENTIALS,
        )
    # Signed into headers: another character (a byte of another encoding in AWS_*, read as
    # a lone surrogate) breaks botocore's signing or the request's JSON, deep inside.
    for attribute, (part, variable) in _CREDENTIAL_PARTS.items():
        value = getattr(frozen, attribute) or ""
        if not (value.isascii() and value.isprintable()):
            method = getattr(credentials, "method", None)  # where botocore found them
            where = variable if method == "env" else f"the {part} of the AWS credentials"
            where += f" ({method})" if method and method != "env" else ""
            raise TokenError(
                f"cannot use the AWS credentials: {where} has a character that is not printable "
                "ASCII, which no AWS credential has",
                error=NO_CREDENTIALS,
            )
    return frozen


# Of an error's text that quotes what AWS answered: enough to recognise it, not a whole
# answer (which may hold credentials) in one line.
_MAX_QUOTED_CHARS = 200


def _first_line(err: BaseException) -> str:
    """The first line of `err`'s text, without the password of a URL it quotes, cut short:
    botocore puts an answer it cannot parse on the lines after it."""
    return redacted_text(str(err).partition("\n")[0])[:_MAX_QUOTED_CHARS]


# ReadOnlyCredentials' parts, and the variables that set them when botocore read them from
# the environment (its `method` "env"): what a refusal names, never the value.
_CREDENTIAL_PARTS = {
    "access_key": ("access key id", "AWS_ACCESS_KEY_ID"),
    "secret_key": ("secret access key", "AWS_SECRET_ACCESS_KEY"),
    "token": ("session token", "AWS_SESSION_TOKEN"),
}


class TokenClient:
    """Caches one token per (audience, scopes) and refreshes it ahead of expiry.

    A cached token is served while more than `1 - REFRESH_AT` of its lifetime is left:
    the cached path is one lock and a dict look-up (no signing, no I/O). From
    `REFRESH_AT` of its lifetime on, one caller per (audience, scopes) exchanges a new
    token; the others keep getting the old token while it is still valid, and wait for the
    one exchange only once it has expired, sharing its outcome, failure included (they do
    not each try again in turn). A refresh that fails while the old token is valid serves
    that token (`stale_if_error`, logged as a warning) and is tried again
    `REFRESH_RETRY_SECONDS` later. Safe to share between threads, and to keep using in a
    child of os.fork() (`_forked`).

    One issuer, one cache: a token is cached under (audience, scopes) whichever Region of
    a multi-Region deployment gave it (request_token fails over between them).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        clock: Callable[[], float] | None = None,
        evidence: str = SIGV4,
        token_file: str | Path | None = None,
        region: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        stale_if_error: bool = True,
        **options: Any,
    ) -> None:
        """`evidence`, `token_file`, `region` (the Region to sign for, and to ask first
        in a multi-Region deployment), `timeout` (the seconds one exchange may take in
        all, failover included) and `options` (request_token's other keyword arguments,
        `signing_algorithm` among them) are request_token's; a choice that cannot work is
        refused here (ValueError), not at the first token. `stale_if_error=False`: a failed
        refresh raises even while the old token is valid (for a caller with its own
        fallback, as the proxy's)."""
        for name in options:
            if name not in _CLIENT_OPTIONS:
                raise ValueError(
                    f"unknown option {name!r}: besides its own, TokenClient takes"
                    f" {', '.join(sorted(_CLIENT_OPTIONS))} (audience and scopes are"
                    " token()'s arguments)"
                )
        EvidenceOptions.of(
            evidence,
            token_file=token_file,
            signing_algorithm=options.get("signing_algorithm"),
            instance_evidence=options.get("instance_evidence"),
        )
        try:
            self._endpoint = check_endpoint(endpoint)
        except TokenError as err:
            raise ValueError(str(err)) from None
        if region is not None and not identifiers.is_region(region):
            raise ValueError(f"region {region!r} is not an AWS Region name (e.g. eu-west-1)")
        # A token's age: a SuspendAwareClock unless the caller gives its own.
        self._clock = clock or SuspendAwareClock()
        self._stale_if_error = stale_if_error
        self._options = {
            **options,
            "evidence": evidence,
            "token_file": token_file,
            "region": region,
            "timeout": check_timeout(timeout),
        }
        # How long a call waits for the exchange another caller leads (tokex proxy's
        # requests too): its timeout, and a margin.
        self.flight_wait = self._options["timeout"] + FLIGHT_WAIT_MARGIN_SECONDS
        self._cache: dict[CacheKey, CachedToken] = {}
        self._flights: dict[CacheKey, _Flight] = {}  # the one exchange in flight per key
        # The last failed exchange per key, and until when it is the answer.
        self._failures: dict[CacheKey, tuple[float, TokenError]] = {}
        self._lock = threading.Lock()  # guards the three dicts, never held over I/O
        _CLIENTS.add(self)  # for a child of os.fork() to reset (_after_fork_in_child)

    def _forked(self) -> None:
        """In the child of os.fork(): only the thread that forked is there. An exchange
        another thread had in flight never ends here (its record would make every call
        wait `flight_wait` and fail, for good), and a lock another thread held stays held:
        both start afresh. The cached tokens and held failures stay."""
        self._lock = threading.Lock()
        self._flights = {}
        if isinstance(self._clock, SuspendAwareClock):  # read under its own lock
            self._clock._lock = threading.Lock()

    def token(self, audience: str, scopes: Sequence[str] = ()) -> str:
        scopes = check_scopes(scopes)  # read once: an iterator would be spent by the key
        key = cache_key(audience, scopes)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now < cached.refresh_at:
                return cached.access_token
            failure = self._failures.get(key)
            if failure is not None and now < failure[0]:
                if self._stale_if_error and cached is not None and now < cached.expires_at:
                    return cached.access_token
                raise failure[1].again(retry_after=math.ceil(failure[0] - now))
            flight = self._flights.get(key)
            leading = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leading:
            if cached is not None and now < cached.expires_at:
                return cached.access_token  # still valid: another caller refreshes it
            return flight.outcome(self.flight_wait)  # its timeout, and a margin
        try:
            # Counted from before it was asked for (ISSUED_TO_THE_SECOND): tokex counts
            # `expires_in` from its answer, somewhere after that.
            sent = self._clock()
            response = request_token(self._endpoint, audience, scopes=scopes, **self._options)
            fresh = CachedToken.from_response(response, obtained_at=sent)
        except BaseException as err:
            flight.error = err
            stale = self._stale(key, cached, err)
            if stale is None:
                self._hold(key, err)
                raise
            return stale
        else:
            with self._lock:
                self._cache[key] = fresh
                self._failures.pop(key, None)
            flight.token = fresh.access_token
            return fresh.access_token
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def _hold(self, key: CacheKey, err: BaseException) -> None:
        """A failed exchange (a TokenError: not an interrupt, not a bug) answers this key's
        calls for FAILURE_HOLD_SECONDS, or as long as its `Retry-After` asked."""
        if not isinstance(err, TokenError):
            return
        hold = _wait_after(err, at_least=FAILURE_HOLD_SECONDS)
        # A copy without a traceback: `err`'s frames hold the failure this exchange
        # replaced (token()'s `failure`), whose frames held the one before: a chain of
        # every failure of an outage, each with its frames, until an exchange succeeds.
        with self._lock:
            self._failures[key] = (self._clock() + hold, err.again())

    def _stale(self, key: CacheKey, cached: CachedToken | None, err: BaseException) -> str | None:
        """The token a failed refresh was to replace, if it may stand in: still valid, and
        the failure a TokenError (not an interrupt, not a bug). Its next refresh waits
        REFRESH_RETRY_SECONDS."""
        now = self._clock()
        if not self._stale_if_error or not isinstance(err, TokenError):
            return None
        if cached is None or now >= cached.expires_at:
            return None
        retry_at = min(now + _wait_after(err, at_least=REFRESH_RETRY_SECONDS), cached.expires_at)
        with self._lock:
            if self._cache.get(key) is cached:  # not invalidated meanwhile
                self._cache[key] = replace(cached, refresh_at=retry_at)
        log.warning(
            "refreshing the token for audience %s failed (%s); the cached token, valid for "
            "%d s more, is used and the refresh tried again in %d s",
            key[0],
            err,
            cached.expires_at - now,
            retry_at - now,
        )
        return cached.access_token

    @property
    def stale_if_error(self) -> bool:
        """Whether a failed refresh serves the still-valid token (the constructor's
        `stale_if_error`)."""
        return self._stale_if_error

    def cached_token(self, audience: str, scopes: Sequence[str] = ()) -> str | None:
        """The cached token if it is not due for refresh, else None: never any I/O (what an
        event loop may call before handing `token` to a thread)."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(cache_key(audience, scopes))
        return cached.access_token if cached is not None and now < cached.refresh_at else None

    def valid_token(self, audience: str, scopes: Sequence[str] = ()) -> str | None:
        """The cached token if it has not expired, due for refresh or not, else None: never
        any I/O (what a caller may use while another refreshes it)."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(cache_key(audience, scopes))
        return cached.access_token if cached is not None and now < cached.expires_at else None

    def cached_entry(self, audience: str, scopes: Sequence[str] = ()) -> CachedToken | None:
        """The cache's entry, due for refresh or expired alike, else None: never any I/O."""
        with self._lock:
            return self._cache.get(cache_key(audience, scopes))

    def invalidate(
        self,
        audience: str,
        scopes: Sequence[str] = (),
        token: str | None = None,
        *,
        min_age: float = 0.0,
    ) -> bool:
        """Forget the cached token, so that the next `token` call exchanges a new one (the
        API answered 401 to it: revoked, or signed with a key it no longer trusts). With
        `token`, only if that is still the cached one: a token another caller already
        replaced stays. With `min_age`, only a token held at least that many seconds: one
        refused as soon as it was issued would be refused again, and forgetting it would
        cost an exchange per request. True if a token was forgotten."""
        key = cache_key(audience, scopes)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is None or (token is not None and cached.access_token != token):
                return False
            if now - cached.obtained_at < min_age:
                return False
            del self._cache[key]
            return True


# Every TokenClient of the process (weakly: one dropped is gone from it), for the child of
# an os.fork() (multiprocessing's fork start method, a pre-forking server) to reset.
_CLIENTS: weakref.WeakSet[TokenClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    LAST_GOOD_DISCOVERIES._forked()
    for client in list(_CLIENTS):
        client._forked()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _wait_after(err: TokenError, *, at_least: float) -> float:
    """How long a failure holds before the next exchange: `at_least`, or the answer's
    `Retry-After` when longer (up to MAX_FAILURE_HOLD_SECONDS)."""
    return max(at_least, min(err.retry_after or 0.0, MAX_FAILURE_HOLD_SECONDS))


class _Flight:
    """One exchange, and its outcome for the callers that waited for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.token: str | None = None
        self.error: BaseException | None = None

    def outcome(self, wait: float) -> str:
        """The leader's token, or its error; a TokenError if it takes longer than `wait`
        seconds (its own timeout and FLIGHT_WAIT_MARGIN_SECONDS)."""
        if not self.done.wait(wait):
            raise TokenError(
                f"the token exchange this call waited for has not finished within {wait:g} s",
                error=UNREACHABLE,
            )
        if self.token is not None:
            return self.token
        err = self.error
        if isinstance(err, TokenError):  # a copy: one exception object per raising thread
            raise err.again()
        raise TokenError(f"the exchange this call waited for failed: {type(err).__name__}: {err}")


CacheKey = tuple[str, tuple[str, ...]]


def cache_key(audience: str, scopes: Sequence[str]) -> CacheKey:
    """Scopes in any order ask for the same token."""
    return audience, tuple(sorted(set(check_scopes(scopes))))


# request_token's keyword arguments a TokenClient passes on as given (`options`): not the
# ones it takes itself, nor `scopes`, which each token() call names.
_CLIENT_OPTIONS = frozenset(
    name
    for name, parameter in inspect.signature(request_token).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
) - {"scopes", "evidence", "token_file", "region", "timeout"}


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes as a tuple, read once (an iterator read twice is empty the second time,
    which would ask for every scope the policy grants); a list of scopes, not one string
    (which would ask for each of its characters), each an RFC 6749 §3.3 scope-token, as
    `--scope` is checked: `[""]` would be sent as `scope=`, which the exchange reads as no
    scope, every scope the policy grants; a space or a tab in one would ask for others."""
    if isinstance(scopes, str | bytes):
        raise TypeError(f"scopes must be a list of scopes, not one string: [{scopes!r}]")
    checked = tuple(scopes)
    for scope in checked:
        if not isinstance(scope, str):
            raise TypeError(f"each scope must be a string, not {type(scope).__name__}")
        if not identifiers.is_scope_token(scope):
            raise ValueError(
                f"scope {scope[:140]!r} is not a scope: 1-128 printable ASCII characters "
                'without spaces, " or \\ (RFC 6749 section 3.3); leave scopes out to ask '
                "for every scope the policy grants"
            )
    return checked


@dataclass(frozen=True)
class CachedToken:
    access_token: str = field(repr=False)  # a bearer credential: never in a log line
    refresh_at: float  # the clock of `obtained_at` (SuspendAwareClock in memory, epoch on disk)
    expires_at: float
    obtained_at: float

    @classmethod
    def from_response(cls, response: dict[str, Any], *, obtained_at: float) -> CachedToken:
        """`expires_in` (RFC 6749 §5.1) counted from a second before `obtained_at` (when
        it was asked for: ISSUED_TO_THE_SECOND); a token without one is refreshed at the
        next call."""
        try:
            lifetime = float(response.get("expires_in", 0))
        except (TypeError, ValueError, OverflowError):  # 400 digits overflow a float
            lifetime = 0.0
        if not 0.0 < lifetime < math.inf:  # NaN and `1e400` (infinity) included
            lifetime = 0.0
        # No tokex token lives longer (ttlCapSeconds is at most 12 h): an `expires_in` of
        # 1e300 would keep a token cached, and served, long past its `exp`.
        lifetime = min(lifetime, MAX_TOKEN_LIFETIME_SECONDS)
        started = obtained_at - ISSUED_TO_THE_SECOND
        return cls(
            access_token=str(response["access_token"]),
            refresh_at=started + REFRESH_AT * lifetime,
            expires_at=started + lifetime,
            obtained_at=obtained_at,
        )


def get_json(url: str, timeout: float) -> dict[str, Any]:
    """The JSON object a GET of `url` answers, as the client's other requests are made
    (`_send`: no redirect, bounded size and time, errors as TokenError)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    return _send(request, timeout)


def _send(request: urllib.request.Request, timeout: float) -> dict[str, Any]:
    """The JSON object answered, within `timeout` seconds in all: a server that trickles
    its answer a byte at a time is cut off when they run out, not once per byte."""
    url = request.full_url
    if timeout <= 0:  # spent before this call (on credentials, say): nothing starts
        raise TokenError(f"cannot reach {url}: timed out", error=UNREACHABLE, url=url)
    # The whole call, an error answer's body included, within the one budget.
    with deadline.request_deadline(timeout):
        return _send_within_deadline(request, timeout, url)


def _send_within_deadline(
    request: urllib.request.Request, timeout: float, url: str
) -> dict[str, Any]:
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            data = response.read(MAX_RESPONSE_BYTES + 1)
            if len(data) <= MAX_RESPONSE_BYTES and response.length:
                # The connection closed before Content-Length was reached: http.client
                # hands back what came. Cut off is no answer (and fails over).
                raise http.client.IncompleteRead(data, response.length)
            return _parse(data, response.status, response.headers.get_content_type(), url)
    except urllib.error.HTTPError as err:
        try:
            body = _parse(err.read(MAX_RESPONSE_BYTES + 1), err.code, "", url)
        except (TokenError, OSError, http.client.HTTPException):
            body = {}  # not JSON, or its body stalled or broke off: the status still counts
        finally:
            # Its connection, unread past MAX_RESPONSE_BYTES, would stay open for as long
            # as anything refers to the error: one descriptor per failed exchange.
            err.close()
        error = body.get("error")
        retry_after = retry_after_seconds(err.headers.get("Retry-After") if err.headers else None)
        kind = err.headers.get_content_type() if err.headers else "no content type"
        # The server's own words (reason phrase, content type, OAuth error and description)
        # quoted as they came: TokenError shows their control characters escaped.
        answer = f"HTTP {err.code} {err.reason} ({kind})"
        oauth = isinstance(error, str)  # an OAuth error response (RFC 6749 §5.2)
        if oauth:
            description = body.get("error_description") or err.reason
            message, answer = f"{error}: {description}", f"HTTP {err.code} {error}: {description}"
        elif err.code >= 500 or err.code == 429:
            # A gateway's or a load balancer's outage (API Gateway's `{"message": "Service
            # Unavailable"}`): no word on whether the server is a tokex issuer.
            error, message = TEMPORARILY_UNAVAILABLE, f"{url} answered {answer}: try again later"
        else:
            error, message = NOT_TOKEX, f"{url} answered {answer}, not a tokex answer"
        raise TokenError(
            message,
            error=error,
            status=err.code,
            url=url,
            answer=answer,
            retry_after=retry_after,
            oauth=oauth,
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        why = getattr(reason, "strerror", None) or str(reason)
        if isinstance(reason, TimeoutError):  # a socket's timeout, or the whole budget's
            why = "timed out"
        raise TokenError(f"cannot reach {url}: {why}", error=UNREACHABLE, url=url) from None
    except http.client.HTTPException as err:  # a broken answer: cut off, or no HTTP at all
        why = f"the answer broke off ({type(err).__name__})"
        raise TokenError(f"cannot reach {url}: {why}", error=UNREACHABLE, url=url) from None


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` (RFC 9110 §10.2.3) in seconds: delay-seconds or an HTTP-date, capped
    at MAX_FAILURE_HOLD_SECONDS (a server's hour is not a workload's outage); None when
    absent or malformed."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(int(value[:12]))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:
                return None
            seconds = max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError, IndexError, OverflowError):
            # OverflowError: a year or a zone offset of 20 digits (`Mon, 01 Jan
            # 99999999999999999999 00:00:00 GMT`), which no C integer holds.
            return None
    return min(seconds, MAX_FAILURE_HOLD_SECONDS)


def _no_constants(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259 §6), and would make `--json` output none."""
    raise ValueError(f"{name} is not JSON")


def _finite(number: str) -> float:
    """A number too large for a float (`1e400`) reads as infinity, which `--json` would
    print as `Infinity`, no JSON either, and a cache would keep."""
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{number} is out of range")
    return value


def _parse(data: bytes, status: int, content_type: str, url: str) -> dict[str, Any]:
    try:
        if len(data) > MAX_RESPONSE_BYTES:
            raise ValueError("response too large")
        parsed = json.loads(data, parse_constant=_no_constants, parse_float=_finite)
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
        return parsed
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        answer = f"HTTP {status} ({content_type or 'no content type'}), not a JSON object"
        raise TokenError(
            f"{url} answered {answer}", error=NOT_TOKEX, status=status, url=url, answer=answer
        ) from None
