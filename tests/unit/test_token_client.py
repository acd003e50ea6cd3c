"""The workload client refuses endpoints that could misuse what it signs, and caches
tokens: refreshed at 80 % of their lifetime, one exchange in flight per audience."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.support.fake_issuer import FakeIssuer, fake_issuer, use_static_credentials
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex import base64url
from tokex.client import token_client
from tokex.client.token_client import (
    REFRESH_AT,
    TokenClient,
    TokenError,
    check_endpoint,
    discover_issuer,
    request_token,
)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://auth.example.com",  # plain http off loopback
        "ftp://auth.example.com",
        "https://user:pw@auth.example.com",
        "https://auth.example.com/?x=1",
        "https://",
    ],
)
def test_endpoint_must_be_https_base_url(endpoint: str) -> None:
    with pytest.raises(TokenError):
        check_endpoint(endpoint)


def test_loopback_http_and_https_are_accepted() -> None:
    assert check_endpoint("http://127.0.0.1:8787/") == "http://127.0.0.1:8787"
    assert check_endpoint("https://auth.example.com") == "https://auth.example.com"


@pytest.fixture
def lookalike() -> Iterator[tuple[str, dict]]:
    """A loopback endpoint whose discovery document says what the test wants."""
    state: dict = {"status": 200, "document": {}, "location": None}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            headers = {"Content-Type": "application/json"}
            if state["location"]:
                headers["Location"] = state["location"]
            self.send_document(state["status"], json.dumps(state["document"]).encode(), headers)

    with serving(LoopbackServer(Handler)) as server:
        yield server.url, state


def test_discovered_issuer_must_be_the_endpoint(lookalike) -> None:
    url, state = lookalike
    state["document"] = {"issuer": url}
    assert discover_issuer(url) == url
    state["document"] = {"issuer": "https://real-tokex.example.com"}
    with pytest.raises(TokenError, match="not this endpoint"):
        discover_issuer(url)


def test_discovery_does_not_follow_redirects(lookalike) -> None:
    url, state = lookalike
    state.update(status=302, location="https://elsewhere.example.com/")
    with pytest.raises(TokenError):
        discover_issuer(url)


# The in-memory cache: refreshed at REFRESH_AT of the lifetime, one exchange per audience.


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer(monkeypatch) -> Iterator[FakeIssuer]:
    use_static_credentials(monkeypatch)
    with fake_issuer(expires_in=900) as running:
        yield running


def test_refresh_happens_at_80_percent_of_the_lifetime(issuer) -> None:
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    assert client.token("orders-api") == "token-1"
    clock.now += 0.8 * 900 - 1  # 1 s before the refresh point: cached
    assert client.token("orders-api") == "token-1"
    assert client.cached_token("orders-api") == "token-1"
    assert issuer.exchanges == 1
    clock.now += 1  # at 80 % of 900 s
    assert client.cached_token("orders-api") is None
    assert client.token("orders-api") == "token-2"
    assert issuer.exchanges == 2
    assert REFRESH_AT <= 0.8


def test_cache_is_per_audience_and_scopes_in_any_order(issuer) -> None:
    client = TokenClient(issuer.url)
    assert client.token("orders-api", ["b", "a"]) == "token-1"
    assert client.token("orders-api", ["a", "b"]) == "token-1"
    assert client.token("orders-api", ["a"]) == "token-2"
    assert client.token("billing-api", ["a"]) == "token-3"
    assert [form["audience"] for form in issuer.forms] == [["orders-api"]] * 2 + [["billing-api"]]


def test_a_token_without_expires_in_is_not_reused(issuer) -> None:
    issuer.expires_in = 0
    client = TokenClient(issuer.url)
    assert client.token("orders-api") == "token-1"
    assert client.token("orders-api") == "token-2"


def _ask_together(count: int, ask) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(index: int) -> None:
        barrier.wait()
        results[index] = ask()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_threads_at_expiry_make_one_exchange_per_audience(issuer) -> None:
    issuer.delay = 0.3  # every thread asks while the first exchange is in flight
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    assert _ask_together(8, lambda: client.token("orders-api")) == ["token-1"] * 8
    assert issuer.exchanges == 1
    clock.now += 900  # expired: everyone waits for the one refresh
    assert _ask_together(8, lambda: client.token("orders-api")) == ["token-2"] * 8
    assert issuer.exchanges == 2


def test_while_one_thread_refreshes_the_others_keep_the_valid_token(issuer) -> None:
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    assert client.token("orders-api") == "token-1"
    # The refresh is held until the other seven have their answer.
    issuer.gate, answered, lock = threading.Event(), [0], threading.Lock()
    clock.now += 0.9 * 900  # due for refresh, still valid

    def ask() -> str:
        token = client.token("orders-api")
        with lock:
            answered[0] += 1
            if answered[0] == 7:
                issuer.gate.set()
        return token

    results = _ask_together(8, ask)
    assert sorted(results) == ["token-1"] * 7 + ["token-2"]
    assert issuer.exchanges == 2
    assert client.token("orders-api") == "token-2"


def test_a_cached_token_costs_no_exchange_and_no_signing(issuer, monkeypatch) -> None:
    client = TokenClient(issuer.url)
    client.token("orders-api")

    def no_signing(*args, **kwargs):
        raise AssertionError("a cached token() signed a request")

    monkeypatch.setattr(token_client, "signed_get_caller_identity", no_signing)
    assert [client.token("orders-api") for _ in range(100)] == ["token-1"] * 100
    assert issuer.exchanges == 1


def test_import_tokex_client_needs_neither_requests_nor_httpx() -> None:
    probe = (
        "import sys, tokex.client; "
        "print(sorted(m for m in ('requests', 'httpx', 'anyio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# The form the client posts with SigV4 evidence (JWT evidence: test_client_evidence.py).


def test_sigv4_request_body(issuer) -> None:
    request_token(issuer.url, "orders-api", scopes=["orders:read", "orders:write"])
    [form] = issuer.forms
    assert form.keys() == {"grant_type", "subject_token_type", "subject_token", "audience", "scope"}
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert form["subject_token_type"] == ["urn:tokex:token-type:aws-sigv4"]
    assert form["audience"] == ["orders-api"]
    assert form["scope"] == ["orders:read orders:write"]
    signed = json.loads(base64url.decode(form["subject_token"][0]))
    # No region in the session (boto3 reads AWS_DEFAULT_REGION, not AWS_REGION): us-east-1.
    assert signed["url"] == "https://sts.us-east-1.amazonaws.com/"
    assert signed["body"] == "Action=GetCallerIdentity&Version=2011-06-15"
    assert signed["headers"]["X-Tokex-Issuer"] == issuer.url
    assert signed["headers"]["X-Tokex-Audience"] == "orders-api"
    assert "/us-east-1/sts/aws4_request" in signed["headers"]["Authorization"]


def test_sigv4_with_instance_evidence_and_a_region(issuer) -> None:
    request_token(issuer.url, "orders-api", region="eu-west-1", instance_evidence="e30")
    [form] = issuer.forms
    assert form["aws_instance_identity"] == ["e30"]
    assert "scope" not in form
    signed = json.loads(base64url.decode(form["subject_token"][0]))
    assert signed["url"] == "https://sts.eu-west-1.amazonaws.com/"


def test_sigv4_is_the_default_evidence(issuer) -> None:
    TokenClient(issuer.url, evidence="sigv4").token("orders-api")
    TokenClient(issuer.url).token("orders-api")
    assert [form["subject_token_type"] for form in issuer.forms] == [
        ["urn:tokex:token-type:aws-sigv4"]
    ] * 2
