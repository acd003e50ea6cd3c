"""A Lambda function that calls an API behind Kong with a tokex token.

Deploy it with the `tokex` package in its bundle (or layer) and its environment:
TOKEX_ENDPOINT (the stack's IssuerUrl), ORDERS_API_URL, and optionally ORDERS_API_AUDIENCE
(default `orders-api`) and ORDERS_API_SCOPES (space-separated, default `orders:read`: ask
for what the function needs, not every scope its policy grants). Its execution role
needs no extra IAM permission: a tokex policy naming the role is what grants the token.

Written for Lambda's default 3 s function timeout: an exchange may take 2 s, the API call
what is left of the invocation. With a longer function timeout, raise both.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from tokex.client import TokenClient

# An exchange gives up (TokenError, with tokex's Retry-After when it answered 503) within
# this, so the function hears why rather than being timed out first.
EXCHANGE_TIMEOUT_SECONDS = 2.0
API_TIMEOUT_SECONDS = 5.0
# Left of the invocation for the function's own answer after the API call.
MARGIN_SECONDS = 0.2
# What an order id is: one path segment that never reads as `.` or `..` (which an API
# server would resolve out of /orders/), never an encoded character.
ORDER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Module scope: reused while the execution environment is warm, so tokens are cached
# until shortly before they expire and most invocations make no exchange at all.
tokens = TokenClient(os.environ["TOKEX_ENDPOINT"], timeout=EXCHANGE_TIMEOUT_SECONDS)
ORDERS_API_URL = os.environ["ORDERS_API_URL"]
AUDIENCE = os.environ.get("ORDERS_API_AUDIENCE", "orders-api")
SCOPES = tuple(os.environ.get("ORDERS_API_SCOPES", "orders:read").split())
_api = urllib.parse.urlsplit(ORDERS_API_URL)
if _api.scheme != "https" and _api.hostname not in ("127.0.0.1", "localhost", "::1"):
    raise RuntimeError("ORDERS_API_URL must be https: the token would cross the network in clear")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is the answer: urllib would send the request, token included, on to wherever
    it points (another host, plain http)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# Plain http (a loopback API in a test) never goes through the environment's proxy, which
# would read the token; https through a proxy is a tunnel it cannot read.
_handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
if _api.scheme == "http":
    _handlers.append(urllib.request.ProxyHandler({}))
_opener = urllib.request.build_opener(*_handlers)


def lambda_handler(event: dict, context: object) -> dict:
    order_id = str(event["order_id"])
    if not ORDER_ID.fullmatch(order_id):
        raise ValueError("order_id must be 1-64 letters, digits, '-' or '_'")
    token = tokens.token(AUDIENCE, SCOPES)
    request = urllib.request.Request(  # noqa: S310 - the operator's own API URL
        f"{ORDERS_API_URL}/orders/{order_id}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with _opener.open(request, timeout=_api_timeout(context)) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        if err.code == 401:
            # Revoked, or signed by a key the API no longer trusts: the next invocation
            # exchanges a new one (not one refused as soon as it was issued: that would
            # cost an exchange per invocation).
            tokens.invalidate(AUDIENCE, SCOPES, token, min_age=5.0)
        raise


def _api_timeout(context: object) -> float:
    """What is left of the invocation, less a margin, at most API_TIMEOUT_SECONDS."""
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if remaining_ms is None:  # called outside Lambda (a test)
        return API_TIMEOUT_SECONDS
    return max(0.1, min(API_TIMEOUT_SECONDS, remaining_ms() / 1000 - MARGIN_SECONDS))
