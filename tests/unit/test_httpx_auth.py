"""`tokex.client.TokexHttpxAuth`: httpx (sync and async) with a cached tokex token, one
exchange in flight per audience; the async flow never blocks the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.support.fake_issuer import (
    FakeIssuer,
    fake_issuer,
    sa_token_file,
    use_static_credentials,
)
from tokex.client import TokenClient, TokexHttpxAuth


@pytest.fixture
def issuer(monkeypatch) -> Iterator[FakeIssuer]:
    use_static_credentials(monkeypatch)
    with fake_issuer(expires_in=900) as running:
        yield running


def echo_authorization(request: httpx.Request) -> httpx.Response:
    """The API the workload calls: answers with the Authorization header it got."""
    return httpx.Response(200, text=request.headers.get("Authorization", ""))


def test_sync_attaches_a_bearer_token_and_refreshes_ahead(issuer) -> None:
    now = [0.0]
    auth = TokexHttpxAuth(
        TokenClient(issuer.url, clock=lambda: now[0]), "orders-api", scopes=["orders:read"]
    )
    with httpx.Client(auth=auth, transport=httpx.MockTransport(echo_authorization)) as api:
        assert api.get("https://orders.example.com/").text == "Bearer token-1"
        now[0] = 0.79 * 900
        assert api.get("https://orders.example.com/").text == "Bearer token-1"
        now[0] = 0.8 * 900
        assert api.get("https://orders.example.com/").text == "Bearer token-2"
    assert issuer.forms[0]["scope"] == ["orders:read"]


def test_async_coroutines_at_expiry_make_one_exchange(issuer) -> None:
    issuer.delay = 0.3
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")

    async def main() -> list[str]:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as api:
            first = await api.get("https://orders.example.com/")
            assert first.text == "Bearer token-1"
            now[0] = 900.0  # expired
            answers = await asyncio.gather(
                *(api.get("https://orders.example.com/") for _ in range(16))
            )
            return [answer.text for answer in answers]

    assert asyncio.run(main()) == ["Bearer token-2"] * 16
    assert issuer.exchanges == 2


def test_async_exchange_does_not_block_the_event_loop(issuer) -> None:
    issuer.delay = 0.5
    auth = TokexHttpxAuth(issuer.url, "orders-api")

    async def main() -> int:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.02)

        beating = asyncio.create_task(heartbeat())
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as api:
            assert (await api.get("https://orders.example.com/")).text == "Bearer token-1"
        beating.cancel()
        return ticks

    # The loop kept running while the 0.5 s exchange was in flight (blocked, it would have
    # ticked once or twice).
    assert asyncio.run(main()) >= 5


def test_one_auth_serves_several_event_loops(issuer) -> None:
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")

    async def ask() -> str:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as api:
            return (await api.get("https://orders.example.com/")).text

    assert asyncio.run(ask()) == "Bearer token-1"
    now[0] = 900.0
    assert asyncio.run(ask()) == "Bearer token-2"
    assert asyncio.run(ask()) == "Bearer token-2"


def test_eks_evidence_sync_and_async(issuer, tmp_path) -> None:
    path = sa_token_file(tmp_path, issuer.url)
    auth = TokexHttpxAuth(issuer.url, "orders-api", evidence="eks", token_file=path)
    with httpx.Client(auth=auth, transport=httpx.MockTransport(echo_authorization)) as api:
        assert api.get("https://orders.example.com/").text == "Bearer token-1"

    async def ask() -> str:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as api:
            return (await api.get("https://orders.example.com/")).text

    assert asyncio.run(ask()) == "Bearer token-1"  # cached
    assert issuer.forms == [
        {
            "grant_type": ["urn:ietf:params:oauth:grant-type:token-exchange"],
            "subject_token_type": ["urn:ietf:params:oauth:token-type:jwt"],
            "subject_token": [path.read_text().strip()],
            "audience": ["orders-api"],
        }
    ]
