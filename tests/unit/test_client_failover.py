"""The workload client against a multi-Region deployment (issue 14, item 7): Regional
token endpoints from the discovery document's `tokex_regions`, the workload's own Region
first, evidence made for each Region it tries, failover on no answer or a 5xx only, all
within one time budget, one cache whichever Region gave the token.

The deployment is real loopback HTTP, one server as a real deployment is one issuer: it
serves a discovery document made by tokex's own `discovery_document(regions=...)` and
each Region's exchange at `/regions/<region>/token` (the only Regional endpoints a client
accepts), which checks what a Regional exchange checks (a SigV4 request signed for its own
Region's STS, by tokex's verifier; an OIF token whose `source_region` is its own; EKS
tokens anywhere). A Region can be made to answer a status, reset the connection without
answering, or answer late: it holds the request until long after the client's timeout,
then answers a token of its own (`<region>-late`), so that a client that did not give up
in time ends with that token, which the tests refuse, rather than just taking longer.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import requests

from tests.support.fake_issuer import sa_token_file, use_static_credentials, without_aws_set_up
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex import base64url
from tokex.cli.main import main
from tokex.client import (
    TokenClient,
    TokenError,
    TokexAuth,
    TokexHttpxAuth,
    disk_cache,
    request_token,
)
from tokex.client.imds import encode_instance_evidence
from tokex.client.token_client import (
    LAST_GOOD_DISCOVERIES,
    Discovery,
    LastGoodDiscoveries,
    RegionalEndpoint,
)
from tokex.errors import TokexError
from tokex.evidence.jwt_claims import STS_NAMESPACE as OIF_CLAIMS
from tokex.evidence.sigv4_request import decode_subject_token, verify_sts_request
from tokex.evidence.sts_endpoints import StsEndpoints
from tokex.tokens.jwks import discovery_document

HOME, SECOND, THIRD = REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")
SIGV4_TYPE = "urn:tokex:token-type:aws-sigv4"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
STS_XML = "https://sts.amazonaws.com/doc/2011-06-15/"
# What a look-alike endpoint or a gateway's error page may answer (any text of its own):
# an OAuth error_description that clears the screen, retitles the terminal, rings its bell
# and forges a line of `tokex token`'s output; a status line and a content type with escapes.
HOSTILE_DESCRIPTION = "down\x1b[2J\x1b]0;PWNED-TITLE\x07\ntokex token: FORGED LINE"
HOSTILE_REASON = "Bad\x1b[31m Gateway\x07"
HOSTILE_TYPE = "text/html\x1b[5m"
# The same, as a TokenError quotes them: control characters shown escaped, on one line.
SHOWN_DESCRIPTION = "down\\x1b[2J\\x1b]0;PWNED-TITLE\\x07\\ntokex token: FORGED LINE"
SHOWN_PAGE = "HTTP 502 Bad\\x1b[31m Gateway\\x07 (text/html\\x1b[5m)"
# More Regions than REGIONS, for the budget's shares (test_the_total_timeout_...).
EIGHT_REGIONS = (
    *REGIONS,
    "us-west-2",
    "eu-central-1",
    "ap-northeast-1",
    "ca-central-1",
    "sa-east-1",
)


# --- the deployment ------------------------------------------------------------------------


@dataclass
class Deployment:
    url: str = ""
    order: list[str] = field(default_factory=lambda: list(REGIONS))
    with_regions: bool = True
    # Per Region: "ok", an HTTP status (with an OAuth error: invalid_grant for a 4xx), a
    # (status, OAuth error) pair (described "refused in <region>"), "html-502" (a bare 502,
    # as a load balancer's), "gateway-404" and "cdn-403" (no tokex behind the path yet, or any
    # more), "gateway-429" (API Gateway's stage throttle), "rate-limited" (tokex's own 429
    # of a caller over its rate limit), "reset" (the connection reset, no answer), "late"
    # (no answer until `late_at`, then the token `<region>-late`), "hostile" (a 503 whose
    # OAuth description is HOSTILE_DESCRIPTION) or "hostile-page" (a 502 page with
    # HOSTILE_REASON and HOSTILE_TYPE).
    modes: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(REGIONS, "ok"))
    delay: float = 0.0  # seconds each exchange that gives a token takes
    expires_in: int = 900
    contacts: list[str] = field(default_factory=list)  # Regions a POST reached, in order
    forms: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)
    discoveries: int = 0
    # When "late" Regions (and a late discovery) answer: `answer_late`; None, never.
    late_at: float | None = None
    late_discovery: bool = False  # the discovery document too comes at `late_at`
    # What the discovery document's URL answers instead of it: "html-502", "json-503",
    # "cdn-429", "reset", "html-200" (an error page), "gateway-404"; None: the document.
    discovery_failure: str | None = None
    # The test is over: every request still held is closed without an answer, so that a
    # passing test does not wait for `late_at`.
    released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def document(self) -> dict[str, Any]:
        return discovery_document(
            issuer=self.url,
            token_endpoint=self.url + "/token",
            jwks_uri=self.url + "/.well-known/jwks.json",
            algs=["RS256"],
            regions=self.order if self.with_regions else (),
        )

    def contact(self, region: str, form: dict[str, str]) -> Any:
        """Records a POST to the exchange of `region` (`home`: `{iss}/token`); its mode."""
        with self._lock:
            self.contacts.append(region)
            self.forms.setdefault(region, []).append(form)
        return self.modes.get(region, "ok")

    def exchange(self, region: str, form: dict[str, str], mode: Any) -> tuple[int, dict[str, Any]]:
        """What the exchange of `region` answers in `mode` ("ok", an HTTP status or a
        (status, error) pair)."""
        if isinstance(mode, tuple):
            status, error = mode
            return status, {"error": error, "error_description": f"refused in {region}"}
        if mode != "ok":
            return mode, oauth_error(mode)
        if (why := self.refusal(region, form)) is not None:
            return 400, {"error": "invalid_grant", "error_description": why}
        time.sleep(self.delay)
        with self._lock:
            token = f"{region}-token-{len(self.issued) + 1}"
            self.issued.append(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}

    def refusal(self, region: str, form: dict[str, str]) -> str | None:
        """A Regional exchange serves evidence made for its own Region only."""
        if region == "home":
            return None
        if form["subject_token_type"] == SIGV4_TYPE:
            try:
                verify_sts_request(
                    decode_subject_token(form["subject_token"]),
                    issuer=self.url,
                    endpoints=StsEndpoints(["aws"], [region]),
                    now=datetime.now(UTC),
                    audience=form["audience"],
                )
            except TokexError as err:
                return str(err)
            return None
        claims = jwt_claims(form["subject_token"])
        source_region = claims.get(OIF_CLAIMS, {}).get("source_region")
        if OIF_CLAIMS in claims and source_region != region:
            return f"an OIF token from {source_region}, not from {region}"
        return None  # an EKS token: accepted in every Region

    def exchanges_in(self, region: str) -> int:
        return sum(1 for contact in self.contacts if contact == region)

    def answer_late(self, *, after: float) -> None:
        """What is held answers `after` seconds from now (from before the call, so that
        every attempt of the call, the last included, is measured against the same
        instant): far past the client's timeout, before any fallback it might use instead."""
        self.late_at = time.monotonic() + after

    def hold(self) -> bool:
        """Holds a request until `late_at`: True then (answer it, late), False if the test
        ended first (no answer)."""
        if self.late_at is None:
            self.released.wait()
            return False
        return not self.released.wait(max(0.0, self.late_at - time.monotonic()))


def oauth_error(status: int) -> dict[str, str]:
    if status >= 500:
        return {"error": "temporarily_unavailable", "error_description": "try later"}
    return {"error": "invalid_grant", "error_description": f"refused with {status}"}


def jwt_claims(token: str) -> dict[str, Any]:
    return json.loads(base64url.decode(token.split(".")[1]))


def signed_request(form: dict[str, str]) -> dict[str, Any]:
    return json.loads(base64url.decode(form["subject_token"]))


