"""The routes' tokens: a TokenClient per (evidence, token file) caches them and refreshes
them at 80 % of their lifetime with one exchange in flight (client/token_client.py); this
adds what a proxy in front of many requests needs on top.

- **A failure is shared and remembered.** Requests that wait for a token while the one
  exchange is in flight get its outcome, failure included, instead of each trying again
  in turn; and a failure is answered for a moment without asking tokex again (a refusal
  for `REFUSAL_MEMORY_SECONDS`, a 429 for `THROTTLED_MEMORY_SECONDS`, anything else for
  `UNAVAILABLE_MEMORY_SECONDS`): a busy application does not spend its role's exchange
  budget (60 a minute by default, shared by every route of the role) on a refused audience.
- **A refresh that fails is not an outage**: while the token it was to replace is valid,
  that token is used.
- **Invalidation** after an upstream 401, once the token is older than
  `invalidate_min_age` (a token the upstream refuses at once would be refused again).
- **The token response** for the local token endpoint, `expires_in` counted down.

TokenClient keeps the access token only; the lifetime (`exp - iat`) and the granted scope
are read from the token's own claims, as tokex always issues a JWT:
docs/contract.md "The access token (RFC 9068 profile)". Nothing is decided on them but
when a still-valid token can stand in for one that could not be refreshed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from tokex.client.token_client import (
    INVALIDATE_MIN_AGE_SECONDS,
    ISSUED_TO_THE_SECOND,
    TokenClient,
    TokenError,
)
from tokex.client.token_error import UNREACHABLE
from tokex.clock import SuspendAwareClock
from tokex.evidence.sts_endpoints import THROTTLING_CODES
from tokex.proxy.config import ProxyConfig, Route
from tokex.proxy.log import JsonLog

REFUSAL_MEMORY_SECONDS = 10.0  # tokex refused (4xx): a policy change takes this long to show
THROTTLED_MEMORY_SECONDS = 10.0  # tokex answered 429: the role's budget is spent
UNAVAILABLE_MEMORY_SECONDS = 1.0  # unreachable, timed out, 5xx, no credentials
TOKEN_UNAVAILABLE = "token_unavailable"  # the `error` when a failure names no code


class TokenUnavailable(Exception):
    """No token for a route, as the application is answered: 403 when tokex refused, 503
    (with `retry_after` seconds) when it could not be asked or could not answer."""

    def __init__(self, status: int, error: str, description: str, retry_after: int | None):
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.retry_after = retry_after


class TokenSource(Protocol):
    """What ProxyServer asks for tokens (RouteTokens; a test may count calls around it)."""

    def token(self, route: Route) -> str:
        """The route's access token; TokenUnavailable if there is none to be had."""
        ...

    def invalidate(self, route: Route, token: str) -> None:
        """The upstream answered 401 to `token`: the next request should get a new one."""
        ...

    def has_token(self, route: Route) -> bool:
        """A valid token is held (no I/O): for /.tokex/health."""
        ...

    def token_response(self, route: Route) -> dict[str, Any]:
        """{access_token, token_type, expires_in, scope}: for /.tokex/token."""
        ...


@dataclass(frozen=True)
class _Held:
    token: str
    obtained_at: float  # RouteTokens' clock (a SuspendAwareClock)
    lifetime: float
    scope: str | None
    issued_at: float | None  # its `iat`: which of two tokens is the newer

    def issued_before(self, other: _Held) -> bool:
        """Known to be issued before `other` (a token without `iat` never is)."""
        if self.issued_at is None or other.issued_at is None:
            return False
        return self.issued_at < other.issued_at

    @property
    def expires_at(self) -> float:
        return self.obtained_at - ISSUED_TO_THE_SECOND + self.lifetime


@dataclass(frozen=True)
class _Failure:
    refused: bool
    error: str
    description: str
    until: float  # RouteTokens' clock

    def unavailable(self, now: float) -> TokenUnavailable:
        if self.refused:
            return TokenUnavailable(403, self.error, self.description, None)
        retry_after = max(1, math.ceil(self.until - now))
        return TokenUnavailable(503, self.error, self.description, retry_after)


class _Flight:
    """One exchange that the requests arriving meanwhile wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.token: str | None = None
        self.failure: _Failure | None = None


class _RouteState:
    """Per (evidence, token file, audience, scopes): what is held, what failed, what is in
    flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: _Held | None = None
        self.failure: _Failure | None = None
        self.flight: _Flight | None = None
        self.refreshing = False  # a refresh ahead of expiry is running in the background


