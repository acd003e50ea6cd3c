"""`requests` authentication with a tokex access token (the `tokex[requests]` extra).

session = requests.Session()
session.auth = TokexAuth("https://auth.example.com", "orders-api", scopes=["orders:read"])
session.get("https://orders.example.com/orders")   # Authorization: Bearer <token>

In an EKS pod: TokexAuth(issuer, "orders-api", evidence="eks") (token_file= if not the
default path); with IAM outbound identity federation: evidence="aws-oif".
"""

from __future__ import annotations

import requests

from tokex.client.bearer import BearerSource


class TokexAuth(BearerSource, requests.auth.AuthBase):
    """Attaches `Authorization: Bearer` with a token from a shared, thread-safe
    TokenClient: cached, refreshed at 80 % of its lifetime, one exchange in flight per
    audience whatever the number of threads sending requests."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self.authorization()
        return request