@contextmanager
def deployment_running() -> Iterator[Deployment]:
    deployment = Deployment()

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            if self.path != "/.well-known/openid-configuration":
                return self._json(404, {"error": "not_found"})
            with deployment._lock:
                deployment.discoveries += 1
            if deployment.late_discovery and not deployment.hold():
                self.close_connection = True  # the test ended first
                return None
            failure = deployment.discovery_failure
            html = {"Content-Type": "text/html"}
            if failure == "html-502":  # CloudFront, its origin (home's bucket) unreachable
                self.send_document(502, b"<html>502 ERROR</html>", html)
            elif failure == "json-503":
                self._json(503, {"message": "Service Unavailable"})
            elif failure == "cdn-429":
                self.send_document(429, b"<html>429 ERROR</html>", html)
            elif failure == "reset":
                self._reset()
            elif failure == "html-200":
                self.send_document(200, b"<html>Something went wrong</html>", html)
            elif failure == "gateway-404":
                self._json(404, {"message": "Not Found"})
            else:
                self._json(200, deployment.document())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            form = {name: values[0] for name, values in parse_qs(body).items()}
            parts = self.path.strip("/").split("/")
            if self.path == "/token":
                region = "home"
            elif len(parts) == 3 and parts[0] == "regions" and parts[2] == "token":
                region = parts[1]
            else:
                return self._json(404, {"error": "not_found"})
            mode = deployment.contact(region, form)
            if mode == "reset":
                self._reset()
            elif mode == "late":
                if deployment.hold():  # a client that waited for it ends with this token
                    late = {"access_token": f"{region}-late", "expires_in": 900}
                    with suppress(OSError):  # the client gave up after all
                        self._json(200, late)
                self.close_connection = True
            elif mode == "html-502":
                self.send_document(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"})
            elif mode == "gateway-404":  # API Gateway's, for a Region with no routes yet
                self._json(404, {"message": "Not Found"})
            elif mode == "cdn-403":  # CloudFront's, for a path it no longer routes
                self.send_document(403, b"<html>403 ERROR</html>", {"Content-Type": "text/html"})
            elif mode == "gateway-429":  # API Gateway's, its Regional stage throttled
                self._json(429, {"message": "Too Many Requests"})
            elif mode == "hostile":
                refusal = {
                    "error": "temporarily_unavailable",
                    "error_description": HOSTILE_DESCRIPTION,
                }
                self._json(503, refusal)
            elif mode == "hostile-page":
                self.send_response(502, HOSTILE_REASON)
                self.send_header("Content-Type", HOSTILE_TYPE)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif mode == "rate-limited":  # tokex's own: this caller is over its rate limit
                refusal = {"error": "temporarily_unavailable", "error_description": "slow down"}
                data = json.dumps(refusal).encode()
                headers = {"Content-Type": "application/json", "Retry-After": "17"}
                self.send_document(429, data, headers)
            else:
                self._json(*deployment.exchange(region, form, mode))

        def _json(self, status: int, document: dict) -> None:
            data = json.dumps(document).encode()
            self.send_document(status, data, {"Content-Type": "application/json"})

        def _reset(self) -> None:
            """Closes the connection at once, without an answer: a linger of 0 makes the
            close a reset (RST), as a Region whose server died mid-request."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

    with serving(LoopbackServer(Handler)) as server:
        deployment.url = server.url
        try:
            yield deployment
        finally:
            deployment.released.set()


@pytest.fixture
def aws(monkeypatch) -> None:
    """Static credentials and no region configured anywhere."""
    use_static_credentials(monkeypatch)
    monkeypatch.delenv("AWS_REGION")


@pytest.fixture(autouse=True)
def no_discovery_read_yet() -> Iterator[None]:
    """Each test starts as a fresh process: no discovery document read before (another
    test's deployment may have had the same port)."""
    LAST_GOOD_DISCOVERIES.clear()
    yield
    LAST_GOOD_DISCOVERIES.clear()


@pytest.fixture
def deployment(aws) -> Iterator[Deployment]:
    with deployment_running() as running:
        yield running


def assert_signed_for(form: dict[str, str], region: str) -> None:
    """The subject token is a GetCallerIdentity signed for `region`'s STS."""
    assert form["subject_token_type"] == SIGV4_TYPE
    signed = signed_request(form)
    assert signed["url"] == f"https://sts.{region}.amazonaws.com/"
    assert f"/{region}/sts/aws4_request, " in signed["headers"]["Authorization"]


# --- the order of the Regions, and what each one is sent -------------------------------------


def test_each_region_tried_gets_a_request_signed_for_its_own_sts(deployment) -> None:
    deployment.modes.update({HOME: 503, SECOND: 503})
    response = request_token(deployment.url, "orders-api", scopes=["orders:read"])
    assert response["access_token"] == f"{THIRD}-token-1"
    assert deployment.contacts == [HOME, SECOND, THIRD]
    for region in REGIONS:
        [form] = deployment.forms[region]
        assert_signed_for(form, region)
        assert (form["audience"], form["scope"]) == ("orders-api", "orders:read")
        assert signed_request(form)["headers"]["X-Tokex-Issuer"] == deployment.url
    assert deployment.discoveries == 1  # one discovery per call, whatever the failovers


def test_a_healthy_home_region_is_the_only_one_asked(deployment) -> None:
    assert request_token(deployment.url, "orders-api")["access_token"] == f"{HOME}-token-1"
    assert deployment.contacts == [HOME]
    assert_signed_for(deployment.forms[HOME][0], HOME)


def test_evidence_for_another_region_would_be_refused_there(deployment) -> None:
    """Not vacuous: the fake Regional exchange refuses what a real one refuses."""
    request_token(deployment.url, "orders-api", issuer=deployment.url, region=SECOND)
    [form] = deployment.forms["home"]  # `{iss}/token` of the fake checks nothing
    assert deployment.refusal(SECOND, form) is None
    assert f"signed for the STS of {SECOND}, which this endpoint does not accept" in str(
        deployment.refusal(HOME, form)
    )


@pytest.mark.parametrize(
    ("configure", "first"),
    [
        ({"region": SECOND}, SECOND),
        ({"env": {"AWS_REGION": THIRD}}, THIRD),
        ({"env": {"AWS_DEFAULT_REGION": SECOND}}, SECOND),
        ({"env": {"AWS_REGION": THIRD, "AWS_DEFAULT_REGION": SECOND}}, THIRD),
        ({"region": THIRD, "env": {"AWS_REGION": SECOND}}, THIRD),
        ({"region": "sa-east-1"}, HOME),  # not one of the deployment's: its order
        ({}, HOME),
        # An EC2 instance sets no AWS_REGION: its identity document names its Region...
        ({"instance": SECOND}, SECOND),
        # ... after every Region configured.
        ({"instance": SECOND, "env": {"AWS_DEFAULT_REGION": THIRD}}, THIRD),
        ({"instance": SECOND, "region": THIRD}, THIRD),
    ],
)
def test_the_preferred_region_is_asked_first(deployment, monkeypatch, configure, first) -> None:
    for name, value in configure.get("env", {}).items():
        monkeypatch.setenv(name, value)
    instance = configure.get("instance")
    response = request_token(
        deployment.url,
        "orders-api",
        region=configure.get("region"),
        instance_evidence=instance_evidence_of(instance) if instance else None,
    )
    assert response["access_token"] == f"{first}-token-1"
    assert deployment.contacts == [first]
    assert_signed_for(deployment.forms[first][0], first)


def instance_evidence_of(region: str) -> str:
    """The `aws_instance_identity` of an instance in `region` (its signature unchecked by
    the client)."""
    document = json.dumps({"instanceId": "i-0123456789abcdef0", "region": region})
    return encode_instance_evidence({"document": document, "rsa2048": "c2lnbmF0dXJl"})


def test_after_the_preferred_region_the_others_in_the_listed_order(deployment) -> None:
    deployment.order = [SECOND, THIRD, HOME]  # the document's order, home first
    deployment.modes.update(dict.fromkeys(REGIONS, 503))
    with pytest.raises(TokenError):
        request_token(deployment.url, "orders-api", region=THIRD)
    assert deployment.contacts == [THIRD, SECOND, HOME]


# --- when to fail over ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_a_5xx_fails_over(deployment, status) -> None:
    deployment.modes[HOME] = status
    assert request_token(deployment.url, "orders-api")["access_token"] == f"{SECOND}-token-1"
    assert deployment.contacts == [HOME, SECOND]


def test_a_5xx_that_is_not_a_tokex_answer_fails_over_too(deployment) -> None:
    """A bare 502 of a load balancer or CDN in front of a Region that is down."""
    deployment.modes[HOME] = "html-502"
    assert request_token(deployment.url, "a")["access_token"] == f"{SECOND}-token-1"
    assert deployment.contacts == [HOME, SECOND]


def test_a_connection_reset_without_an_answer_fails_over(deployment) -> None:
    deployment.modes[HOME] = "reset"
    assert request_token(deployment.url, "orders-api")["access_token"] == f"{SECOND}-token-1"
    assert deployment.contacts == [HOME, SECOND]
    assert deployment.issued == [f"{SECOND}-token-1"]


def test_a_region_that_never_answers_fails_over_within_the_budget(deployment) -> None:
    """Home keeps the request and answers only at 15 s (5 times the budget), its token
    `us-east-1-late`: the client gives up on it within its share (1 s of the 3) and gets
    its token from the next Region. A client that waited for home would end with the late
    token or, past its budget, with no time left for the next Region: an error. (3 s: the
    second Region's exchange, signing included, has its 1 s share on a busy machine.)"""
    deployment.modes[HOME] = "late"
    deployment.answer_late(after=15)
    response = request_token(deployment.url, "orders-api", timeout=3)
    assert response["access_token"] == f"{SECOND}-token-1"
    assert deployment.contacts == [HOME, SECOND]  # home got the request, and kept it


@pytest.mark.parametrize("mode", ["gateway-404", "cdn-403", "gateway-429"])
def test_a_4xx_that_is_no_tokex_answer_fails_over(deployment, mode) -> None:
    """A Region listed in discovery whose stack is not deployed yet (API Gateway's 404),
    was just removed (CloudFront's 403, while edges keep the old document) or whose API is
    over its stage throttle (API Gateway's 429 `{"message": "Too Many Requests"}`, once a
    `temporarily_unavailable` that stayed there) stopped every workload that asks it
    first: nothing failed over. Its evidence was its own: nothing is spent twice by asking
    the next Region."""
    deployment.modes[HOME] = mode
    assert request_token(deployment.url, "orders-api")["access_token"] == f"{SECOND}-token-1"
    assert deployment.contacts == [HOME, SECOND]


# tokex's refusals that are the same in every Region (its 429: below).
FINAL_REFUSALS = [
    (400, "invalid_target"),
    (400, "invalid_scope"),
    (400, "invalid_request"),
    (401, "invalid_client"),
    (400, "unsupported_grant_type"),
    (413, "invalid_request"),
]


@pytest.mark.parametrize(("status", "error"), FINAL_REFUSALS)
def test_a_refusal_the_same_everywhere_is_never_failed_over(deployment, status, error) -> None:
    deployment.modes[HOME] = (status, error)
    with pytest.raises(TokenError) as refused:
        request_token(deployment.url, "orders-api")
    assert (refused.value.status, refused.value.error) == (status, error)
    assert str(refused.value) == f"{error}: refused in {HOME}"
    assert deployment.contacts == [HOME]  # the second Region is never contacted


def test_tokexs_own_429_is_answered_at_once_with_its_retry_after(deployment) -> None:
    """tokex's 429 (an OAuth answer: this caller is over its rate limit) is a refusal like
    its other 4xx, with its `Retry-After`: only a gateway's 429 moves on."""
    deployment.modes[HOME] = "rate-limited"
    with pytest.raises(TokenError) as refused:
        request_token(deployment.url, "orders-api")
    error = refused.value
    assert (error.status, error.error, error.retry_after) == (429, "temporarily_unavailable", 17)
    assert str(error) == "temporarily_unavailable: slow down"
    assert deployment.contacts == [HOME]


def test_a_gateways_429_without_tokex_regions_is_temporarily_unavailable(deployment) -> None:
    deployment.with_regions = False
    deployment.modes["home"] = "gateway-429"
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "orders-api")
    assert (failed.value.status, failed.value.error) == (429, "temporarily_unavailable")
    assert str(failed.value).endswith("(application/json): try again later")
    assert deployment.contacts == ["home"]


# --- a refusal that may be the Region's own: evidence made for each Region ------------------


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_invalid_grant_fails_over_with_evidence_made_for_the_next_region(
    deployment, caplog
) -> None:
    """A Regional exchange answers `invalid_grant` to any 4xx of its own Region's STS: the
    workload's account deactivated STS there (RegionDisabledException, as AWS recommends
    for the Regions it does not use) or has not enabled that opt-in Region
    (InvalidClientTokenId). With home down, the next Region listed was such a one: the
    client took its refusal as final, and the workload had no token although the Region
    after it would have given one. Each Region gets a request signed for its own STS, so
    asking on spends nothing twice."""
    deployment.modes.update({HOME: 503, SECOND: (400, "invalid_grant")})
    caplog.set_level(logging.WARNING, "tokex.client.token_client")
    assert request_token(deployment.url, "orders-api")["access_token"] == f"{THIRD}-token-1"
    assert deployment.contacts == [HOME, SECOND, THIRD]
    for region in REGIONS:
        assert_signed_for(deployment.forms[region][0], region)
    assert warnings_of(caplog) == [
        f"Region {HOME} failed: temporarily_unavailable: try later; trying {SECOND}",
        f"Region {SECOND} failed: invalid_grant: refused in {SECOND}; trying {THIRD}",
    ]
    # A TokenClient likewise (its exchanges are request_token's).
    deployment.modes[HOME] = (400, "invalid_grant")
    assert TokenClient(deployment.url).token("orders-api") == f"{THIRD}-token-2"
    assert deployment.contacts[3:] == [HOME, SECOND, THIRD]


def test_when_every_region_refuses_the_first_refusal_is_reported(deployment, caplog) -> None:
    """Home refusing a bad signature (or expired credentials) says so in its own words;
    the Regions after it refuse too, each its own way: the error is home's, naming the
    Regions tried, and each later Region's refusal is in the log (`tokex token -v`)."""
    deployment.modes.update(dict.fromkeys(REGIONS, (400, "invalid_grant")))
    caplog.set_level(logging.WARNING, "tokex.client.token_client")
    with pytest.raises(TokenError) as refused:
        request_token(deployment.url, "orders-api")
    error = refused.value
    assert (error.status, error.error, error.oauth) == (400, "invalid_grant", True)
    assert error.url == f"{deployment.url}/regions/{HOME}/token"
    assert str(error) == (
        f"no Region gave a token (tried {HOME}, {SECOND}, {THIRD}); {HOME}: "
        f"invalid_grant: refused in {HOME}"
    )
    assert warnings_of(caplog) == [
        f"Region {HOME} failed: invalid_grant: refused in {HOME}; trying {SECOND}",
        f"Region {SECOND} failed: invalid_grant: refused in {SECOND}; trying {THIRD}",
        f"Region {THIRD} failed: invalid_grant: refused in {THIRD}",
    ]
    assert deployment.contacts == [HOME, SECOND, THIRD]


def test_a_refusal_is_reported_rather_than_an_outage(deployment) -> None:
    """Home down, the next Region refusing, the last one reset: the refusal is what the
    workload can act on (activate STS in that Region), not the reset."""
    deployment.modes.update({HOME: 503, SECOND: (400, "invalid_grant"), THIRD: "reset"})
    with pytest.raises(TokenError) as refused:
        request_token(deployment.url, "orders-api")
    assert (refused.value.error, refused.value.url) == (
        "invalid_grant",
        f"{deployment.url}/regions/{SECOND}/token",
    )
    assert str(refused.value).endswith(f"{SECOND}: invalid_grant: refused in {SECOND}")


def test_an_eks_tokens_invalid_grant_is_final(monkeypatch, tmp_path) -> None:
    """The same service-account token goes to every Region, verified against the same
    keys: its refusal would be the same everywhere."""
    without_aws_set_up(monkeypatch)
    with deployment_running() as deployment:
        path = sa_token_file(tmp_path, deployment.url)
        deployment.modes[HOME] = (400, "invalid_grant")
        with pytest.raises(TokenError) as refused:
            request_token(deployment.url, "orders-api", evidence="eks", token_file=path)
        assert str(refused.value) == f"invalid_grant: refused in {HOME}"
        assert deployment.contacts == [HOME]


@pytest.mark.parametrize("bound", [False, True])
def test_without_regions_an_invalid_grant_is_final_as_ever(deployment, bound) -> None:
    """One endpoint (no `tokex_regions`, or an `issuer` bound without discovery): nowhere
    else to ask, and the refusal is raised as it came."""
    deployment.with_regions = bound
    deployment.modes["home"] = (400, "invalid_grant")
    with pytest.raises(TokenError) as refused:
        request_token(deployment.url, "a", issuer=deployment.url if bound else None)
    assert (refused.value.status, refused.value.error) == (400, "invalid_grant")
    assert str(refused.value) == "invalid_grant: refused in home"
    assert deployment.contacts == ["home"]


def test_when_every_region_fails_the_last_error_names_the_regions_tried(deployment) -> None:
    deployment.modes.update({HOME: 503, SECOND: "reset", THIRD: 502})
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "orders-api")
    error = failed.value
    assert (error.status, error.error) == (502, "temporarily_unavailable")
    assert error.url == f"{deployment.url}/regions/{THIRD}/token"
    assert str(error) == (
        f"no Region gave a token (tried {HOME}, {SECOND}, {THIRD}); {THIRD}: "
        "temporarily_unavailable: try later"
    )
    assert deployment.contacts == [HOME, SECOND, THIRD]  # each Region once, the reset too


