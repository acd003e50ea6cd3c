"""`httpx` authentication with a tokex access token, sync and async (the `tokex[httpx]`
extra).

auth = TokexHttpxAuth("https://auth.example.com", "orders-api", scopes=["orders:read"])
httpx.get("https://orders.example.com/orders", auth=auth)
async with httpx.AsyncClient(auth=auth) as client: ...

`evidence="eks"` (and `token_file=`) or `evidence="aws-oif"` as for TokexAuth.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, Generator

import anyio.to_thread
import httpx

from tokex.client.bearer import BearerSource


class TokexHttpxAuth(BearerSource, httpx.Auth):
    """Attaches `Authorization: Bearer` with a token from a shared, thread-safe
    TokenClient: cached, refreshed at 80 % of its lifetime, one exchange in flight per
    audience.

    The async flow never blocks the event loop: a cached token is read without I/O, and
    the exchange (signing, HTTP) runs in a worker thread. Coroutines of one event loop
    wait on one asyncio lock, so N coroutines at expiry start one exchange and hold one
    worker thread, not N; across threads and loops the TokenClient's own lock keeps it to
    one exchange.
    """

    # asyncio locks belong to one event loop: one per (auth object, loop), dropped with the
    # loop. The guard is class-wide: it is held only to look a lock up or add one.
    _loop_locks_guard = threading.Lock()
    _loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = self.authorization()
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self._async_token()}"
        yield request

    async def _async_token(self) -> str:
        token = self.client.cached_token(self.audience, self.scopes)
        if token is not None:
            return token
        lock = self._loop_lock()
        if lock is None:  # not asyncio (trio): the TokenClient's lock is the only guard
            return await anyio.to_thread.run_sync(self.client.token, self.audience, self.scopes)
        async with lock:
            token = self.client.cached_token(self.audience, self.scopes)
            if token is not None:  # refreshed while this coroutine waited
                return token
            return await anyio.to_thread.run_sync(self.client.token, self.audience, self.scopes)

    def _loop_lock(self) -> asyncio.Lock | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        with self._loop_locks_guard:
            if self._loop_locks is None:
                self._loop_locks = weakref.WeakKeyDictionary()
            lock = self._loop_locks.get(loop)
            if lock is None:
                lock = self._loop_locks[loop] = asyncio.Lock()
            return lock
