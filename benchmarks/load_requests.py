"""What the load command sends, and the one answer each request must get.

Every request kind builds its own request and judges the answer against what *that*
request must get: a valid exchange must get a token whose signature, `iss`, `aud`, `sub`,
`scope` and `exp` are right for it; a garbage request must get its own 400 and never a
token; an introspection must describe the very token it asked about. An answer computed
from another request's event (issue 9, item 1) is therefore a wrong answer, whatever it is.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from botocore.credentials import ReadOnlyCredentials

from tokex.client.signing import encode_subject_token, signed_get_caller_identity
from tokex.local.provision import DEMO_AUDIENCE, DEMO_POLICY, DEMO_SCOPES
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

REQUEST_TIMEOUT_SECONDS = 30
GARBAGE_BODY = b"grant_type=nothing-valid&audience=x"
UNGRANTED_AUDIENCE = "load-ungranted-api"
FORM = "application/x-www-form-urlencoded"
# Requested scope -> granted scope, under the demo policy (tokex/local/provision.py).
SCOPE_CHOICES: dict[str | None, str] = {
    None: " ".join(DEMO_SCOPES),
    DEMO_SCOPES[0]: DEMO_SCOPES[0],
    DEMO_SCOPES[1]: DEMO_SCOPES[1],
    " ".join(DEMO_SCOPES): " ".join(DEMO_SCOPES),
}


@dataclass(frozen=True)
class Principal:
    name: str
    arn: str  # the `sub` its tokens must carry
    credentials: ReadOnlyCredentials


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes

    def json(self) -> dict[str, Any]:
        value = json.loads(self.raw)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value


class Dropped(Exception):
    """No answer: the connection was refused, reset, closed early or timed out."""


class WrongAnswer(Exception):
    """An answer this request must not get; the message says what was wrong."""


class RateLimited(Exception):
    """A 429: counted apart, neither right nor wrong."""


@dataclass
class BudgetPacer:
    """Spends a principal's per-minute exchange budget no faster than `per_minute`.

    Exchanges that get past STS count against the principal's budget (tokex/ratelimit.py),
    in calendar-minute windows. A token bucket refilled at `per_minute` with room for
    `burst` never spends more than `per_minute + burst` in any minute: kept under the
    deployment's limit, the load gets no 429 from its own pace."""

    per_minute: float
    burst: float
    _level: float = 0.0
    _at: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._level = self.burst

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._level = min(self.burst, self._level + (now - self._at) * self.per_minute / 60)
            self._at = now
            if self._level < 1:
                return False
            self._level -= 1
            return True


@dataclass
class LoadTarget:
    """What every client shares: where to send, who may sign, how to verify."""

    issuer: str
    principals: list[Principal]
    pacers: dict[str, BudgetPacer]  # by principal name; empty = no budget to respect
    keys: dict[str, jwt.PyJWK]  # the published JWKS, by kid
    introspection_authorization: str

    @property
    def netloc(self) -> tuple[str, int]:
        parts = urllib.parse.urlsplit(self.issuer)
        return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass
class ClientState:
    """One client's memory: signed requests it used, tokens it holds (claims verified)."""

    target: LoadTarget
    rng: random.Random
    used_subject_tokens: list[str] = field(default_factory=list)
    tokens: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    round_trip_ms: float = 0.0

    def principal_with_budget(self) -> Principal | None:
        for principal in self.rng.sample(self.target.principals, len(self.target.principals)):
            pacer = self.target.pacers.get(principal.name)
            if pacer is None or pacer.take():
                return principal
        return None

    def any_principal(self) -> Principal:
        return self.rng.choice(self.target.principals)

    def send(self, method: str, path: str, body: bytes = b"", **headers: str) -> Answer:
        """`send`, with the time on the wire added to `round_trip_ms` (the latency
        reported: signing requests and verifying tokens is the client's own work)."""
        started = time.perf_counter()
        try:
            return send(self.target, method, path, body, **headers)
        finally:
            self.round_trip_ms += (time.perf_counter() - started) * 1000


def send(target: LoadTarget, method: str, path: str, body: bytes = b"", **headers: str) -> Answer:
    host, port = target.netloc
    connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        # One connection per request: every answer is read to its end on its own socket.
        headers = {**headers, "Connection": "close"}
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    except (OSError, http.client.HTTPException) as exc:
        raise Dropped(type(exc).__name__) from None
    finally:
        connection.close()


