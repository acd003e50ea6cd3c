"""A Lambda function that calls an API behind Kong with a tokex token.

Deploy it with the `tokex` package in its bundle (or layer) and its environment:
TOKEX_ENDPOINT (the stack's IssuerUrl), ORDERS_API_URL, and optionally ORDERS_API_AUDIENCE
(default `orders-api`). Its execution role
needs no extra IAM permission: a tokex policy naming the role is what grants the token.
"""

from __future__ import annotations

import json
import os
import urllib.request

from tokex.client import TokenClient

# Module scope: reused while the execution environment is warm, so tokens are cached
# until shortly before they expire and most invocations make no exchange at all.
tokens = TokenClient(os.environ["TOKEX_ENDPOINT"])
ORDERS_API_URL = os.environ["ORDERS_API_URL"]
AUDIENCE = os.environ.get("ORDERS_API_AUDIENCE", "orders-api")


def lambda_handler(event: dict, context: object) -> dict:
    token = tokens.token(AUDIENCE)
    request = urllib.request.Request(  # noqa: S310 - the operator's own API URL
        f"{ORDERS_API_URL}/orders/{event['order_id']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.loads(response.read())
