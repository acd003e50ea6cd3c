"""What every HTTP library's auth class holds: a shared TokenClient, an audience, scopes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokex.client.token_client import TokenClient


class BearerSource:
    def __init__(
        self,
        client: TokenClient | str,
        audience: str,
        *,
        scopes: Sequence[str] = (),
        **options: Any,
    ) -> None:
        """`client`: a TokenClient to share its cache, or the issuer URL to make one with
        `options` (request_token's keyword arguments: region, issuer, session, ...)."""
        self.client = client if isinstance(client, TokenClient) else TokenClient(client, **options)
        self.audience = audience
        self.scopes = tuple(scopes)

    def authorization(self) -> str:
        """The header value: a cached token, or one exchange when it is due."""
        return f"Bearer {self.client.token(self.audience, self.scopes)}"