def test_a_servers_words_reach_the_error_and_the_log_escaped_on_one_line(
    deployment, caplog
) -> None:
    """A server's text (a description, a reason phrase, a content type) is quoted with its
    control characters escaped, in the TokenError and in the failover's log records: it
    drove the terminal of, and forged lines in, any plain-text log of a TokenClient."""
    deployment.modes.update({HOME: "hostile", SECOND: "hostile-page", THIRD: "hostile"})
    caplog.set_level(logging.INFO, "tokex.client.token_client")
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "orders-api")
    error = failed.value
    assert str(error) == (
        f"no Region gave a token (tried {HOME}, {SECOND}, {THIRD}); {THIRD}: "
        f"temporarily_unavailable: {SHOWN_DESCRIPTION}"
    )
    assert error.answer == f"HTTP 503 temporarily_unavailable: {SHOWN_DESCRIPTION}"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"Region {HOME} failed: temporarily_unavailable: {SHOWN_DESCRIPTION}; trying {SECOND}",
        f"Region {SECOND} failed: {deployment.url}/regions/{SECOND}/token answered "
        f"{SHOWN_PAGE}: try again later; trying {THIRD}",
    ]
    for text in (str(error), error.answer, *(r.getMessage() for r in caplog.records)):
        assert text.isprintable(), text


def test_an_exchange_writes_no_record_a_workload_logging_at_info_keeps(deployment, caplog) -> None:
    """The Regions tried and the evidence sent are DEBUG: a workload logging at INFO (as
    Lambda's runtime sets the root logger by default) got a record per exchange, which
    also cost each exchange the record. `-v` (DEBUG) shows them; a failover still warns."""
    caplog.set_level(logging.INFO, "tokex.client.token_client")
    request_token(deployment.url, "orders-api")
    assert caplog.records == []
    caplog.set_level(logging.DEBUG, "tokex.client.token_client")
    request_token(deployment.url, "orders-api")
    assert [r.getMessage() for r in caplog.records] == [
        f"exchanging at {deployment.url}/regions/{HOME}/token (Region {HOME})",
        f"sending a GetCallerIdentity request signed for {HOME}",
    ]


