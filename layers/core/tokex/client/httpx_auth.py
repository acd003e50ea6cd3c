"""`httpx` authentication with a tokex access token, sync and async (the `tokex[httpx]`
extra).

auth = TokexHttpxAuth("https://auth.example.com", "orders-api", scopes=["orders:read"])
httpx.get("https://orders.example.com/orders", auth=auth)
async with httpx.AsyncClient(auth=auth) as client: ...

`evidence="eks"` (and `token_file=`) or `evidence="aws-oif"` as for TokexAuth.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Generator
from typing import Any

import anyio.to_thread
import httpx

from tokex.client.bearer import BearerSource
from tokex.client.token_error import TokenError

log = logging.getLogger(__name__)


class TokexHttpxAuth(BearerSource, httpx.Auth):
    """Attaches `Authorization: Bearer` with a token from a shared, thread-safe
    TokenClient: cached, refreshed at 80 % of its lifetime, one exchange in flight per
    audience.

    The async flow never blocks the event loop: a cached token is read without I/O, and
    the exchange (signing, HTTP) runs in a worker thread. The coroutines of one event loop
    share one exchange: N coroutines at expiry hold one worker thread, not N, and all get
    its outcome, failure included. Past the refresh point the exchange runs in the
    background: while the old token is valid every coroutine, the one that started the
    exchange included, uses it, and none waits (with a TokenClient of
    `stale_if_error=False`, the one that started it waits, to see a failure). Across
    threads and loops the TokenClient keeps it to one exchange.

    An answer of 401 forgets the token it was sent with (once that token is
    `INVALIDATE_MIN_AGE_SECONDS` old): the next request gets a new one. The request that
    got the 401 is not sent again (its body may be a stream). A 401 after a redirect to
    another origin, which got no token, forgets nothing.
    """

    # One exchange in flight per event loop, dropped with the loop. The guard is
    # class-wide: it is held only to look an exchange up or start one.
    _flights_guard = threading.Lock()
    _flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[str]] | None = (
        None
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Off asyncio: held while a refresh ahead of expiry runs in a thread of its own.
        self._refreshing = threading.Lock()
        _AUTHS.add(self)  # for a child of os.fork() to reset (_after_fork_in_child)

    def _forked(self) -> None:
        """In the child of os.fork(): the threads running this auth's exchanges are not
        there. Its refresh in the background would stay marked running (no refresh ahead
        of expiry, ever), and an event loop's exchange would never land."""
        self._refreshing = threading.Lock()
        self._flights = None

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        token = self.client.token(self.audience, self.scopes)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        # The answer after any redirects: its request says whether the token went with it.
        sent = response.request.headers.get("Authorization")
        self.refused(response.status_code, token, authorization=sent)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._async_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        # The answer after any redirects: its request says whether the token went with it.
        sent = response.request.headers.get("Authorization")
        self.refused(response.status_code, token, authorization=sent)

    async def _async_token(self) -> str:
        token = self.client.cached_token(self.audience, self.scopes)
        if token is not None:
            return token
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio)
            return await self._token_off_asyncio()
        with self._flights_guard:
            if self._flights is None:
                self._flights = weakref.WeakKeyDictionary()
            flight = self._flights.get(loop)
            joining = flight is not None and not flight.done()
            if flight is None or flight.done():
                flight = self._flights[loop] = loop.run_in_executor(
                    None, self.client.token, self.audience, self.scopes
                )
                flight.add_done_callback(self._landed)
        # A refresh ahead of expiry runs in the background: the coroutine that started it
        # and those that join it use the still-valid token, so no request waits for it.
        # Not for a client that must see a failed refresh (stale_if_error=False): one
        # coroutine, the one that started it, waits for the outcome.
        if joining or self.client.stale_if_error:
            valid = self.client.valid_token(self.audience, self.scopes)
            if valid is not None:
                return valid
        # Shielded: a cancelled caller stops waiting; the exchange goes on for the others.
        return await asyncio.shield(flight)

    async def _token_off_asyncio(self) -> str:
        """As on asyncio: past the refresh point the exchange runs in the background (one
        thread of this auth's at a time; the TokenClient keeps it to one exchange in all)
        while every coroutine uses the still-valid token; a coroutine that must wait for a
        token stops waiting when cancelled, and the exchange goes on for the others."""
        if self.client.stale_if_error:
            valid = self.client.valid_token(self.audience, self.scopes)
            if valid is not None:
                if self._refreshing.acquire(blocking=False):
                    try:
                        threading.Thread(
                            target=self._refresh_in_background, name="tokex-refresh", daemon=True
                        ).start()
                    except RuntimeError:  # no thread to be had (a pids limit): not now
                        self._refreshing.release()  # or no refresh would ever run again
                return valid
        return await anyio.to_thread.run_sync(
            self.client.token, self.audience, self.scopes, abandon_on_cancel=True
        )

    def _refresh_in_background(self) -> None:
        try:
            self.client.token(self.audience, self.scopes)
        except TokenError:
            pass  # the TokenClient holds it: the next caller gets the valid token, or it
        except Exception:
            log.exception("refreshing the token for audience %s failed unexpectedly", self.audience)
        finally:
            self._refreshing.release()

    def _landed(self, flight: asyncio.Future[str]) -> None:
        """Forget a finished exchange (a future holds its loop: kept, the loop could never
        be collected), its exception retrieved even if every waiter was cancelled. One
        that is no TokenError is a bug: logged, since a refresh in the background may
        have no caller to raise it to."""
        error = None if flight.cancelled() else flight.exception()
        if error is not None and not isinstance(error, TokenError):
            log.error(
                "refreshing the token for audience %s failed unexpectedly",
                self.audience,
                exc_info=error,
            )
        with self._flights_guard:
            flights = self._flights
            loop = flight.get_loop()
            if flights is not None and flights.get(loop) is flight:
                del flights[loop]


# Every TokexHttpxAuth of the process (weakly), for the child of an os.fork() to reset.
_AUTHS: weakref.WeakSet[TokexHttpxAuth] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    TokexHttpxAuth._flights_guard = threading.Lock()  # a thread may have held it
    for auth in list(_AUTHS):
        auth._forked()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