def token_form(
    principal: Principal,
    target: LoadTarget,
    *,
    bound_audience: str = DEMO_AUDIENCE,
    audience: str | None = None,
    scope: str | None = None,
) -> tuple[str, bytes]:
    """(subject_token, form body) of a freshly signed exchange request."""
    signed = signed_get_caller_identity(
        principal.credentials, region="us-east-1", issuer=target.issuer, audience=bound_audience
    )
    subject_token = encode_subject_token(signed)
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": subject_token,
        "audience": audience or bound_audience,
    }
    if scope is not None:
        form["scope"] = scope
    return subject_token, urllib.parse.urlencode(form).encode()


def post_form(state: ClientState, path: str, body: bytes, **headers: str) -> Answer:
    return state.send("POST", path, body, **{"Content-Type": FORM, **headers})


def expect_error(answer: Answer, status: int, error: str, *, rate_limit_possible: bool) -> None:
    if rate_limit_possible and answer.status == 429:
        raise RateLimited
    body = _json_or_wrong(answer)
    if "access_token" in body:
        raise WrongAnswer(f"a token for a request that must get {status} {error}")
    if (answer.status, body.get("error")) != (status, error):
        raise WrongAnswer(f"expected {status} {error}, got {answer.status} {_excerpt(body)}")


def _json_or_wrong(answer: Answer) -> dict[str, Any]:
    try:
        return answer.json()
    except ValueError:
        raise WrongAnswer(f"{answer.status}, not a JSON object: {answer.raw[:120]!r}") from None


def _excerpt(body: dict[str, Any]) -> str:
    shown = {k: ("<token>" if k == "access_token" else v) for k, v in body.items()}
    return json.dumps(shown)[:200]


# --- the kinds --------------------------------------------------------------------------


def exchange(state: ClientState, principal: Principal) -> None:
    requested = state.rng.choice(list(SCOPE_CHOICES))
    subject_token, body = token_form(principal, state.target, scope=requested)
    started = time.time()
    answer = post_form(state, "/token", body)
    if answer.status == 429:
        raise RateLimited
    response = _json_or_wrong(answer)
    if answer.status != 200 or not isinstance(response.get("access_token"), str):
        raise WrongAnswer(f"expected a token, got {answer.status} {_excerpt(response)}")
    received = time.time()
    claims = verify_token(state.target, response["access_token"])
    granted = SCOPE_CHOICES[requested]
    lifetime = claims["exp"] - claims["iat"]
    expires_in = response.get("expires_in")
    checks = {
        "sub": claims.get("sub") == principal.arn,
        "scope": claims.get("scope") == granted == response.get("scope"),
        "token_type": response.get("token_type") == "Bearer",
        "expires_in": lifetime <= DEMO_POLICY["max_ttl_seconds"]
        and isinstance(expires_in, int)
        # Counted from the answer, to its whole second (docs/contract.md
        # "Success — 200 (RFC 8693 §2.2.1)"), on tokex's clock: a second either way for
        # this machine's, as for `iat`.
        and claims["exp"] - math.ceil(received) - 1
        <= expires_in
        <= claims["exp"] - math.ceil(started) + 1,
        # Issued for this request: not before it was sent (one second of rounding).
        "iat": started - 1 <= claims["iat"] <= time.time() + 1,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise WrongAnswer(f"token for {principal.name} with wrong {', '.join(failed)}")
    state.used_subject_tokens = [*state.used_subject_tokens[-7:], subject_token]
    state.tokens = [*state.tokens[-7:], (response["access_token"], claims)]


def verify_token(target: LoadTarget, token: str) -> dict[str, Any]:
    """pyjwt against the JWKS published at start: signature, iss, aud, exp, nbf, iat."""
    try:
        key = target.keys[str(jwt.get_unverified_header(token).get("kid"))]
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm_name],
            audience=DEMO_AUDIENCE,
            issuer=target.issuer,
            options={"require": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]},
        )
    except (jwt.InvalidTokenError, KeyError) as exc:
        raise WrongAnswer(f"token does not verify: {type(exc).__name__}: {exc}") from None
    return claims


def replay(state: ClientState, principal: Principal) -> None:
    """A signed request that already bought a token is used up (contract: single use)."""
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": state.rng.choice(state.used_subject_tokens),
        "audience": DEMO_AUDIENCE,
    }
    answer = post_form(state, "/token", urllib.parse.urlencode(form).encode())
    expect_error(answer, 400, "invalid_grant", rate_limit_possible=True)