def test_an_ordinary_description_is_quoted_as_it_came(deployment, monkeypatch) -> None:
    """Printable text (a non-ASCII letter, quotes, a backslash among it) is not escaped."""
    why = "preuve refusée: 'signed' for \\\\other, \"not\" this Region"
    monkeypatch.setattr(deployment, "refusal", lambda region, form: why)
    with pytest.raises(TokenError) as refused:
        request_token(deployment.url, "orders-api")
    assert str(refused.value).endswith(f"; {HOME}: invalid_grant: {why}")
    assert refused.value.error == "invalid_grant"


def test_a_reset_last_is_an_unreachable_error(deployment) -> None:
    deployment.modes.update({HOME: 503, SECOND: 503, THIRD: "reset"})
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "orders-api")
    assert (failed.value.status, failed.value.error) == (None, "unreachable")
    assert f"tried {HOME}, {SECOND}, {THIRD}); {THIRD}: cannot reach" in str(failed.value)


def test_the_total_timeout_bounds_every_attempt(deployment) -> None:
    """Eight Regions, each answering only at 7.5 s (5 times the budget), with a token of
    its own: each attempt gets a share of the 1.5 s and the call ends without any. Still
    waiting at 7.5 s, and so ending with a late token, would be a client with no deadline,
    one that used the default 10 s instead of the 1.5 given, and one that gave every
    attempt the whole 1.5 s (8 of them: 12 s)."""
    deployment.order = list(EIGHT_REGIONS)
    deployment.modes.update(dict.fromkeys(EIGHT_REGIONS, "late"))
    deployment.answer_late(after=7.5)
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "orders-api", timeout=1.5)
    assert failed.value.error == "unreachable"
    # Each got a share of the budget: every Region is accounted for, in order, once, tried
    # or left when the budget ran out (a stall of the machine may leave the last ones), and
    # the first one did not take the whole budget.
    ran_out = r"(?:; the 1\.5 s timeout ran out before ([^)]+))?"
    said = re.match(rf"no Region gave a token \(tried ([^;)]+){ran_out}\)", str(failed.value))
    assert said is not None, str(failed.value)
    tried = said[1].split(", ")
    untried = said[2].split(", ") if said[2] else []
    assert tried + untried == list(EIGHT_REGIONS)
    assert len(tried) >= 2
    assert len(set(deployment.contacts)) == len(deployment.contacts)  # none twice


def test_discovery_counts_against_the_budget(deployment) -> None:
    """An issuer whose discovery document comes only at 4 s (8 times the budget): the call
    ends with the 0.5 s budget, at discovery. A discovery with no deadline, or with its own
    5 s default instead of the budget, would get the document, and the call would end
    after it (the budget spent before any Region: an error at a token endpoint). 4 s, not
    more: under that 5 s, so that the test tells the budget from the default."""
    deployment.late_discovery = True
    deployment.answer_late(after=4)
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "orders-api", timeout=0.5)
    discovery = f"{deployment.url}/.well-known/openid-configuration"
    assert (failed.value.error, failed.value.url) == ("unreachable", discovery)
    assert str(failed.value) == f"cannot reach {discovery}: timed out"
    assert deployment.contacts == []


# --- home lost: the last good discovery document ---------------------------------------------

DISCOVERY_OUTAGES = ["html-502", "json-503", "cdn-429", "reset", "html-200"]


@pytest.mark.parametrize("failure", DISCOVERY_OUTAGES)
def test_a_discovery_outage_fails_over_with_the_last_good_document(deployment, failure) -> None:
    """Home publishes the document: with home lost, once CloudFront's copy has expired,
    discovery answers CloudFront's 502 (or nothing, or an error page), and the client,
    which read the Regions only from a fresh document, tried none of them."""
    assert request_token(deployment.url, "orders-api")["access_token"] == f"{HOME}-token-1"
    deployment.discovery_failure = failure
    deployment.modes[HOME] = 503
    assert request_token(deployment.url, "orders-api")["access_token"] == f"{SECOND}-token-2"
    assert deployment.contacts == [HOME, HOME, SECOND]
    assert_signed_for(deployment.forms[SECOND][0], SECOND)
    assert deployment.discoveries == 2  # asked each time: a fresh one wins when there is one


@pytest.mark.parametrize("failure", DISCOVERY_OUTAGES)
def test_a_process_that_never_read_the_document_cannot_fail_over(deployment, failure) -> None:
    """Nothing kept yet (the fixture: a fresh process): the first discovery fails as it
    always did, and no Region is asked."""
    deployment.discovery_failure = failure
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "orders-api")
    assert failed.value.url == f"{deployment.url}/.well-known/openid-configuration"
    assert deployment.contacts == []


def test_a_fresh_document_is_always_the_one_used(deployment) -> None:
    """A Region removed from a document read since is never asked, whether the next
    discovery succeeds or fails: the document kept is the newest one read."""
    request_token(deployment.url, "orders-api")
    deployment.order = [HOME, SECOND]
    deployment.modes.update(dict.fromkeys(REGIONS, 503))
    with pytest.raises(TokenError, match=rf"tried {HOME}, {SECOND}\)"):
        request_token(deployment.url, "orders-api")
    deployment.discovery_failure = "html-502"
    with pytest.raises(TokenError, match=rf"tried {HOME}, {SECOND}\)"):
        request_token(deployment.url, "orders-api")
    assert deployment.contacts == [HOME, HOME, SECOND, HOME, SECOND]  # never THIRD again
    deployment.order = [THIRD, HOME]
    deployment.discovery_failure = None
    deployment.modes[THIRD] = "ok"
    assert request_token(deployment.url, "orders-api")["access_token"] == f"{THIRD}-token-2"


@pytest.mark.parametrize(
    "answer", ["gateway-404", "another issuer", "an endpoint elsewhere", "no regions"]
)
def test_a_document_answered_but_wrong_is_not_fallen_back_from(
    deployment, monkeypatch, answer
) -> None:
    """A 4xx (the URL is no tokex issuer) or a document that is refused (another issuer,
    a Regional endpoint elsewhere) is no outage: refused as before, nothing sent. A fresh
    document without Regions (the Regions removed) is one attempt at `{iss}/token`."""
    request_token(deployment.url, "orders-api")
    real = deployment.document
    if answer == "gateway-404":
        deployment.discovery_failure = answer
    elif answer == "another issuer":
        monkeypatch.setattr(deployment, "document", lambda: {**real(), "issuer": "https://x.io"})
    elif answer == "an endpoint elsewhere":
        token_endpoint = f"{deployment.url}/elsewhere/regions/{HOME}/token"
        elsewhere = [{"region": HOME, "token_endpoint": token_endpoint}]
        monkeypatch.setattr(deployment, "document", lambda: {**real(), "tokex_regions": elsewhere})
    else:
        deployment.with_regions = False
        deployment.modes.update({HOME: 503, "home": 503})
    with pytest.raises(TokenError):
        request_token(deployment.url, "orders-api")
    assert deployment.contacts == [HOME] + (["home"] if answer == "no regions" else [])
    if answer == "no regions":  # and no Regions kept either
        deployment.discovery_failure = "html-502"
        with pytest.raises(TokenError) as failed:
            request_token(deployment.url, "orders-api")
        assert failed.value.url == f"{deployment.url}/.well-known/openid-configuration"


def test_a_discovery_that_never_answers_leaves_the_regions_their_time(deployment) -> None:
    """With a document to fall back on, a discovery that holds the request (until 20 s, 5
    times the budget) gets one share of the 4 s, as one more Region would: the Regions
    answer within what is left. Given the whole budget, as without a document kept, it
    would leave them none."""
    request_token(deployment.url, "orders-api")
    deployment.late_discovery = True
    deployment.answer_late(after=20)
    response = request_token(deployment.url, "orders-api", timeout=4)
    assert response["access_token"].split("-token-")[0] in REGIONS  # not late, not none
    assert deployment.discoveries == 2


