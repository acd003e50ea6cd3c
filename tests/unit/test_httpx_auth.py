"""`tokex.client.TokexHttpxAuth`: httpx (sync and async) with a cached tokex token, one
exchange in flight per audience; the async flow never blocks the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest

from tests.support.fake_issuer import (
    FakeIssuer,
    fake_issuer,
    sa_token_file,
    use_static_credentials,
)
from tests.unit.test_requests_auth import serving_redirecting_api
from tests.unit.test_token_client import in_forked_child
from tokex.client import TokenClient, TokexHttpxAuth, token_client


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
    assert not auth._flights  # nothing keeps the finished loop alive


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


def refuse_token_1(request: httpx.Request) -> httpx.Response:
    """An API that no longer accepts token-1 (revoked, or its key rotated out)."""
    authorization = request.headers.get("Authorization", "")
    return httpx.Response(401 if authorization == "Bearer token-1" else 200, text=authorization)


def test_a_401_forgets_the_token_once_it_is_old_enough(issuer) -> None:
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")
    with httpx.Client(auth=auth, transport=httpx.MockTransport(refuse_token_1)) as api:
        # Refused as soon as it was issued: a new one would be too (wrong audience, say).
        assert api.get("https://orders.example.com/").status_code == 401
        assert api.get("https://orders.example.com/").status_code == 401
        assert issuer.exchanges == 1
        now[0] = 60.0
        assert api.get("https://orders.example.com/").status_code == 401  # forgets it
        answer = api.get("https://orders.example.com/")
        assert (answer.status_code, answer.text) == (200, "Bearer token-2")


def test_async_401_forgets_the_token(issuer) -> None:
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")

    async def main() -> list[tuple[int, str]]:
        transport = httpx.MockTransport(refuse_token_1)
        async with httpx.AsyncClient(auth=auth, transport=transport) as api:
            answers = [await api.get("https://orders.example.com/")]
            now[0] = 60.0
            answers += [await api.get("https://orders.example.com/") for _ in range(2)]
        return [(answer.status_code, answer.text) for answer in answers]

    assert asyncio.run(main()) == [
        (401, "Bearer token-1"),
        (401, "Bearer token-1"),
        (200, "Bearer token-2"),
    ]


def test_async_refresh_ahead_of_expiry_keeps_every_coroutine_on_the_valid_token(issuer) -> None:
    """Past the refresh point the exchange runs in the background: no coroutine, the one
    that started it included, waits for it; the next request after it lands gets the new
    token."""
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")

    async def main() -> tuple[list[str], str]:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            await client.get("https://orders.example.com/")
            now[0] = 0.85 * 900
            issuer.gate = threading.Event()  # the refresh is held until all eight answered
            answers = await asyncio.wait_for(
                asyncio.gather(*(client.get("https://orders.example.com/") for _ in range(8))),
                timeout=10,
            )
            issuer.gate.set()
            for _ in range(1000):
                if not auth._flights:
                    break
                await asyncio.sleep(0.01)
            after = await client.get("https://orders.example.com/")
            return [answer.text for answer in answers], after.text

    during, after = asyncio.run(main())
    assert during == ["Bearer token-1"] * 8
    assert after == "Bearer token-2"
    assert issuer.exchanges == 2


def test_on_trio_a_refresh_ahead_of_expiry_keeps_every_task_on_the_valid_token(issuer) -> None:
    """Off asyncio the task that reached the refresh point waited for the whole exchange
    (up to its timeout); now, as on asyncio, it runs in the background."""
    trio = pytest.importorskip("trio")
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")

    async def main() -> tuple[list[str], str]:
        answers: list[str] = []
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            await client.get("https://orders.example.com/")
            now[0] = 0.85 * 900
            issuer.gate = threading.Event()  # the refresh is held until all eight answered
            before = set(threading.enumerate())

            async def ask() -> None:
                answers.append((await client.get("https://orders.example.com/")).text)

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for _ in range(8):
                        nursery.start_soon(ask)
            # One refresh thread of this auth's, however many tasks passed the point.
            refreshing = [
                t for t in threading.enumerate() if t.name == "tokex-refresh" and t not in before
            ]
            assert len(refreshing) == 1, refreshing
            issuer.gate.set()
            with trio.fail_after(10):
                while issuer.exchanges < 2 or auth._refreshing.locked():
                    await trio.sleep(0.01)
            after = await client.get("https://orders.example.com/")
            return answers, after.text

    during, after = trio.run(main)
    assert during == ["Bearer token-1"] * 8
    assert after == "Bearer token-2"
    assert issuer.exchanges == 2


def test_on_trio_a_refresh_that_cannot_start_a_thread_is_tried_again(issuer, monkeypatch) -> None:
    """At a pids limit `Thread.start` raises: the request got that error and the auth kept
    its refresh marked running, so no refresh ahead of expiry ever ran again."""
    trio = pytest.importorskip("trio")
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")
    start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def main() -> list[str]:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            answers = [(await client.get("https://orders.example.com/")).text]
            now[0] = 0.85 * 900
            monkeypatch.setattr(threading.Thread, "start", no_thread)
            answers.append((await client.get("https://orders.example.com/")).text)
            monkeypatch.setattr(threading.Thread, "start", start)
            answers.append((await client.get("https://orders.example.com/")).text)
            with trio.fail_after(10):
                while issuer.exchanges < 2 or auth._refreshing.locked():
                    await trio.sleep(0.01)
            answers.append((await client.get("https://orders.example.com/")).text)
            return answers

    answers = trio.run(main)
    assert answers == ["Bearer token-1"] * 3 + ["Bearer token-2"]


def test_on_trio_a_task_waiting_for_a_first_token_is_cancelled_at_once(issuer) -> None:
    """anyio's default kept a cancelled task until the exchange ended."""
    trio = pytest.importorskip("trio")
    issuer.gate = threading.Event()  # the exchange never ends by itself
    auth = TokexHttpxAuth(TokenClient(issuer.url, timeout=30), "orders-api")

    async def main() -> bool:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            with trio.move_on_after(0.2) as cancel:
                await client.get("https://orders.example.com/")
        # Back while the exchange is still held at the issuer: nobody waited for it.
        return cancel.cancelled_caught and bool(auth.client._flights)

    try:
        assert trio.run(main)
    finally:
        issuer.gate.set()


