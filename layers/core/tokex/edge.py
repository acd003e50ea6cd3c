"""The one door: in AWS, requests reach the HTTP functions only through CloudFront.

The API's own `execute-api` URL answers on the internet, but CloudFront (where the WAF web
ACL and the https-only rules live) adds a secret header to every request it forwards, and
`OriginGate` refuses any request without it, before anything else is read. The secret
comes from the deployment (`TOKEX_ORIGIN_SECRET`, see cdk/origin_secret.py); inside AWS
Lambda it is required, so a function can never run with the door open. Local mode has no
CloudFront and sets none: the gate is open there.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from tokex.errors import ConfigurationError, InvalidRequest

ORIGIN_HEADER = "x-tokex-origin-verify"
ORIGIN_SECRET_ENV = "TOKEX_ORIGIN_SECRET"
# A generated secret is 48 letters and digits; anything much shorter is a mistake.
MIN_SECRET_LENGTH = 32


class NotThroughIssuer(InvalidRequest):
    status = 403


class OriginGate:
    def __init__(self, secret: str | None) -> None:
        self._secret = secret.encode() if secret is not None else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OriginGate:
        env = os.environ if env is None else env
        secret = env.get(ORIGIN_SECRET_ENV) or None
        if secret is None:
            if env.get("AWS_LAMBDA_FUNCTION_NAME"):
                raise ConfigurationError(
                    f"{ORIGIN_SECRET_ENV} is required inside AWS Lambda (set by the CDK app)"
                )
            return cls(None)
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"{ORIGIN_SECRET_ENV} must be at least {MIN_SECRET_LENGTH} characters"
            )
        return cls(secret)

    @property
    def is_open(self) -> bool:
        return self._secret is None

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise `NotThroughIssuer` unless the request came through CloudFront.

        `headers` are an HTTP API (payload 2.0) event's: names in lower case, repeated
        headers joined with commas (which never equals the secret).
        """
        if self._secret is None:
            return
        presented = headers.get(ORIGIN_HEADER, "")
        if not isinstance(presented, str):  # an event API Gateway never sends
            presented = ""
        # surrogatepass: any string encodes (a lone surrogate never equals the secret).
        if not hmac.compare_digest(presented.encode(errors="surrogatepass"), self._secret):
            raise NotThroughIssuer(
                "this endpoint answers only through the issuer URL: send the request to"
                " the issuer's /token or /introspect",
                reason="not_through_cloudfront",
            )