def test_concurrent_clients_share_the_last_good_document(deployment) -> None:
    """TokenClients of one process, each in threads of its own (as the proxy's and the
    auth classes' are): the documents they read together are kept once, and when
    discovery then fails, every one of them fails over with it."""
    count = 16
    # Sixteen threads each loading credentials, fetching discovery and exchanging at once:
    # on two loaded cores (the suite beside them) that once took past the default 10 s.
    # No Region here answers late, so a longer budget changes nothing else.
    budget = 60
    clients = [TokenClient(deployment.url, timeout=budget) for _ in range(count)]
    barrier = threading.Barrier(count)
    tokens: list[str | None] = [None] * count
    failures: list[BaseException] = []

    def ask(index: int, audience: str) -> None:
        barrier.wait()
        try:
            tokens[index] = clients[index].token(audience)
        except BaseException as err:  # reported by the assertion below
            failures.append(err)

    def all_ask(audience: str) -> list[str | None]:
        threads = [threading.Thread(target=ask, args=(i, audience)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=2 * budget)
        assert failures == []
        return list(tokens)

    assert {t.split("-token-")[0] for t in all_ask("orders-api") if t} == {HOME}
    deployment.discovery_failure = "html-502"
    deployment.modes[HOME] = 503
    assert {t.split("-token-")[0] for t in all_ask("billing-api") if t} == {SECOND}
    assert deployment.exchanges_in(SECOND) == count
    assert deployment.discoveries == 2 * count
    assert LAST_GOOD_DISCOVERIES.last(deployment.url) is not None


def test_the_newest_document_read_is_kept_whatever_order_threads_keep_them() -> None:
    """Threads whose fetches overlap keep what they read in any order: the one answered
    last wins, and one store never tears another."""
    kept = LastGoodDiscoveries()
    documents = [
        Discovery("https://a.io", (RegionalEndpoint(r, f"https://a.io/regions/{r}/token"),))
        for r in EIGHT_REGIONS
    ]
    count = len(documents)
    barrier = threading.Barrier(count)

    def keep(index: int) -> None:
        barrier.wait()
        for _ in range(200):
            kept.keep("https://a.io", documents[index], fetched_at=float(index))

    # The newest answer first, then the older ones on top of it, all at once.
    kept.keep("https://a.io", documents[-1], fetched_at=float(count - 1))
    threads = [threading.Thread(target=keep, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert kept.last("https://a.io") is documents[-1]
    assert kept.last("https://b.io") is None


def test_at_most_so_many_endpoints_are_kept_the_least_recently_read_forgotten() -> None:
    kept = LastGoodDiscoveries()
    for number in range(LastGoodDiscoveries.MAX_ENDPOINTS + 1):
        kept.keep(f"https://{number}.io", Discovery(f"https://{number}.io"), fetched_at=number)
    kept.keep("https://1.io", Discovery("https://1.io"), fetched_at=1000.0)  # read again
    kept.keep("https://new.io", Discovery("https://new.io"), fetched_at=1001.0)
    assert kept.last("https://0.io") is None  # the first read, forgotten first
    assert kept.last("https://2.io") is None
    assert kept.last("https://1.io") is not None and kept.last("https://new.io") is not None


# --- the budget: TokenClient(timeout=...), validated --------------------------------------


@pytest.mark.parametrize(
    "timeout", [0, -1, float("nan"), float("inf"), 3601, 1e20, "5", True, None]
)
def test_the_timeout_must_be_a_positive_number_of_seconds(timeout) -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        TokenClient("https://auth.example.com", timeout=timeout)
    if timeout is not None:  # None: the auth classes' "TokenClient's default"
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            TokexAuth("https://auth.example.com", "orders-api", timeout=timeout)
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        request_token("https://auth.example.com", "orders-api", timeout=timeout)


def test_auth_classes_pass_timeout_and_region_to_the_client_they_make(deployment) -> None:
    # Every Region answers only at 7.5 s (5 times the 1.5 s given): the call gives up on
    # all of them, the Region given first. With the client's default 10 s instead (a
    # timeout the auth class dropped), the last Region's attempt would still be waiting at
    # 7.5 s, and the request would go with its late token.
    deployment.modes.update(dict.fromkeys(REGIONS, "late"))
    deployment.answer_late(after=7.5)
    auth = TokexHttpxAuth(deployment.url, "orders-api", region=SECOND, timeout=1.5)
    request = httpx.Request("GET", "https://orders.example.com/")
    with pytest.raises(TokenError) as failed:
        next(auth.sync_auth_flow(request))
    assert str(failed.value).startswith(f"no Region gave a token (tried {SECOND}")
    assert deployment.issued == []
    deployment.modes.update(dict.fromkeys(REGIONS, "ok"))
    prepared = requests.Request("GET", "https://orders.example.com/").prepare()
    with_region = TokexAuth(deployment.url, "orders-api", region=SECOND, timeout=3)
    assert with_region(prepared).headers["Authorization"] == f"Bearer {SECOND}-token-1"
    with pytest.raises(ValueError, match="to the TokenClient"):
        TokexAuth(TokenClient(deployment.url), "orders-api", timeout=3)
    with pytest.raises(ValueError, match="to the TokenClient"):
        TokexHttpxAuth(TokenClient(deployment.url), "orders-api", region=SECOND)


# --- one issuer, one cache, one exchange in flight ----------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_from_any_region_is_cached_under_the_same_key(deployment) -> None:
    clock = FakeClock()
    client = TokenClient(deployment.url, clock=clock)
    deployment.modes[HOME] = 503
    assert client.token("orders-api", ["b", "a"]) == f"{SECOND}-token-1"
    assert client.token("orders-api", ["a", "b"]) == f"{SECOND}-token-1"
    assert client.cached_token("orders-api", ["a", "b"]) == f"{SECOND}-token-1"
    assert deployment.contacts == [HOME, SECOND]
    deployment.modes[HOME] = "ok"  # home is back: the refresh goes there
    clock.now += 0.8 * 900
    assert client.token("orders-api", ["a", "b"]) == f"{HOME}-token-2"
    assert deployment.contacts == [HOME, SECOND, HOME]


def test_threads_while_the_home_region_is_down_make_one_exchange_per_key(deployment) -> None:
    deployment.modes[HOME] = 503
    deployment.delay = 0.3  # every thread asks while the first exchange is in flight
    client = TokenClient(deployment.url)
    audiences = ["orders-api", "billing-api"]
    count = 16
    barrier = threading.Barrier(count)
    results: list[str | None] = [None] * count

    def one(index: int) -> None:
        barrier.wait()
        results[index] = client.token(audiences[index % 2])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert deployment.exchanges_in(HOME) == 2  # one failed attempt per key
    assert deployment.exchanges_in(SECOND) == 2  # one exchange per key
    assert sorted(set(results)) == sorted(deployment.issued)
    assert deployment.discoveries == 2


# --- without tokex_regions, or bound with issuer=: as before -----------------------------


def test_without_tokex_regions_one_attempt_at_the_issuer_token_endpoint(deployment) -> None:
    deployment.with_regions = False
    assert "tokex_regions" not in deployment.document()
    assert request_token(deployment.url, "a", region=SECOND)["access_token"] == "home-token-1"
    assert_signed_for(deployment.forms["home"][0], SECOND)
    assert request_token(deployment.url, "a")["access_token"] == "home-token-2"
    assert_signed_for(deployment.forms["home"][1], HOME)  # no region: us-east-1
    deployment.modes["home"] = 503
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "a")
    assert str(failed.value) == "temporarily_unavailable: try later"  # no Regions named
    assert failed.value.status == 503
    assert deployment.contacts == ["home"] * 3


def test_a_bound_issuer_skips_discovery_and_its_regions(deployment) -> None:
    assert request_token(deployment.url, "a", issuer=deployment.url)["access_token"]
    assert (deployment.discoveries, deployment.contacts) == (0, ["home"])


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ({"region": "us-east-1"}, "is not a list"),
        ([{"token_endpoint": "https://x.example/t"}], "without a region name"),
        ([{"region": "us-east-1", "token_endpoint": "http://x.example/t"}], "no https token"),
        ([{"region": "us-east-1", "token_endpoint": "https://x.example/t?a=1"}], "no https"),
        ([{"region": "us-east-1"}], "no https token endpoint for us-east-1"),
        (  # ISSUER: the deployment's URL, so that each entry alone would be accepted
            [{"region": "us-east-1", "token_endpoint": "ISSUER/regions/us-east-1/token"}] * 2,
            "lists us-east-1 twice",
        ),
    ],
)
def test_a_malformed_tokex_regions_is_refused(deployment, monkeypatch, member, why) -> None:
    member = json.loads(json.dumps(member).replace("ISSUER", deployment.url))
    real = deployment.document
    monkeypatch.setattr(deployment, "document", lambda: {**real(), "tokex_regions": member})
    with pytest.raises(TokenError, match=why) as refused:
        request_token(deployment.url, "orders-api")
    assert refused.value.error == "not_tokex"
    assert deployment.contacts == []


# --- a Regional endpoint is only ever {issuer}/regions/<region>/token ----------------------


@contextmanager
def elsewhere_running() -> Iterator[tuple[str, list[str]]]:
    """Another loopback server (another port), recording every request it gets and giving
    a token to any POST: where a tampered document would send the signed requests."""
    received: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            received.append(f"GET {self.path}")
            self.send_document(404, b"{}", {"Content-Type": "application/json"})

        def do_POST(self) -> None:
            received.append(f"POST {self.path}")
            token = json.dumps({"access_token": "elsewhere", "expires_in": 900}).encode()
            self.send_document(200, token, {"Content-Type": "application/json"})

    with serving(LoopbackServer(Handler)) as server:
        yield server.url, received


# How a Regional token endpoint may differ from `{issuer}/regions/<region>/token`:
# (issuer, the other server's URL, the entry's Region) -> the endpoint listed instead.
TAMPERED: dict[str, Callable[[str, str, str], str]] = {
    "another port": lambda issuer, elsewhere, region: f"{elsewhere}/regions/{region}/token",
    "another host": lambda issuer, elsewhere, region: (
        f"https://tokex.example.net/regions/{region}/token"
    ),
    "another name for the same host": lambda issuer, elsewhere, region: (
        f"{issuer.replace('127.0.0.1', 'localhost')}/regions/{region}/token"
    ),
    "another scheme": lambda issuer, elsewhere, region: (
        f"{issuer.replace('http://', 'https://')}/regions/{region}/token"
    ),
    "the issuer's own token endpoint": lambda issuer, elsewhere, region: f"{issuer}/token",
    "another Region's endpoint": lambda issuer, elsewhere, region: (
        f"{issuer}/regions/{SECOND if region != SECOND else HOME}/token"
    ),
    "another path under the issuer": lambda issuer, elsewhere, region: (
        f"{issuer}/v2/regions/{region}/token"
    ),
    "a trailing slash": lambda issuer, elsewhere, region: f"{issuer}/regions/{region}/token/",
    "the Region's introspection endpoint": lambda issuer, elsewhere, region: (
        f"{issuer}/regions/{region}/introspect"
    ),
    "a query": lambda issuer, elsewhere, region: (
        f"{issuer}/regions/{region}/token?next={elsewhere}"
    ),
}