def test_async_refresh_with_stale_if_error_off_waits_in_the_coroutine_that_started_it(
    issuer,
) -> None:
    """A client that must see a failed refresh: the coroutine that started the exchange
    waits for its outcome; the others keep the still-valid token."""
    now = [0.0]
    client = TokenClient(issuer.url, clock=lambda: now[0], stale_if_error=False)
    auth = TokexHttpxAuth(client, "orders-api")
    answered: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        answered.append(request.headers["Authorization"])
        return echo_authorization(request)

    async def main() -> list[BaseException | httpx.Response]:
        async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(api)) as api_client:
            await api_client.get("https://orders.example.com/")
            now[0] = 0.85 * 900
            issuer.failing, issuer.gate = 503, threading.Event()
            asking = asyncio.gather(
                *(api_client.get("https://orders.example.com/") for _ in range(8)),
                return_exceptions=True,
            )
            for _ in range(3000):
                if len(answered) == 1 + 7:
                    break
                await asyncio.sleep(0.01)
            issuer.gate.set()
            return await asking

    outcomes = asyncio.run(main())
    texts = sorted(o.text for o in outcomes if isinstance(o, httpx.Response))
    errors = [o for o in outcomes if not isinstance(o, httpx.Response)]
    assert texts == ["Bearer token-1"] * 7
    assert [(type(e).__name__, getattr(e, "status", None)) for e in errors] == [("TokenError", 503)]