class RouteTokens:
    """The TokenSource of the configured routes (see the module docstring)."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        log: JsonLog | None = None,
        clock: Callable[[], float] | None = None,
        invalidate_min_age: float = INVALIDATE_MIN_AGE_SECONDS,
        **options: Any,
    ) -> None:
        """`options`: TokenClient's (request_token's keyword arguments: session, region,
        issuer, timeout, ...), for every client. `clock`: one SuspendAwareClock, shared
        with the clients, unless given (the held tokens' ages and the clients' agree)."""
        self._log = log or JsonLog()
        self._clock = clock = clock or SuspendAwareClock()
        self._invalidate_min_age = invalidate_min_age
        self._clients: dict[tuple[str, str | None], TokenClient] = {}
        self._states: dict[tuple[str, str | None, str, tuple[str, ...]], _RouteState] = {}
        for route in config.routes:
            client_key = (route.evidence, route.token_file)
            if client_key not in self._clients:
                self._clients[client_key] = TokenClient(
                    config.endpoint,
                    evidence=route.evidence,
                    token_file=route.token_file,
                    clock=clock,
                    stale_if_error=False,  # the fallback is this module's: remembered, logged
                    **options,
                )
            self._states.setdefault(_state_key(route), _RouteState())

    def token(self, route: Route) -> str:
        client = self._clients[(route.evidence, route.token_file)]
        token = client.cached_token(route.audience, route.scopes)
        if token is not None:
            return token  # the warm path: a lock and a dict look-up
        state = self._states[_state_key(route)]
        now = self._clock()
        leading = False
        with state.lock:
            if state.failure is not None and now >= state.failure.until:
                state.failure = None
            held, failure, flight = state.held, state.failure, state.flight
            if held is not None and now < held.expires_at:
                if failure is not None:  # its refresh failed a moment ago
                    return held.token
                valid = held
            elif failure is not None:
                raise failure.unavailable(now)
            else:
                valid = None
                leading = flight is None
                if leading:  # the one exchange, for the requests that come meanwhile too
                    flight = state.flight = _Flight()
        if valid is not None:
            return self._refresh(route, client, state, valid)
        assert flight is not None
        if leading:
            return self._lead(route, client, state, flight)
        if not flight.done.wait(client.flight_wait):
            raise TokenUnavailable(
                503,
                UNREACHABLE,
                f"no token for audience {route.audience}: the exchange in flight has not"
                f" finished within {client.flight_wait:g} s",
                1,
            )
        if flight.token is not None:
            return flight.token
        assert flight.failure is not None
        raise flight.failure.unavailable(self._clock())

    def _lead(self, route: Route, client: TokenClient, state: _RouteState, flight: _Flight) -> str:
        try:
            flight.token = self._exchange(route, client, state)
            return flight.token
        except Exception as err:  # whatever it is, the requests waiting get it too
            flight.failure = self._failed(route, state, _token_error(err))
            raise flight.failure.unavailable(self._clock()) from None
        finally:
            with state.lock:
                state.flight = None
            flight.done.set()

    def _refresh(self, route: Route, client: TokenClient, state: _RouteState, held: _Held) -> str:
        """Past the refresh point of a valid token: the request goes on with it at once
        and one refresh per route runs in the background, so no request waits for tokex
        while a valid token is held (a slow tokex would have held it for the exchange's
        whole timeout, longer than many a Lambda function's); a failed refresh is
        remembered and logged, and the valid token stands in until it expires."""
        with state.lock:
            start, state.refreshing = not state.refreshing, True
        if start:
            try:
                threading.Thread(
                    target=self._refresh_in_background,
                    args=(route, client, state),
                    name="tokex-proxy-refresh",
                    daemon=True,
                ).start()
            except RuntimeError as err:  # no thread to be had (a pids limit): not now
                with state.lock:
                    state.refreshing = False  # or no refresh would ever run again
                self._log.write("refresh_not_started", route=route.name, error=str(err))
        return held.token

    def _refresh_in_background(self, route: Route, client: TokenClient, state: _RouteState) -> None:
        try:
            self._exchange(route, client, state)
        except Exception as err:  # whatever it is, the valid token stands in meanwhile
            self._failed(route, state, _token_error(err))
        finally:
            with state.lock:
                state.refreshing = False

    def _exchange(self, route: Route, client: TokenClient, state: _RouteState) -> str:
        # A new token's lifetime counts from a second before it was asked for (tokex counts
        # from when it issued it, in between, to the second before: ISSUED_TO_THE_SECOND),
        # so it is never held past its `exp`.
        sent = self._clock()
        token = client.token(route.audience, route.scopes)
        with state.lock:
            held = state.held
            if held is None or held.token != token:
                got = _held(token, sent)
                # Past the refresh point TokenClient hands the token being replaced to
                # every caller but the one refreshing: one that comes back after the new
                # token was stored must not put the old one back, as if just obtained.
                if held is None or not got.issued_before(held):  # a new one: all is well
                    state.held = got
                    state.failure = None
        return token

    def _failed(self, route: Route, state: _RouteState, err: TokenError) -> _Failure:
        # STS throttling the client's own call (aws-oif's GetWebIdentityToken answers 400
        # `Throttling`) is an outage that passes, as tokex's 429 is: not a refusal.
        throttled = err.status == 429 or err.aws_code in THROTTLING_CODES
        refused = err.status is not None and 400 <= err.status < 500 and not throttled
        if refused:
            memory = REFUSAL_MEMORY_SECONDS
        elif throttled:
            memory = THROTTLED_MEMORY_SECONDS
        else:
            memory = UNAVAILABLE_MEMORY_SECONDS
        # tokex's own `Retry-After` (TokenClient caps it), when it asks for longer.
        memory = max(memory, err.retry_after or 0.0)
        failure = _Failure(
            refused=refused,
            error=err.error or TOKEN_UNAVAILABLE,
            description=f"no token for audience {route.audience}: {err}",
            until=self._clock() + memory,
        )
        with state.lock:
            state.failure = failure
        self._log.write(
            "token_failed",
            route=route.name,
            audience=route.audience,
            error=failure.error,
            status=err.status,
            description=str(err),
        )
        return failure

    def invalidate(self, route: Route, token: str) -> None:
        state = self._states[_state_key(route)]
        now = self._clock()
        with state.lock:
            held = state.held
            if held is None or held.token != token:
                return  # already replaced
            if now - held.obtained_at < self._invalidate_min_age:
                return  # refused as soon as it was issued: a new one would be too
            state.held = None
        client = self._clients[(route.evidence, route.token_file)]
        client.invalidate(route.audience, route.scopes, token)
        self._log.write("token_invalidated", route=route.name, audience=route.audience)

    def has_token(self, route: Route) -> bool:
        state = self._states[_state_key(route)]
        with state.lock:
            held = state.held
        return held is not None and self._clock() < held.expires_at

    def token_response(self, route: Route) -> dict[str, Any]:
        token = self.token(route)
        state = self._states[_state_key(route)]
        with state.lock:
            held = state.held
        if held is None or held.token != token:
            # TokenClient caches a new token a moment before the route holds it (_exchange),
            # and a request in between gets it from TokenClient: counted from its entry.
            held = self._just_obtained(route, token)
        now = self._clock()
        remaining = held.expires_at - now if held is not None else 0
        response: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": max(0, int(remaining)),
        }
        scope = held.scope if held is not None else None
        if scope or route.scopes:
            response["scope"] = scope or " ".join(route.scopes)
        return response

    def _just_obtained(self, route: Route, token: str) -> _Held | None:
        """`token` as the route will hold it, from TokenClient's entry (same clock)."""
        client = self._clients[(route.evidence, route.token_file)]
        entry = client.cached_entry(route.audience, route.scopes)
        if entry is None or entry.access_token != token:
            return None
        return _held(token, entry.obtained_at)


def _token_error(err: Exception) -> TokenError:
    """A failure that is not one of TokenClient's (a bug, an SDK error it did not expect)
    is answered as tokex unavailable (503), never left to the waiting requests to guess."""
    if isinstance(err, TokenError):
        return err
    return TokenError(f"{type(err).__name__}: {err}", error=TOKEN_UNAVAILABLE)


def _state_key(route: Route) -> tuple[str, str | None, str, tuple[str, ...]]:
    return route.evidence, route.token_file, route.audience, tuple(sorted(set(route.scopes)))


def _held(token: str, now: float) -> _Held:
    """`token` obtained `now`, with the lifetime (`exp - iat`), scope and `iat` of a tokex
    access token; no lifetime, scope nor `iat` for a token that is not a JWT with them
    (then nothing stands in for it past its refresh point)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        issued_at = float(claims["iat"])
        lifetime = float(claims["exp"]) - issued_at
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return _Held(token, now, 0.0, None, None)
    if not math.isfinite(lifetime):
        return _Held(token, now, 0.0, None, None)
    scope = claims.get("scope")
    return _Held(
        token, now, max(lifetime, 0.0), scope if isinstance(scope, str) else None, issued_at
    )