def list_endpoint(deployment: Deployment, monkeypatch, region: str, endpoint: str) -> None:
    """The deployment's discovery document lists `endpoint` as `region`'s token endpoint."""
    real = deployment.document

    def tampered() -> dict[str, Any]:
        document = real()
        for entry in document["tokex_regions"]:
            if entry["region"] == region:
                entry["token_endpoint"] = endpoint
        return document

    monkeypatch.setattr(deployment, "document", tampered)


@pytest.mark.parametrize("region", [HOME, THIRD])  # the first asked, or one never reached
@pytest.mark.parametrize("how", list(TAMPERED))
def test_a_regional_endpoint_not_the_issuers_own_is_refused_and_nothing_is_sent(
    deployment, monkeypatch, how, region
) -> None:
    """The whole document is refused, even with a healthy home Region listed as published:
    no signed request goes to the other server, nor to the issuer."""
    with elsewhere_running() as (elsewhere, received):
        endpoint = TAMPERED[how](deployment.url, elsewhere, region)
        list_endpoint(deployment, monkeypatch, region, endpoint)
        with pytest.raises(TokenError) as refused:
            request_token(deployment.url, "orders-api", region=region)
        with pytest.raises(TokenError):
            TokenClient(deployment.url).token("orders-api")
    assert (refused.value.error, refused.value.status) == ("not_tokex", None)
    assert refused.value.url == f"{deployment.url}/.well-known/openid-configuration"
    # Named: the Region, and the URL tokex publishes for it.
    assert re.search(
        rf"tokex_regions (gives|has no https token endpoint for) {region}\b", str(refused.value)
    )
    assert f"{deployment.url}/regions/{region}/token" in str(refused.value)
    assert received == []  # nothing reached the other server
    assert (deployment.contacts, deployment.forms) == ([], {})  # nor the issuer's exchanges
    assert deployment.discoveries == 2


def test_the_refusal_names_the_region_and_the_url_tokex_publishes(deployment, monkeypatch) -> None:
    with elsewhere_running() as (elsewhere, received):
        list_endpoint(deployment, monkeypatch, SECOND, f"{elsewhere}/regions/{SECOND}/token")
        with pytest.raises(TokenError) as refused:
            request_token(deployment.url, "orders-api")
    assert str(refused.value) == (
        f"{deployment.url}/.well-known/openid-configuration: tokex_regions gives {SECOND} the "
        f"token endpoint '{elsewhere}/regions/{SECOND}/token', not "
        f"{deployment.url}/regions/{SECOND}/token: a Regional token endpoint must be the one "
        "this issuer publishes for that Region"
    )
    assert received == []
    assert deployment.contacts == []


def test_cli_refuses_a_regional_endpoint_on_another_port(deployment, monkeypatch, capsys) -> None:
    with elsewhere_running() as (elsewhere, received):
        list_endpoint(deployment, monkeypatch, HOME, f"{elsewhere}/regions/{HOME}/token")
        ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--json")
        code, out, err = tokex(capsys, *ask)
    failure = json.loads(out)
    assert (code, err, failure["error"]) == (1, "", "not_tokex")
    assert f"{deployment.url}/regions/{HOME}/token" in failure["error_description"]
    assert received == []
    assert deployment.contacts == []


# --- other evidence: an OIF token from each Region's STS, the same EKS token -----------------


@pytest.fixture
def sts(monkeypatch) -> Iterator[dict[str, Any]]:
    """A loopback STS (the query protocol) that hands out OIF tokens naming the Region
    the call was signed for, or answers 503 for the Regions in `down` (a plain-text 503,
    no STS answer, for those in `down-page`), or STS's error answer (status, code) for
    those in `refuse`; for the Regions in `late`, only at `late_at` (time.monotonic()),
    unless the test ended first."""
    state: dict[str, Any] = {
        "regions": [],
        "down": set(),
        "down-page": set(),
        "late": set(),
        "reset": set(),
        "refuse": {},
    }
    released = threading.Event()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            form = parse_qs(body)
            region = self.headers["Authorization"].split("/")[2]  # the credential scope
            state["regions"].append(region)
            late = region in state["late"]
            if late and released.wait(max(0.0, state["late_at"] - time.monotonic())):
                return None  # the test ended first: no answer
            if region in state["reset"]:  # closed without an answer (RST)
                linger = struct.pack("ii", 1, 0)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.connection.close()
                self.close_connection = True
                return None
            if region in state["down"]:
                error = "<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
                return self._xml(503, f'<ErrorResponse xmlns="{STS_XML}">{error}</ErrorResponse>')
            if region in state["down-page"]:  # a load balancer's, before any STS
                return self.send_document(
                    503, b"Service Unavailable", {"Content-Type": "text/plain"}
                )
            if region in state["refuse"]:  # as STS answers, e.g. a Region disabled
                status, code = state["refuse"][region]
                error = (
                    f"<Error><Type>Sender</Type><Code>{code}</Code>"
                    f"<Message>{STS_MESSAGES[code]}</Message></Error>"
                )
                return self._xml(
                    status,
                    f'<ErrorResponse xmlns="{STS_XML}">{error}'
                    "<RequestId>r</RequestId></ErrorResponse>",
                )
            claims = {
                "aud": form["Audience.member.1"][0],
                "sub": "arn:aws:iam::123456789012:role/orders",
                OIF_CLAIMS: {"source_region": region},
            }
            header = base64url.encode_json({"alg": "RS256", "kid": "k"})
            token = f"{header}.{base64url.encode_json(claims)}.c2ln"
            result = f"<GetWebIdentityTokenResult><WebIdentityToken>{token}</WebIdentityToken>"
            self._xml(
                200,
                f'<GetWebIdentityTokenResponse xmlns="{STS_XML}">{result}'
                "<Expiration>2030-01-01T00:00:00Z</Expiration></GetWebIdentityTokenResult>"
                "</GetWebIdentityTokenResponse>",
            )

        def _xml(self, status: int, document: str) -> None:
            self.send_document(status, document.encode(), {"Content-Type": "text/xml"})

    with serving(LoopbackServer(Handler)) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", server.url)
        try:
            yield state
        finally:
            released.set()


# STS's own words for the refusals the tests have it answer.
STS_MESSAGES = {
    "RegionDisabledException": "STS is not activated in this region for account:"
    "123456789012. Your account administrator can activate STS in this region using the"
    " IAM Console.",
    "InvalidClientTokenId": "The security token included in the request is invalid.",
    "Throttling": "Rate exceeded",
    "AccessDenied": "User is not authorized to perform: sts:GetWebIdentityToken",
    "ExpiredToken": "The security token included in the request is expired",
}


def test_oif_asks_each_regions_sts_for_its_own_token(deployment, sts) -> None:
    deployment.modes[SECOND] = 503
    response = request_token(deployment.url, "orders-api", evidence="oif", region=SECOND)
    assert response["access_token"] == f"{HOME}-token-1"
    assert sts["regions"] == [SECOND, HOME]
    assert deployment.contacts == [SECOND, HOME]
    for region in (SECOND, HOME):
        [form] = deployment.forms[region]
        assert form["subject_token_type"] == JWT_TYPE
        claims = jwt_claims(form["subject_token"])
        assert claims[OIF_CLAIMS]["source_region"] == region
        assert claims["aud"] == deployment.url


def test_oif_fails_over_when_a_regions_sts_is_down(deployment, sts) -> None:
    sts["down"] = {HOME}
    response = request_token(deployment.url, "orders-api", evidence="aws-oif")
    assert response["access_token"] == f"{SECOND}-token-1"
    assert sts["regions"] == [HOME, SECOND]
    assert deployment.contacts == [SECOND]


def test_oif_fails_over_when_a_regions_sts_answers_a_5xx_that_is_no_sts_answer(
    deployment, sts
) -> None:
    """botocore cannot parse it (ResponseParserError, not a BotoCoreError): it was raised
    as it came, an internal error, and no other Region was asked."""
    sts["down-page"] = {HOME}
    response = request_token(deployment.url, "orders-api", evidence="aws-oif")
    assert response["access_token"] == f"{SECOND}-token-1"
    assert sts["regions"] == [HOME, SECOND]
    assert deployment.contacts == [SECOND]


def test_oif_fails_over_when_a_regions_sts_resets_the_connection(deployment, sts) -> None:
    """botocore's ConnectionClosedError was an `aws_error` without a status: no failover."""
    sts["reset"] = {HOME}
    response = request_token(deployment.url, "orders-api", evidence="aws-oif")
    assert response["access_token"] == f"{SECOND}-token-1"
    assert sts["regions"] == [HOME, SECOND]


