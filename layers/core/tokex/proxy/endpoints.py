"""The proxy's own endpoints under `/.tokex/`, never forwarded:
docs/injection.md "The token endpoint".

- `GET /.tokex/health`: 200 `{"status": "ok", "routes": [...]}`, whether each route holds a
  token, never a token;
- `GET /.tokex/token?audience=AUD[&scope=S ...]`: the token response of a configured route,
  to a caller presenting the secret in `X-Tokex-Proxy-Secret` (compared in constant time;
  missing or wrong are one answer, 401, so that neither is told apart). The secret is
  checked first: who does not have it learns nothing here, not even whether an audience
  is configured (health lists the routes: no secret from a local caller, who can use them).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

from tokex.errors import oauth_text
from tokex.proxy.config import RESERVED_PREFIX, Route
from tokex.proxy.secret import secret_matches
from tokex.proxy.tokens import TokenSource, TokenUnavailable

HEALTH_PATH = RESERVED_PREFIX + "/health"
TOKEN_PATH = RESERVED_PREFIX + "/token"
NO_STORE = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]

Answer = tuple[int, dict[str, Any], list[tuple[str, str]]]


def own_endpoint(
    method: str,
    path: str,
    query: str,
    *,
    presented_secret: str | None,
    secret: str,
    routes: Sequence[Route],
    tokens: TokenSource,
) -> Answer:
    if path not in (HEALTH_PATH, TOKEN_PATH):
        return error(404, "not_found", f"no such endpoint of the proxy under {RESERVED_PREFIX}/")
    if method != "GET":
        status, body, headers = error(405, "method_not_allowed", f"{path} answers GET only")
        return status, body, [*headers, ("Allow", "GET")]
    if path == HEALTH_PATH:
        return health(routes, tokens)
    return token_answer(query, presented_secret, secret, routes, tokens)


def health(routes: Sequence[Route], tokens: TokenSource) -> Answer:
    listed = [
        {
            "route": route.name,
            "audience": route.audience,
            "scopes": list(route.scopes),
            "has_token": tokens.has_token(route),
        }
        for route in routes
    ]
    return 200, {"status": "ok", "routes": listed}, list(NO_STORE)


def token_answer(
    query: str,
    presented_secret: str | None,
    secret: str,
    routes: Sequence[Route],
    tokens: TokenSource,
) -> Answer:
    if not secret_matches(presented_secret, secret):
        return error(
            401, "unauthorized", "present the proxy's secret in the X-Tokex-Proxy-Secret header"
        )
    raw = query.removeprefix("?")
    try:
        pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw))
    except ValueError:
        return error(400, "invalid_request", "the query string is malformed")
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)) or not set(names) <= {"audience", "scope"}:
        return error(400, "invalid_request", "give audience once and scope at most once")
    params = dict(pairs)
    audience = params.get("audience")
    if not audience:
        return error(400, "invalid_request", "give audience=AUD")
    candidates = [route for route in routes if route.audience == audience]
    if not candidates:
        return error(404, "unknown_audience", f"no route of this proxy is for audience {audience}")
    route = _route_for_scopes(candidates, params.get("scope"))
    if route is None:
        scope_sets = sorted({" ".join(sorted(set(r.scopes))) for r in candidates})
        return error(
            404 if "scope" in params else 400,
            "unknown_scope" if "scope" in params else "invalid_request",
            f"the routes for audience {audience} ask for these scopes: "
            + "; ".join(repr(s) for s in scope_sets),
        )
    try:
        return 200, tokens.token_response(route), list(NO_STORE)
    except TokenUnavailable as refused:
        return unavailable(refused)


def _route_for_scopes(candidates: Sequence[Route], scope: str | None) -> Route | None:
    """The route whose scopes are `scope` (space-separated, any order); without `scope`,
    the one scope set the audience's routes ask for, if there is just one."""
    if scope is None:
        sets = {frozenset(route.scopes) for route in candidates}
        return candidates[0] if len(sets) == 1 else None
    wanted = frozenset(token for token in scope.split(" ") if token)
    return next((route for route in candidates if frozenset(route.scopes) == wanted), None)


def error(status: int, code: str, description: str) -> Answer:
    """An OAuth error body: the description may quote the request (an audience, a header
    parser's complaint) or tokex's answer, so it is kept to RFC 6749 §5.2's characters."""
    body = {"error": code, "error_description": oauth_text(description)}
    return status, body, list(NO_STORE)


def unavailable(refused: TokenUnavailable) -> Answer:
    """No token: 403 (tokex refused) without Retry-After, or 503 with it."""
    status, body, headers = error(refused.status, refused.error, refused.description)
    if refused.retry_after is not None:
        headers.append(("Retry-After", str(refused.retry_after)))
    return status, body, headers