def test_async_coroutines_share_a_failed_exchange(issuer) -> None:
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")

    async def main() -> list[BaseException | httpx.Response]:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as api:
            await api.get("https://orders.example.com/")
            now[0] = 900.0  # expired
            issuer.failing, issuer.gate = 503, threading.Event()
            asking = asyncio.gather(
                *(api.get("https://orders.example.com/") for _ in range(8)),
                return_exceptions=True,
            )
            await asyncio.sleep(0.2)  # every coroutine has joined the one exchange
            issuer.gate.set()
            return await asking

    outcomes = asyncio.run(main())
    assert [(type(o).__name__, getattr(o, "status", None)) for o in outcomes] == [
        ("TokenError", 503)
    ] * 8
    assert issuer.exchanges == 2


class CountingClient(TokenClient):
    """A TokenClient that counts the calls of `token`, each of which holds a worker
    thread in the async flow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self._count = threading.Lock()

    def token(self, audience: str, scopes: Sequence[str] = ()) -> str:
        with self._count:
            self.calls += 1
        return super().token(audience, scopes)


def test_async_cold_cache_makes_one_exchange_for_a_crowd(issuer) -> None:
    """A new auth, nothing cached, no flight table yet: 16 coroutines at once share one
    exchange in one worker thread (slowed, so they all arrive while it runs)."""
    issuer.delay = 0.3
    client = CountingClient(issuer.url)
    auth = TokexHttpxAuth(client, "orders-api")

    async def main() -> list[str]:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as api:
            answers = await asyncio.gather(
                *(api.get("https://orders.example.com/") for _ in range(16))
            )
            return [answer.text for answer in answers]

    assert asyncio.run(main()) == ["Bearer token-1"] * 16
    assert issuer.exchanges == 1
    assert client.calls == 1  # one worker thread for the loop's 16 coroutines


def test_async_cold_cache_in_four_event_loops_at_once_makes_one_exchange(issuer) -> None:
    """Four threads, each with its own event loop and eight coroutines, on one new auth:
    the TokenClient keeps it to one exchange across loops."""
    issuer.delay = 0.3
    auth = TokexHttpxAuth(TokenClient(issuer.url), "orders-api")
    answered: list[str] = []
    together = threading.Barrier(4, timeout=10)

    def loop_of_eight() -> None:
        async def main() -> list[str]:
            transport = httpx.MockTransport(echo_authorization)
            async with httpx.AsyncClient(auth=auth, transport=transport) as api:
                together.wait()
                answers = await asyncio.gather(
                    *(api.get("https://orders.example.com/") for _ in range(8))
                )
                return [answer.text for answer in answers]

        answered.extend(asyncio.run(main()))

    threads = [threading.Thread(target=loop_of_eight) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert answered == ["Bearer token-1"] * 32
    assert issuer.exchanges == 1


def test_a_background_refresh_that_fails_with_a_bug_is_logged(issuer, monkeypatch, caplog) -> None:
    """With no coroutine waiting for a refresh ahead of expiry, an error that is no
    TokenError (a bug) would reach no caller: it is logged, and requests keep the valid
    token meanwhile."""
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyError("a bug in the refresh")

    async def main() -> list[str]:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as api:
            first = await api.get("https://orders.example.com/")
            monkeypatch.setattr(token_client, "request_token", broken)
            now[0] = 0.85 * 900
            later = await api.get("https://orders.example.com/")
            for _ in range(500):
                if not auth._flights:
                    break
                await asyncio.sleep(0.01)
            return [first.text, later.text]

    with caplog.at_level(logging.ERROR, logger="tokex.client.httpx_auth"):
        assert asyncio.run(main()) == ["Bearer token-1"] * 2
    [record] = [r for r in caplog.records if r.name == "tokex.client.httpx_auth"]
    assert record.getMessage() == "refreshing the token for audience orders-api failed unexpectedly"
    assert isinstance(record.exc_info[1], KeyError)


# A child of os.fork() (multiprocessing's fork start method, a pre-forking server).

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


@fork_only
def test_a_child_forked_during_a_background_refresh_refreshes_in_the_background(issuer) -> None:
    """The child inherited this auth's refresh marked running, with no thread of its own
    to end it: past the refresh point it never refreshed ahead of expiry again."""
    trio = pytest.importorskip("trio")
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")
    url = "https://orders.example.com/"

    async def ask(times: int) -> list[str]:
        texts = []
        async with httpx.AsyncClient(
            auth=auth, transport=httpx.MockTransport(echo_authorization)
        ) as api:
            for _ in range(times):
                texts.append((await api.get(url)).text)
                # The refresh this request started in the background (if any) lands.
                for thread in threading.enumerate():
                    if thread.name == "tokex-refresh":
                        thread.join(timeout=20)
        return texts

    assert trio.run(ask, 1) == ["Bearer token-1"]
    now[0] = 0.85 * 900
    issuer.gate = threading.Event()  # the parent's refresh is in flight at the fork
    try:
        started = threading.Thread(target=trio.run, args=(auth._async_token,))
        started.start()
        started.join(timeout=30)  # its request is back: the refresh runs in the background
        while issuer.exchanges < 2:
            time.sleep(0.01)
        outcome = in_forked_child(
            lambda: ",".join(trio.run(ask, 2)),
            then=issuer.gate.set,  # the server is the parent's: both refreshes pass
        )
    finally:
        issuer.gate.set()
    assert outcome == "Bearer token-1,Bearer token-3"  # the child's own refresh landed


@fork_only
def test_a_child_forked_while_a_thread_looks_up_an_exchange_gets_a_token(issuer) -> None:
    """A lock another thread held at the fork stays held in the child, which has no such
    thread to release it."""
    auth = TokexHttpxAuth(TokenClient(issuer.url), "orders-api")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with TokexHttpxAuth._flights_guard:
            held.set()
            release.wait(timeout=60)

    async def ask() -> str:
        transport = httpx.MockTransport(echo_authorization)
        async with httpx.AsyncClient(auth=auth, transport=transport) as api:
            return (await api.get("https://orders.example.com/")).text

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(timeout=30)
        outcome = in_forked_child(lambda: asyncio.run(ask()), within=10)
    finally:
        release.set()
        holder.join(timeout=30)
    assert outcome == "Bearer token-1"


@pytest.fixture
def redirecting_api() -> Iterator[tuple[str, list[str]]]:
    with serving_redirecting_api() as running:
        yield running


def test_a_401_after_a_redirect_to_another_origin_forgets_nothing(issuer, redirecting_api) -> None:
    """httpx sends no Authorization across origins, so that 401 refused no token: the token
    was forgotten all the same, an exchange per request."""
    url, seen = redirecting_api
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")
    with httpx.Client(auth=auth, follow_redirects=True) as api:
        for _ in range(5):
            now[0] += 60.0  # old enough to be forgotten
            assert api.get(f"{url}/away").status_code == 401
        assert seen == ["none"] * 5
        assert issuer.exchanges == 1
        # A 401 of the token's own origin, after a redirect there, still forgets it.
        assert api.get(f"{url}/back").status_code == 401
        assert seen[-1] == "Bearer token-1"
        api.get(f"{url}/back")
        assert seen[-1] == "Bearer token-2"
    assert issuer.exchanges == 2


def test_async_a_401_after_a_redirect_to_another_origin_forgets_nothing(
    issuer, redirecting_api
) -> None:
    url, seen = redirecting_api
    now = [0.0]
    auth = TokexHttpxAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")

    async def main() -> None:
        async with httpx.AsyncClient(auth=auth, follow_redirects=True) as api:
            for _ in range(5):
                now[0] += 60.0
                assert (await api.get(f"{url}/away")).status_code == 401
            assert (await api.get(f"{url}/back")).status_code == 401
            await api.get(f"{url}/back")

    asyncio.run(main())
    assert seen == ["none"] * 5 + ["Bearer token-1", "Bearer token-2"]
    assert issuer.exchanges == 2