def test_oif_asks_a_failing_sts_once_whatever_botocores_retry_settings(
    deployment, sts, monkeypatch
) -> None:
    """botocore would retry a 503 (5 attempts by default, or AWS_MAX_ATTEMPTS): the
    client asks each Region's STS once and fails over instead."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    sts["down"] = set(REGIONS)
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "orders-api", evidence="aws-oif", timeout=5)
    assert sts["regions"] == [HOME, SECOND, THIRD]
    assert failed.value.status == 503
    assert deployment.contacts == []


def test_an_oif_sts_that_never_answers_fails_over_within_the_budget(deployment, sts) -> None:
    """Home's STS answers only at 15 s (5 times the budget), with an OIF token for home:
    the client gives up on it within its share and fails over. One that waited for it (no
    deadline, botocore's own, or the evidence's 10 s default) would have sent that token to
    home, or found no time left for the next Region."""
    sts["late"] = {HOME}
    sts["late_at"] = time.monotonic() + 15
    response = request_token(deployment.url, "orders-api", evidence="aws-oif", timeout=3)
    assert response["access_token"] == f"{SECOND}-token-1"
    assert sts["regions"] == [HOME, SECOND]  # home asked once, never retried
    assert deployment.contacts == [SECOND]  # home's late OIF token never went anywhere


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "RegionDisabledException"), (403, "InvalidClientTokenId"), (400, "Throttling")],
)
def test_oif_fails_over_when_a_regions_sts_refuses_as_only_that_region_would(
    deployment, sts, status, code
) -> None:
    """STS deactivated in that Region for the account, an opt-in Region it has not enabled,
    or that Region's STS throttling the account (with sigv4, tokex's own STS call
    throttled is its 503, failed over): the next Region's STS gives its own token. Each
    was an `aws_error`, final."""
    sts["refuse"] = {HOME: (status, code)}
    response = request_token(deployment.url, "orders-api", evidence="aws-oif")
    assert response["access_token"] == f"{SECOND}-token-1"
    assert sts["regions"] == [HOME, SECOND]
    assert deployment.contacts == [SECOND]
    [form] = deployment.forms[SECOND]
    assert jwt_claims(form["subject_token"])[OIF_CLAIMS]["source_region"] == SECOND


@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (403, "ExpiredToken")])
def test_oif_stops_at_an_sts_refusal_that_is_the_same_everywhere(
    deployment, sts, status, code
) -> None:
    sts["refuse"] = {HOME: (status, code)}
    with pytest.raises(TokenError) as refused:
        request_token(deployment.url, "orders-api", evidence="aws-oif")
    assert (refused.value.error, refused.value.status, refused.value.aws_code) == (
        "aws_error",
        status,
        code,
    )
    assert sts["regions"] == [HOME]
    assert deployment.contacts == []


def test_oif_reports_the_first_regions_sts_refusal(deployment, sts) -> None:
    sts["refuse"] = {
        HOME: (403, "InvalidClientTokenId"),
        SECOND: (403, "RegionDisabledException"),
        THIRD: (400, "Throttling"),
    }
    with pytest.raises(TokenError) as refused:
        request_token(deployment.url, "orders-api", evidence="aws-oif")
    error = refused.value
    assert (error.error, error.status, error.aws_code) == ("aws_error", 403, "InvalidClientTokenId")
    assert str(error).startswith(
        f"no Region gave a token (tried {HOME}, {SECOND}, {THIRD}); {HOME}: "
        "sts:GetWebIdentityToken at "
    )
    assert str(error).endswith(
        f"refused: InvalidClientTokenId: {STS_MESSAGES['InvalidClientTokenId']}"
    )
    assert sts["regions"] == [HOME, SECOND, THIRD]
    assert deployment.contacts == []


def test_oif_throttled_everywhere_reports_the_last_as_any_outage(deployment, sts) -> None:
    sts["refuse"] = dict.fromkeys(REGIONS, (400, "Throttling"))
    with pytest.raises(TokenError) as failed:
        request_token(deployment.url, "orders-api", evidence="aws-oif")
    assert failed.value.aws_code == "Throttling"
    assert f"tried {HOME}, {SECOND}, {THIRD}); {THIRD}: " in str(failed.value)
    assert sts["regions"] == list(REGIONS)


def test_oif_without_regions_an_sts_refusal_is_final_as_ever(deployment, sts) -> None:
    deployment.with_regions = False
    sts["refuse"] = {HOME: (403, "RegionDisabledException")}
    with pytest.raises(TokenError) as refused:
        request_token(deployment.url, "orders-api", evidence="aws-oif")
    assert (refused.value.error, refused.value.aws_code) == ("aws_error", "RegionDisabledException")
    assert str(refused.value).startswith("sts:GetWebIdentityToken at ")  # no Regions named
    assert sts["regions"] == [HOME]
    assert deployment.contacts == []


def test_eks_sends_the_same_token_to_each_region(monkeypatch, tmp_path) -> None:
    without_aws_set_up(monkeypatch)
    with deployment_running() as deployment:
        path = sa_token_file(tmp_path, deployment.url)
        deployment.modes[HOME] = 503
        response = request_token(deployment.url, "orders-api", evidence="eks", token_file=path)
        assert response["access_token"] == f"{SECOND}-token-1"
        token = path.read_text().strip()
        assert [deployment.forms[r][0]["subject_token"] for r in (HOME, SECOND)] == [token] * 2


# --- tokex token --timeout, and failover from the command line ----------------------------


def tokex(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.strip(), err


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "", "1e400", "1e20", "3601"])
def test_cli_timeout_must_be_a_positive_number(deployment, capsys, value) -> None:
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--timeout", value)
    code, out, err = tokex(capsys, *ask)
    assert (code, out) == (2, "")
    assert f"--timeout {value!r}: must be a positive number of seconds" in err
    code, out, err = tokex(capsys, *ask, "--json")
    failure = json.loads(out)
    assert (code, err, failure["error"], failure["input"]) == (2, "", "invalid_value", "--timeout")
    assert deployment.discoveries == 0  # found before any network call


def test_cli_fails_over_and_says_so_with_v(deployment, capsys) -> None:
    deployment.modes[HOME] = 503
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--timeout", "5")
    code, out, err = tokex(capsys, *ask, "--json")
    assert (code, json.loads(out)["access_token"], err) == (0, f"{SECOND}-token-1", "")
    code, out, err = tokex(capsys, *ask, "-v")
    assert (code, out) == (0, f"{SECOND}-token-2")
    assert f"exchanging at {deployment.url}/regions/{HOME}/token (Region {HOME})" in err
    assert f"Region {HOME} failed: temporarily_unavailable: try later; trying {SECOND}" in err
    code, out, _ = tokex(capsys, *ask, "--region", SECOND)
    assert (code, out) == (0, f"{SECOND}-token-3")
    assert deployment.contacts == [HOME, SECOND, HOME, SECOND, SECOND]


def sent_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("tokex token: sending")]


def test_cli_v_names_the_region_each_attempt_signs_for(deployment, capsys) -> None:
    """`--region us-west-2` is none of the deployment's Regions: home is asked first, then
    the second, each with a request signed for itself. `-v` said once, before discovery,
    "signed for us-west-2", a Region nothing was signed for."""
    deployment.modes[HOME] = 503
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--region", "us-west-2")
    code, out, err = tokex(capsys, *ask, "-v")
    assert (code, out) == (0, f"{SECOND}-token-1")
    told = [line for line in err.splitlines() if "sending" in line or "exchanging" in line]
    assert told == [
        f"tokex token: exchanging at {deployment.url}/regions/{HOME}/token (Region {HOME})",
        f"tokex token: sending a GetCallerIdentity request signed for {HOME}",
        f"tokex token: exchanging at {deployment.url}/regions/{SECOND}/token (Region {SECOND})",
        f"tokex token: sending a GetCallerIdentity request signed for {SECOND}",
    ]
    assert "us-west-2" not in err
    assert_signed_for(deployment.forms[HOME][0], HOME)
    assert_signed_for(deployment.forms[SECOND][0], SECOND)


def test_cli_v_names_the_sts_each_oif_attempt_asks(deployment, sts, capsys) -> None:
    sts["down"] = {HOME}
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--region", "us-west-2")
    code, out, err = tokex(capsys, *ask, "--evidence", "aws-oif", "-v")
    assert (code, out) == (0, f"{SECOND}-token-1")
    assert sent_lines(err) == [
        f"tokex token: sending a JWT from sts:GetWebIdentityToken in {r} (RS256, 60 s)"
        for r in (HOME, SECOND)
    ]
    assert sts["regions"] == [HOME, SECOND]


def test_cli_v_without_tokex_regions_names_the_region_signed_for(deployment, capsys) -> None:
    deployment.with_regions = False
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "-v")
    for region, given in ((SECOND, ("--region", SECOND)), (HOME, ())):  # HOME: the default
        code, _, err = tokex(capsys, *ask, *given)
        assert code == 0
        assert sent_lines(err) == [
            f"tokex token: sending a GetCallerIdentity request signed for {region}"
        ]
        assert_signed_for(deployment.forms["home"][-1], region)
    assert "exchanging at" not in err  # one endpoint: no Regions to name


def test_cli_v_says_when_it_falls_back_on_the_last_document(deployment, capsys) -> None:
    """In one process (the command as a library call): `-v` names the outage and the
    Regions of the document it falls back on."""
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--timeout", "5")
    assert tokex(capsys, *ask)[:2] == (0, f"{HOME}-token-1")
    deployment.discovery_failure = "html-502"
    code, out, err = tokex(capsys, *ask, "-v")
    assert (code, out) == (0, f"{HOME}-token-2")
    assert "/.well-known/openid-configuration answered HTTP 502" in err
    assert f"trying the Regions of the last discovery document read: {', '.join(REGIONS)}" in err


def test_cli_every_region_refusing_reports_the_first_and_v_names_each(deployment, capsys) -> None:
    deployment.modes.update(
        {HOME: (400, "invalid_grant"), SECOND: 503, THIRD: (400, "invalid_grant")}
    )
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--timeout", "5")
    code, out, err = tokex(capsys, *ask, "--json")
    failure = json.loads(out)
    assert (code, err, failure["error"]) == (1, "", "invalid_grant")
    assert failure["input"] == f"{deployment.url}/regions/{HOME}/token"
    assert failure["error_description"] == (
        f"no Region gave a token (tried {HOME}, {SECOND}, {THIRD}); {HOME}: "
        f"invalid_grant: refused in {HOME}"
    )
    code, out, err = tokex(capsys, *ask, "-v")
    assert (code, out) == (1, "")
    failed = [line for line in err.splitlines() if " failed: " in line]
    assert failed == [
        f"tokex token: Region {HOME} failed: invalid_grant: refused in {HOME}; trying {SECOND}",
        f"tokex token: Region {SECOND} failed: temporarily_unavailable: try later; trying {THIRD}",
        f"tokex token: Region {THIRD} failed: invalid_grant: refused in {THIRD}",
    ]
    assert err.splitlines()[-1] == f"tokex token: {failure['error_description']}"


def test_cli_all_regions_down(deployment, capsys) -> None:
    # The last Region has what is left of --timeout 1.5 and answers only at 7.5 s: a
    # command with no deadline, or with the default 10 s instead, would print its token.
    deployment.modes.update({HOME: 504, SECOND: "reset", THIRD: "late"})
    deployment.answer_late(after=7.5)
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--timeout", "1.5")
    code, out, err = tokex(capsys, *ask, "--json")
    failure = json.loads(out)
    assert (code, err, failure["error"]) == (1, "", "unreachable")
    assert failure["input"] == f"{deployment.url}/regions/{THIRD}/token"
    assert f"tried {HOME}, {SECOND}, {THIRD}" in failure["error_description"]


def test_cli_shows_a_servers_words_escaped_on_its_own_line(deployment, capsys) -> None:
    """Each line on stderr, with and without -v, is one tokex wrote: a server's escapes and
    line breaks are shown escaped (they drove the terminal, and a line break in a
    description forged a `tokex token: ...` line). --json's description reads the same."""
    deployment.modes.update({HOME: "hostile", SECOND: "hostile-page", THIRD: "hostile"})
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--timeout", "5")
    failed = (
        f"tokex token: no Region gave a token (tried {HOME}, {SECOND}, {THIRD}); {THIRD}: "
        f"temporarily_unavailable: {SHOWN_DESCRIPTION}"
    )
    code, out, err = tokex(capsys, *ask)
    assert (code, out, err) == (1, "", failed + "\n")
    code, out, err = tokex(capsys, *ask, "-v")
    assert (code, out) == (1, "")
    assert err.isascii() and "\x1b" not in err and "\x07" not in err
    lines = err.splitlines()
    assert len(lines) == 9  # per Region: where, what is sent; 2 failovers; the failure
    assert lines[2] == (
        f"tokex token: Region {HOME} failed: temporarily_unavailable: {SHOWN_DESCRIPTION}; "
        f"trying {SECOND}"
    )
    assert lines[5].endswith(f"answered {SHOWN_PAGE}: try again later; trying {THIRD}")
    assert lines[-1] == failed
    code, out, err = tokex(capsys, *ask, "--json")
    assert (code, err) == (1, "")
    assert json.loads(out)["error_description"] == failed.removeprefix("tokex token: ")


