"""A Lambda function that calls an API behind Kong with a tokex token.

Deploy it with the `tokex` package in its bundle (or layer) and its environment:
TOKEX_ENDPOINT (the stack's IssuerUrl), ORDERS_API_URL, and optionally ORDERS_API_AUDIENCE
(default `orders-api`). Its execution role
needs no extra IAM permission: a tokex policy naming the role is what grants the token.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request

from tokex.client import TokenClient

# Module scope: reused while the execution environment is warm, so tokens are cached
# until shortly before they expire and most invocations make no exchange at all.
tokens = TokenClient(os.environ["TOKEX_ENDPOINT"])
ORDERS_API_URL = os.environ["ORDERS_API_URL"]
AUDIENCE = os.environ.get("ORDERS_API_AUDIENCE", "orders-api")
_api = urllib.parse.urlsplit(ORDERS_API_URL)
if _api.scheme != "https" and _api.hostname not in ("127.0.0.1", "localhost", "::1"):
    raise RuntimeError("ORDERS_API_URL must be https: the token would cross the network in clear")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is the answer: urllib would send the request, token included, on to wherever
    it points (another host, plain http)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def lambda_handler(event: dict, context: object) -> dict:
    token = tokens.token(AUDIENCE)
    # One path segment, whatever the caller sent (`../admin` stays inside /orders/).
    order_id = urllib.parse.quote(str(event["order_id"]), safe="")
    request = urllib.request.Request(  # noqa: S310 - the operator's own API URL
        f"{ORDERS_API_URL}/orders/{order_id}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with _opener.open(request, timeout=5) as response:
        return json.loads(response.read())