def invalid_scope(state: ClientState, principal: Principal) -> None:
    _, body = token_form(principal, state.target, scope="demo:admin")
    answer = post_form(state, "/token", body)
    expect_error(answer, 400, "invalid_scope", rate_limit_possible=True)


def invalid_target(state: ClientState, principal: Principal) -> None:
    _, body = token_form(principal, state.target, bound_audience=UNGRANTED_AUDIENCE)
    answer = post_form(state, "/token", body)
    expect_error(answer, 400, "invalid_target", rate_limit_possible=True)


def foreign_audience(state: ClientState, principal: Principal) -> None:
    """Signed for the demo audience, sent for another: refused before STS."""
    _, body = token_form(principal, state.target, audience=UNGRANTED_AUDIENCE)
    answer = post_form(state, "/token", body)
    expect_error(answer, 400, "invalid_grant", rate_limit_possible=False)


def garbage(state: ClientState, principal: Principal) -> None:
    answer = post_form(state, "/token", GARBAGE_BODY)
    expect_error(answer, 400, "unsupported_grant_type", rate_limit_possible=False)


def introspect(state: ClientState, principal: Principal) -> None:
    """One of this client's own tokens: active, and described by its own claims."""
    token, claims = state.rng.choice(state.tokens)
    body = urllib.parse.urlencode({"token": token}).encode()
    authorization = state.target.introspection_authorization
    answer = post_form(state, "/introspect", body, Authorization=authorization)
    response = _json_or_wrong(answer)
    if answer.status != 200 or response.get("active") is not True:
        raise WrongAnswer(f"expected active, got {answer.status} {_excerpt(response)}")
    described = ("iss", "sub", "aud", "jti", "exp", "scope")
    differ = [name for name in described if response.get(name) != claims.get(name)]
    if differ:
        raise WrongAnswer(f"introspection describes another token: {', '.join(differ)} differ")


def introspect_without_client(state: ClientState, principal: Principal) -> None:
    token = state.tokens[-1][0] if state.tokens else "not-a-token"
    body = urllib.parse.urlencode({"token": token}).encode()
    answer = post_form(state, "/introspect", body)
    expect_error(answer, 401, "invalid_client", rate_limit_possible=False)


def discovery(state: ClientState, principal: Principal) -> None:
    answer = state.send("GET", "/.well-known/openid-configuration")
    document = _json_or_wrong(answer)
    if answer.status != 200 or document.get("issuer") != state.target.issuer:
        raise WrongAnswer(f"discovery: {answer.status} {_excerpt(document)}")


def jwks(state: ClientState, principal: Principal) -> None:
    answer = state.send("GET", "/.well-known/jwks.json")
    document = _json_or_wrong(answer)
    kids = {key.get("kid") for key in document.get("keys", []) if isinstance(key, dict)}
    if answer.status != 200 or kids != set(state.target.keys):
        raise WrongAnswer(f"JWKS: {answer.status}, kids {sorted(map(str, kids))}")


def _always(state: ClientState) -> bool:
    return True


@dataclass(frozen=True)
class RequestKind:
    name: str
    weight: int
    send: Callable[[ClientState, Principal], None]
    # Gets past STS, so it counts against the principal's per-minute budget.
    spends_budget: bool = False
    ready: Callable[[ClientState], bool] = _always


# About 40 % of requests spend budget (all of them when the server is slow enough), a
# quarter are garbage; every kind is sent at least once by every client.
KINDS = [
    RequestKind("exchange", 30, exchange, spends_budget=True),
    RequestKind(
        "replay", 4, replay, spends_budget=True, ready=lambda s: bool(s.used_subject_tokens)
    ),
    RequestKind("invalid-scope", 4, invalid_scope, spends_budget=True),
    RequestKind("invalid-target", 4, invalid_target, spends_budget=True),
    RequestKind("foreign-audience", 6, foreign_audience),
    RequestKind("garbage", 25, garbage),
    RequestKind("introspect", 12, introspect, ready=lambda s: bool(s.tokens)),
    RequestKind("introspect-no-client", 5, introspect_without_client),
    RequestKind("discovery", 5, discovery),
    RequestKind("jwks", 5, jwks),
]