def test_cli_cache_finds_a_token_from_another_region(deployment, capsys, tmp_path) -> None:
    deployment.modes[HOME] = 503
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--cache-dir", str(tmp_path))
    assert tokex(capsys, *ask)[:2] == (0, f"{SECOND}-token-1")
    deployment.modes[HOME] = "ok"
    assert tokex(capsys, *ask)[:2] == (0, f"{SECOND}-token-1")  # from the cache
    assert deployment.contacts == [HOME, SECOND]
    assert len(list(Path(tmp_path).glob("*.token.json"))) == 1  # one for both Regions


def test_cli_cache_dir_keeps_the_discovery_document_for_the_next_run(
    deployment, capsys, tmp_path
) -> None:
    """`tokex token` is a fresh process each run: without --cache-dir it never read the
    document before, and with discovery down it cannot fail over. With it, the document
    an earlier run read (a 0600 file beside the tokens) is what it falls back on."""
    ask = ("token", "--endpoint", deployment.url, "--timeout", "5")
    cache = ("--cache-dir", str(tmp_path))
    assert tokex(capsys, *ask, "--audience", "a", *cache)[:2] == (0, f"{HOME}-token-1")
    [kept] = tmp_path.glob("*.discovery.json")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    LAST_GOOD_DISCOVERIES.clear()  # the next run: a fresh process
    deployment.discovery_failure = "html-502"
    deployment.modes[HOME] = 503
    code, out, _ = tokex(capsys, *ask, "--audience", "b", "--json")  # no --cache-dir
    assert (code, json.loads(out)["error"]) == (1, "temporarily_unavailable")
    assert deployment.contacts == [HOME]  # nothing tried
    code, out, _ = tokex(capsys, *ask, "--audience", "b", *cache)
    assert (code, out) == (0, f"{SECOND}-token-2")
    assert deployment.contacts == [HOME, HOME, SECOND]


def test_cli_runs_at_once_on_an_empty_cache_dir_keep_one_whole_document(
    deployment, tmp_path
) -> None:
    """`tokex token` processes started at once on an empty --cache-dir each write the
    discovery document they read: one file is left, whole (each write is atomic), and a
    later run falls back on it."""
    ask = [sys.executable, "-m", "tokex.cli.main", "token", "--endpoint", deployment.url]
    cache = ["--cache-dir", str(tmp_path), "--timeout", "20"]
    runs = [
        subprocess.Popen(
            [*ask, "--audience", f"a{i}", *cache],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    answers = sorted(run.communicate(timeout=60)[0].strip() for run in runs)
    assert [run.returncode for run in runs] == [0, 0, 0, 0]
    assert answers == sorted(f"{HOME}-token-{n}" for n in range(1, 5))
    [kept] = tmp_path.glob("*.discovery.json")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    document = disk_cache.read_discovery(tmp_path, deployment.url)
    assert document is not None
    assert [r.region for r in document.regions] == [HOME, SECOND, THIRD]
    deployment.discovery_failure = "html-502"
    deployment.modes[HOME] = 503
    later = subprocess.run(
        [*ask, "--audience", "b", *cache], capture_output=True, text=True, timeout=60, check=False
    )
    assert (later.returncode, later.stdout.strip()) == (0, f"{SECOND}-token-5")


@pytest.mark.parametrize("tampered", ["elsewhere", "another issuer", "mode 0644", "not JSON"])
def test_cli_cache_dir_uses_a_kept_document_only_as_tokex_would_a_fresh_one(
    deployment, capsys, tmp_path, tampered
) -> None:
    """A file edited since cannot send the signed request anywhere a fresh document could
    not (another host, another issuer), and one another user could have written (not
    0600) or that is no document is not read: discovery fails as in a fresh process."""
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--cache-dir", str(tmp_path))
    assert tokex(capsys, *ask)[0] == 0
    [kept] = tmp_path.glob("*.discovery.json")
    document = json.loads(kept.read_text())
    if tampered == "elsewhere":
        elsewhere = f"{deployment.url}/elsewhere/regions/{SECOND}/token"  # another path
        document["tokex_regions"][1]["token_endpoint"] = elsewhere
    elif tampered == "another issuer":
        document["issuer"] = "https://x.io"
    kept.write_text("{" if tampered == "not JSON" else json.dumps(document))
    if tampered == "mode 0644":
        kept.chmod(0o644)
    LAST_GOOD_DISCOVERIES.clear()
    deployment.discovery_failure = "html-502"
    deployment.modes[HOME] = 503
    code, out, _ = tokex(capsys, *ask, "--scope", "other", "--json")
    assert (code, json.loads(out)["input"]) == (
        1,
        f"{deployment.url}/.well-known/openid-configuration",
    )
    assert deployment.contacts == [HOME]


def test_cli_cache_dir_keeps_no_document_without_regions(deployment, capsys, tmp_path) -> None:
    ask = ("token", "--endpoint", deployment.url, "--audience", "a", "--cache-dir", str(tmp_path))
    assert tokex(capsys, *ask)[0] == 0
    assert len(list(tmp_path.glob("*.discovery.json"))) == 1
    deployment.with_regions = False  # the Regions removed: the kept document goes too
    assert tokex(capsys, *ask, "--scope", "other")[0] == 0
    assert list(tmp_path.glob("*.discovery.json")) == []


def test_the_command_lines_default_timeout_is_the_clients() -> None:
    """`tokex token --help` names the default without loading the client."""
    from tokex.cli import token as token_command
    from tokex.client import token_client

    assert token_command.DEFAULT_TIMEOUT == token_client.DEFAULT_TIMEOUT
