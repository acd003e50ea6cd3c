"""tokex/proxy/tokens.py: RouteTokens over TokenClient (client/token_client.py), with the
exchange replaced by a scripted one: what is shared, remembered and stood in for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support.fake_issuer import fake_issuer, use_static_credentials
from tokex.client import token_client
from tokex.client.token_client import TokenClient, TokenError
from tokex.proxy.config import ProxyConfig, Route
from tokex.proxy.tokens import (
    REFUSAL_MEMORY_SECONDS,
    THROTTLED_MEMORY_SECONDS,
    UNAVAILABLE_MEMORY_SECONDS,
    RouteTokens,
    TokenUnavailable,
)

LIFETIME = 900


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedExchanges:
    """Stands in for request_token: a new JWT each call, or what `fail` says to raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.fail: Exception | None = None
        self.delay = 0.0
        self.during: Callable[[], None] | None = None  # run once, as the next call waits
        self._lock = threading.Lock()

    def __call__(self, endpoint: str, audience: str, *, scopes=(), **options: Any) -> dict:
        with self._lock:
            self.calls.append((audience, tuple(scopes)))
            number = len(self.calls)
        time.sleep(self.delay)
        during, self.during = self.during, None
        if during is not None:
            during()
        if self.fail is not None:
            raise self.fail
        # Issued a second apart, as tokex's are at least (its `iat` is whole seconds).
        claims = {"iat": number, "exp": number + LIFETIME, "scope": " ".join(scopes) or "all"}
        token = jwt.encode(claims, "k" * 32, algorithm="HS256")
        return {"access_token": token, "token_type": "Bearer", "expires_in": LIFETIME}


def settled(tokens: RouteTokens) -> None:
    """Until no refresh ahead of expiry runs in the background any more."""
    for _ in range(1000):
        if not any(state.refreshing for state in tokens._states.values()):
            return
        time.sleep(0.01)
    pytest.fail("a background refresh did not end")


@pytest.fixture
def exchanges(monkeypatch) -> ScriptedExchanges:
    scripted = ScriptedExchanges()
    monkeypatch.setattr(token_client, "request_token", scripted)
    return scripted


def routes(*more: dict) -> tuple[ProxyConfig, tuple[Route, ...]]:
    first = {"prefix": "/", "upstream": "https://o.example", "audience": "orders-api"}
    document = {
        "endpoint": "https://auth.example.com",
        "listen": "127.0.0.1:0",
        "routes": [{**first, "scopes": ["orders:read"]}, *more],
    }
    config = ProxyConfig.from_document(document, base_dir=Path("/"), environ={})
    return config, config.routes


