"""tokex/proxy/endpoints.py: `/.tokex/health` and `/.tokex/token` (the secret first, then
only a configured audience and scope set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tokex.proxy.config import ProxyConfig, Route
from tokex.proxy.endpoints import own_endpoint
from tokex.proxy.tokens import TokenUnavailable

SECRET = "the-secret"


class StubTokens:
    """A TokenSource answering from a table (the endpoint's rules are under test here)."""

    def __init__(self, unavailable: TokenUnavailable | None = None) -> None:
        self.unavailable = unavailable
        self.asked: list[str] = []

    def token(self, route: Route) -> str:
        return self.token_response(route)["access_token"]

    def invalidate(self, route: Route, token: str) -> None:
        pass

    def has_token(self, route: Route) -> bool:
        return route.audience == "orders-api"

    def token_response(self, route: Route) -> dict[str, Any]:
        self.asked.append(route.name)
        if self.unavailable is not None:
            raise self.unavailable
        scope = " ".join(route.scopes)
        return {
            "access_token": f"t-{route.name}",
            "token_type": "Bearer",
            "expires_in": 60,
            "scope": scope,
        }


def configured() -> tuple[Route, ...]:
    routes = [
        {
            "prefix": "/o",
            "upstream": "https://o.example",
            "audience": "orders-api",
            "scopes": ["r"],
        },
        {
            "prefix": "/w",
            "upstream": "https://o.example",
            "audience": "orders-api",
            "scopes": ["w", "r"],
        },
        {"prefix": "/b", "upstream": "https://b.example", "audience": "billing-api"},
    ]
    document = {"endpoint": "https://auth.example.com", "listen": "127.0.0.1:0", "routes": routes}
    return ProxyConfig.from_document(document, base_dir=Path("/"), environ={}).routes


def ask(query: str, secret: str | None = SECRET, tokens: StubTokens | None = None, method="GET"):
    return own_endpoint(
        method,
        "/.tokex/token",
        query,
        presented_secret=secret,
        secret=SECRET,
        routes=configured(),
        tokens=tokens or StubTokens(),
    )


def test_health_lists_the_routes_never_a_token() -> None:
    status, body, headers = own_endpoint(
        "GET",
        "/.tokex/health",
        "",
        presented_secret=None,
        secret=SECRET,
        routes=configured(),
        tokens=StubTokens(),
    )
    assert status == 200 and ("Cache-Control", "no-store") in headers
    assert body == {
        "status": "ok",
        "routes": [
            {"route": "routes[0]", "audience": "orders-api", "scopes": ["r"], "has_token": True},
            {
                "route": "routes[1]",
                "audience": "orders-api",
                "scopes": ["w", "r"],
                "has_token": True,
            },
            {"route": "routes[2]", "audience": "billing-api", "scopes": [], "has_token": False},
        ],
    }


@pytest.mark.parametrize("secret", [None, "", "the-secre", "THE-SECRET"])
@pytest.mark.parametrize("query", ["?audience=orders-api&scope=r", "?audience=nope", ""])
def test_without_the_secret_nothing_is_told(secret, query) -> None:
    tokens = StubTokens()
    assert ask(query, secret, tokens) == (
        401,
        {
            "error": "unauthorized",
            "error_description": "present the proxy's secret in the X-Tokex-Proxy-Secret header",
        },
        [("Cache-Control", "no-store"), ("Pragma", "no-cache")],
    )
    assert tokens.asked == []


@pytest.mark.parametrize(
    "query,route",
    [
        ("?audience=orders-api&scope=r", "routes[0]"),
        ("?audience=orders-api&scope=r+w", "routes[1]"),
        ("?audience=orders-api&scope=w%20r", "routes[1]"),
        ("?audience=billing-api", "routes[2]"),
        ("?scope=&audience=billing-api", "routes[2]"),
    ],
)
def test_the_route_is_chosen_by_audience_and_scope_set(query, route) -> None:
    status, body, headers = ask(query)
    assert status == 200 and body["access_token"] == f"t-{route}"
    assert ("Cache-Control", "no-store") in headers


@pytest.mark.parametrize(
    "query,status,error",
    [
        ("?audience=payments-api", 404, "unknown_audience"),
        ("?audience=orders-api&scope=admin", 404, "unknown_scope"),
        ("?audience=orders-api", 400, "invalid_request"),  # two scope sets: which?
        ("", 400, "invalid_request"),
        ("?audience=", 400, "invalid_request"),
        ("?audience=orders-api&audience=billing-api", 400, "invalid_request"),
        ("?audience=billing-api&extra=1", 400, "invalid_request"),
        ("?audience=billing-api&&x", 400, "invalid_request"),
    ],
)
def test_anything_else_is_refused(query, status, error) -> None:
    got_status, body, _ = ask(query)
    assert (got_status, body["error"]) == (status, error)


def test_descriptions_keep_to_the_characters_oauth_allows() -> None:
    """RFC 6749 §5.2: a strict OAuth client refuses a description with a double quote, a
    backslash or anything outside printable ASCII, which a request can put in one."""
    status, body, _ = ask("?audience=pay%22ments%5C%C3%A9%0Aapi")
    assert (status, body["error"]) == (404, "unknown_audience")
    assert body["error_description"].endswith("for audience pay'ments/??api")
    said = TokenUnavailable(503, "unreachable", 'tokex said "no" \\ \u00e9', 3)
    _, body, _ = ask("?audience=billing-api", tokens=StubTokens(said))
    assert body["error_description"] == "tokex said 'no' / ?"


def test_no_token_is_the_proxys_403_or_503() -> None:
    refused = TokenUnavailable(403, "invalid_target", "no token for audience billing-api", None)
    status, body, headers = ask("?audience=billing-api", tokens=StubTokens(refused))
    assert (status, body["error"]) == (403, "invalid_target")
    assert not [name for name, _ in headers if name == "Retry-After"]
    down = TokenUnavailable(503, "unreachable", "no token for audience billing-api", 3)
    status, body, headers = ask("?audience=billing-api", tokens=StubTokens(down))
    assert (status, body["error"], ("Retry-After", "3") in headers) == (503, "unreachable", True)


def test_only_get_and_only_the_two_endpoints() -> None:
    status, body, headers = ask("?audience=billing-api", method="POST")
    assert (status, body["error"], ("Allow", "GET") in headers) == (405, "method_not_allowed", True)
    status, body, _ = own_endpoint(
        "GET",
        "/.tokex/secret",
        "",
        presented_secret=SECRET,
        secret=SECRET,
        routes=configured(),
        tokens=StubTokens(),
    )
    assert (status, body["error"]) == (404, "not_found")
