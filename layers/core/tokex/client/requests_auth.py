"""`requests` authentication with a tokex access token (the `tokex[requests]` extra).

session = requests.Session()
session.auth = TokexAuth("https://auth.example.com", "orders-api", scopes=["orders:read"])
session.get("https://orders.example.com/orders")   # Authorization: Bearer <token>

In an EKS pod: TokexAuth(issuer, "orders-api", evidence="eks") (token_file= if not the
default path); with IAM outbound identity federation: evidence="aws-oif".
"""

from __future__ import annotations

from typing import Any

import requests

from tokex.client.bearer import BearerSource


class TokexAuth(BearerSource, requests.auth.AuthBase):
    """Attaches `Authorization: Bearer` with a token from a shared, thread-safe
    TokenClient: cached, refreshed at 80 % of its lifetime, one exchange in flight per
    audience whatever the number of threads sending requests.

    An answer of 401 forgets the token it was sent with (once that token is
    `INVALIDATE_MIN_AGE_SECONDS` old): the next request gets a new one. The request that
    got the 401 is not sent again (its body may be a stream). A 401 after a redirect to
    another origin, which got no token, forgets nothing."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.client.token(self.audience, self.scopes)
        request.headers["Authorization"] = f"Bearer {token}"

        def answered(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            # Each answer of a redirect chain comes here: the request it answered says
            # whether the token went with it (not across origins).
            sent = response.request.headers.get("Authorization")
            self.refused(response.status_code, token, authorization=sent)

        request.register_hook("response", answered)
        return request
