"""What every HTTP library's auth class holds: a shared TokenClient, an audience, scopes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokex.client.evidence import SIGV4
from tokex.client.token_client import INVALIDATE_MIN_AGE_SECONDS, TokenClient, check_scopes


class BearerSource:
    def __init__(
        self,
        client: TokenClient | str,
        audience: str,
        *,
        scopes: Sequence[str] = (),
        evidence: str | None = None,
        token_file: str | Path | None = None,
        region: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> None:
        """`client`: a TokenClient to share its cache (it has its own options), or the
        issuer URL to make one with `evidence` ("sigv4" by default, "aws-oif"/"oif",
        "eks"), `token_file` (eks), `region` (to sign for, and to ask first in a
        multi-Region deployment), `timeout` (seconds per exchange, failover included;
        TokenClient's default) and `options` (request_token's other keyword arguments:
        issuer, session, signing_algorithm, ...)."""
        if isinstance(client, TokenClient):
            given = (evidence, token_file, region, timeout)
            if any(value is not None for value in given) or options:
                # Never silently dropped: the shared client asks with its own choices.
                raise ValueError(
                    "pass evidence, token_file and other options to the TokenClient, not with one"
                )
            self.client = client
        else:
            if timeout is not None:
                options["timeout"] = timeout
            self.client = TokenClient(
                client, evidence=evidence or SIGV4, token_file=token_file, region=region, **options
            )
        self.audience = audience
        self.scopes = check_scopes(scopes)

    def refused(self, status: int, token: str, *, authorization: str | bytes | None) -> None:
        """The API answered `status` to a request sent with `token`, the answer's own
        request carrying `authorization`: a 401 (revoked, or signed with a key it no longer
        trusts) forgets it, so that the next request gets a new one, unless it is younger
        than INVALIDATE_MIN_AGE_SECONDS (an API that refuses fresh tokens would otherwise
        cost an exchange per request). Only a 401 to the token itself: one from a redirect
        target on another origin, which requests and httpx send no Authorization, says
        nothing of it (a login page's 401 would cost an exchange per request)."""
        if status == 401 and authorization == f"Bearer {token}":
            self.client.invalidate(
                self.audience, self.scopes, token, min_age=INVALIDATE_MIN_AGE_SECONDS
            )