def together(count: int, ask: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def one(index: int) -> None:
        barrier.wait()
        try:
            results[index] = ask()
        except TokenUnavailable as err:
            results[index] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_a_cold_cache_makes_one_exchange_for_every_waiting_request(exchanges) -> None:
    config, (route,) = routes()
    tokens = RouteTokens(config)
    exchanges.delay = 0.3
    got = together(16, lambda: tokens.token(route))
    assert len(set(got)) == 1 and isinstance(got[0], str)
    assert exchanges.calls == [("orders-api", ("orders:read",))]
    assert tokens.has_token(route)


@pytest.mark.parametrize("code", ["Throttling", "ThrottlingException", "RequestLimitExceeded"])
def test_sts_throttling_the_clients_own_call_is_an_outage_not_a_refusal(
    exchanges, code: str
) -> None:
    """aws-oif: STS answers GetWebIdentityToken `Throttling` with HTTP 400, which the
    client fails over as an outage: the application heard 403 "refused", remembered
    10 s, where docs/injection.md promises 503 with Retry-After."""
    config, (route,) = routes()
    tokens = RouteTokens(config, clock=FakeClock())
    exchanges.fail = TokenError(
        f"sts:GetWebIdentityToken refused: {code}: Rate exceeded",
        error="aws_error",
        status=400,
        aws_code=code,
    )
    with pytest.raises(TokenUnavailable) as failed:
        tokens.token(route)
    assert failed.value.status == 503 and failed.value.retry_after == THROTTLED_MEMORY_SECONDS


def test_a_failure_is_shared_by_the_waiting_requests_and_remembered(exchanges) -> None:
    config, (route,) = routes()
    clock = FakeClock()
    tokens = RouteTokens(config, clock=clock)
    exchanges.delay = 0.3
    exchanges.fail = TokenError("cannot reach it", error="unreachable")
    got = together(16, lambda: tokens.token(route))
    assert all(isinstance(err, TokenUnavailable) for err in got)
    assert {(err.status, err.error, err.retry_after) for err in got} == {(503, "unreachable", 1)}
    assert len(exchanges.calls) == 1  # not one each, in turn
    exchanges.delay = 0
    clock.now += UNAVAILABLE_MEMORY_SECONDS / 2
    with pytest.raises(TokenUnavailable):
        tokens.token(route)
    assert len(exchanges.calls) == 1  # remembered
    clock.now += UNAVAILABLE_MEMORY_SECONDS
    exchanges.fail = None
    assert tokens.token(route)  # and then asked again
    assert len(exchanges.calls) == 2


@pytest.mark.parametrize(
    "failure,status,retry_after,memory",
    [
        (TokenError("invalid_target: no", error="invalid_target", status=400), 403, None, 10),
        (TokenError("no", error="not_tokex", status=404), 403, None, REFUSAL_MEMORY_SECONDS),
        (
            TokenError("slow down", error="temporarily_unavailable", status=429),
            503,
            THROTTLED_MEMORY_SECONDS,
            THROTTLED_MEMORY_SECONDS,
        ),
        (TokenError("down", error="temporarily_unavailable", status=503), 503, 1, 1),
        # tokex's Retry-After, when longer than the proxy's own memory, is honoured.
        (
            TokenError("down", error="temporarily_unavailable", status=503, retry_after=30),
            503,
            30,
            30,
        ),
        (TokenError("no credentials", error="no_credentials"), 503, 1, 1),
    ],
)
def test_a_refusal_is_403_and_everything_else_503_with_retry_after(
    exchanges, failure, status, retry_after, memory
) -> None:
    config, (route,) = routes()
    clock = FakeClock()
    tokens = RouteTokens(config, clock=clock)
    exchanges.fail = failure
    with pytest.raises(TokenUnavailable) as raised:
        tokens.token(route)
    answer = raised.value
    assert (answer.status, answer.error, answer.retry_after) == (status, failure.error, retry_after)
    assert answer.description == f"no token for audience orders-api: {failure}"
    clock.now += memory - 0.5
    with pytest.raises(TokenUnavailable):
        tokens.token(route)
    clock.now += 1
    exchanges.fail = None
    tokens.token(route)
    assert len(exchanges.calls) == 2


def test_a_failed_refresh_keeps_the_valid_token(exchanges) -> None:
    config, (route,) = routes()
    clock = FakeClock()
    tokens = RouteTokens(config, clock=clock)
    first = tokens.token(route)
    clock.now += 0.8 * LIFETIME  # due for refresh, still valid
    exchanges.fail = TokenError("cannot reach it", error="unreachable")
    assert tokens.token(route) == first
    settled(tokens)
    assert tokens.token(route) == first  # the failure is remembered: no second attempt
    settled(tokens)
    assert len(exchanges.calls) == 2
    clock.now += 0.2 * LIFETIME  # expired: now it is an outage
    with pytest.raises(TokenUnavailable):
        tokens.token(route)
    exchanges.fail = None
    clock.now += UNAVAILABLE_MEMORY_SECONDS
    assert tokens.token(route) != first


def test_a_tokens_lifetime_counts_from_when_it_was_asked_for(exchanges) -> None:
    """An answer that took 30 s to come: the token expires 900 s after it was asked for
    (tokex issued it in between), and is not stood in for after that."""
    config, (route,) = routes()
    clock = FakeClock()
    tokens = RouteTokens(config, clock=clock)
    exchanges.during = lambda: setattr(clock, "now", clock.now + 30)
    first = tokens.token(route)
    clock.now = 1000.0 + 0.8 * LIFETIME  # due for refresh, which fails: it stands in
    exchanges.fail = TokenError("cannot reach it", error="unreachable")
    assert tokens.token(route) == first
    settled(tokens)
    clock.now = 1000.0 + LIFETIME  # its `exp`, counted from when it was asked for
    with pytest.raises(TokenUnavailable):
        tokens.token(route)


def test_past_the_refresh_point_no_request_waits_for_the_one_refresh(exchanges) -> None:
    """A request past the refresh point waited for the whole exchange (up to its 10 s
    timeout with a slow tokex, longer than many a Lambda function's) although a valid
    token was held; now every request goes on with it while one refresh runs in the
    background, and the new token is used once it has come."""
    config, (route,) = routes()
    clock = FakeClock()
    tokens = RouteTokens(config, clock=clock)
    old = tokens.token(route)
    clock.now += 0.85 * LIFETIME  # due for refresh, still valid
    gate = threading.Event()
    exchanges.during = lambda: gate.wait(10)  # tokex answers only when the gate opens
    answered: list[str] = []
    asking = threading.Thread(target=lambda: answered.extend(tokens.token(route) for _ in range(5)))
    asking.start()
    asking.join(5)
    assert answered == [old] * 5  # none waited for the exchange held at the gate
    assert len(exchanges.calls) == 2  # one refresh, not one per request
    gate.set()
    settled(tokens)
    new = tokens.token(route)
    assert new != old
    assert tokens.token_response(route) == {
        "access_token": new, "token_type": "Bearer", "expires_in": LIFETIME - 1,
        "scope": "orders:read",
    }  # fmt: skip
    clock.now += 0.85 * LIFETIME  # the old token long expired, the new one still valid
    exchanges.fail = TokenError("cannot reach it", error="unreachable")
    assert tokens.token(route) == new  # a failed refresh: the valid new token, never the old
    settled(tokens)  # its failure logged within the test, not onto a later one's output
    assert tokens.token(route) == new and len(exchanges.calls) == 3


def test_invalidation_drops_a_token_old_enough_and_only_that_token(exchanges) -> None:
    config, (route,) = routes()
    clock = FakeClock()
    tokens = RouteTokens(config, clock=clock, invalidate_min_age=5)
    first = tokens.token(route)
    tokens.invalidate(route, first)  # refused as soon as issued: a new one would be too
    assert tokens.token(route) == first
    clock.now += 5
    tokens.invalidate(route, "some-older-token")  # already replaced: nothing happens
    assert tokens.token(route) == first
    tokens.invalidate(route, first)
    assert not tokens.has_token(route)
    second = tokens.token(route)
    assert second != first and len(exchanges.calls) == 2


def test_routes_share_a_token_by_evidence_audience_and_scopes(exchanges) -> None:
    same = {"prefix": "/v2", "upstream": "https://o2.example", "audience": "orders-api"}
    other = {"prefix": "/b", "upstream": "https://b.example", "audience": "billing-api"}
    config, (orders, orders_v2, billing) = routes({**same, "scopes": ["orders:read"]}, other)
    tokens = RouteTokens(config)
    assert tokens.token(orders) == tokens.token(orders_v2)
    assert tokens.token(billing) != tokens.token(orders)
    assert [audience for audience, _ in exchanges.calls] == ["orders-api", "billing-api"]


def test_the_token_response_counts_expires_in_down(exchanges) -> None:
    config, (route,) = routes()
    clock = FakeClock()
    tokens = RouteTokens(config, clock=clock)
    response = tokens.token_response(route)
    # Its life counted from a second before it was asked for (ISSUED_TO_THE_SECOND).
    assert response == {
        "access_token": tokens.token(route),
        "token_type": "Bearer",
        "expires_in": LIFETIME - 1,
        "scope": "orders:read",
    }
    clock.now += 100.5
    assert tokens.token_response(route)["expires_in"] == LIFETIME - 102


@pytest.mark.parametrize("refresh", [False, True], ids=["cold cache", "refresh"])
def test_the_token_response_of_a_token_the_route_holds_a_moment_later(
    exchanges, monkeypatch, refresh: bool
) -> None:
    """TokenClient caches a new token before the route holds it: a request answered in
    that moment (from TokenClient's cache) still gets the token's own `expires_in` and
    granted scope, never 0 and the scopes asked for. On a cold cache and when a refresh
    ahead of expiry lands alike."""
    config, (route,) = routes()
    clock = FakeClock()
    tokens = RouteTokens(config, clock=clock)
    if refresh:
        tokens.token(route)
        clock.now += LIFETIME * 0.9  # past the refresh point, still valid
    client = tokens._clients[(route.evidence, route.token_file)]
    exchanged, answered = client.token, []

    def landing(audience: str, scopes: tuple[str, ...] = ()) -> str:
        token = exchanged(audience, scopes)
        answered.append(tokens.token_response(route))  # before the route holds it
        return token

    monkeypatch.setattr(client, "token", landing)
    tokens.token(route)  # the refresh: the held token now, the new one in the background
    settled(tokens)
    [answer] = answered
    assert (
        answer["access_token"] == tokens.token(route) == exchanged("orders-api", ("orders:read",))
    )
    assert answer["expires_in"] == LIFETIME - 1
    assert answer["scope"] == "orders:read"  # the granted one: the token's `scope`
    assert answer == tokens.token_response(route)


def test_token_client_invalidate_forgets_only_the_named_token(monkeypatch) -> None:
    use_static_credentials(monkeypatch)
    with fake_issuer() as issuer:
        client = TokenClient(issuer.url)
        assert client.token("orders-api", ["b", "a"]) == "token-1"
        assert client.invalidate("orders-api", ["a", "b"], "token-0") is False
        assert client.token("orders-api", ["a", "b"]) == "token-1"
        assert client.invalidate("orders-api", ["a", "b"], "token-1") is True
        assert client.cached_token("orders-api", ["a", "b"]) is None
        assert client.token("orders-api", ["a", "b"]) == "token-2"
        assert client.invalidate("orders-api", ["a", "b"]) is True  # whatever it holds
        assert client.invalidate("billing-api") is False


def test_an_unexpected_error_is_unavailable_for_every_waiting_request(exchanges) -> None:
    config, (route,) = routes()
    tokens = RouteTokens(config)
    exchanges.delay = 0.3
    exchanges.fail = RuntimeError("a bug")
    got = together(8, lambda: tokens.token(route))
    assert {(err.status, err.error) for err in got} == {(503, "token_unavailable")}
    assert got[0].description == "no token for audience orders-api: RuntimeError: a bug"
    assert len(exchanges.calls) == 1


def test_a_request_waiting_for_the_exchange_in_flight_waits_no_longer_than_its_timeout(
    exchanges, monkeypatch
) -> None:
    """A leader stuck outside the exchange's timeout (its AWS credentials loading) held
    every request that came meanwhile, a thread and a connection each, for as long."""
    monkeypatch.setattr(token_client, "FLIGHT_WAIT_MARGIN_SECONDS", 0.5)
    config, (route,) = routes()
    tokens = RouteTokens(config, timeout=1.0)
    gate = threading.Event()
    exchanges.during = lambda: gate.wait(10)
    leader = threading.Thread(target=lambda: tokens.token(route))
    leader.start()
    while not exchanges.calls:
        time.sleep(0.01)
    with pytest.raises(TokenUnavailable) as waited:
        tokens.token(route)
    assert leader.is_alive()  # the waiter gave up first
    gate.set()
    leader.join(timeout=10)
    assert waited.value.status == 503 and waited.value.retry_after == 1
    assert "has not finished within 1.5 s" in waited.value.description


def test_a_refresh_that_cannot_start_a_thread_is_tried_again(exchanges, monkeypatch) -> None:
    """At a pids limit `Thread.start` raises: the request got that error and the route
    stayed marked as refreshing, so no refresh ahead of expiry ever ran again."""
    config, (route,) = routes()
    clock = FakeClock()
    tokens = RouteTokens(config, clock=clock)
    old = tokens.token(route)
    clock.now += 0.85 * LIFETIME  # due for refresh, still valid
    start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    assert tokens.token(route) == old  # the valid token, not the error
    monkeypatch.setattr(threading.Thread, "start", start)
    assert tokens.token(route) == old  # and the refresh runs now
    settled(tokens)
    assert len(exchanges.calls) == 2 and tokens.token(route) != old
