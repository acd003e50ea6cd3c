"""What every HTTP library's auth class holds: a shared TokenClient, an audience, scopes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokex.client.evidence import SIGV4
from tokex.client.token_client import TokenClient


class BearerSource:
    def __init__(
        self,
        client: TokenClient | str,
        audience: str,
        *,
        scopes: Sequence[str] = (),
        evidence: str | None = None,
        token_file: str | Path | None = None,
        **options: Any,
    ) -> None:
        """`client`: a TokenClient to share its cache (it has its own options), or the
        issuer URL to make one with `evidence` ("sigv4" by default, "aws-oif"/"oif",
        "eks"), `token_file` (eks) and `options` (request_token's other keyword
        arguments: region, issuer, session, signing_algorithm, ...)."""
        if isinstance(client, TokenClient):
            if evidence is not None or token_file is not None or options:
                # Never silently dropped: the shared client asks with its own choices.
                raise ValueError(
                    "pass evidence, token_file and other options to the TokenClient, not with one"
                )
            self.client = client
        else:
            self.client = TokenClient(
                client, evidence=evidence or SIGV4, token_file=token_file, **options
            )
        self.audience = audience
        self.scopes = tuple(scopes)

    def authorization(self) -> str:
        """The header value: a cached token, or one exchange when it is due."""
        return f"Bearer {self.client.token(self.audience, self.scopes)}"
