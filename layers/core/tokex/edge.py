"""The one door: in AWS, requests reach the HTTP functions only through CloudFront.

The API's own `execute-api` URL answers on the internet, but CloudFront (where the WAF web
ACL and the https-only rules live) adds a secret header to every request it forwards, and
`OriginGate` refuses any request without it, before anything else is read. The secret
comes from the deployment (`TOKEX_ORIGIN_SECRET`, see cdk/origin_secret.py); inside AWS
Lambda it is required, so a function can never run with the door open. Local mode has no
CloudFront and sets none: the gate is open there.

The next generation's secret (`TOKEX_ORIGIN_SECRET_NEXT`) is admitted too, so that a
rotation needs no moment when CloudFront and the functions agree on nothing: CloudFront
switches to the secret the functions already admit, and only then are they given the next
one (docs/deploy.md "One door").
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from tokex.errors import ConfigurationError, InvalidRequest

ORIGIN_HEADER = "x-tokex-origin-verify"
ORIGIN_SECRET_ENV = "TOKEX_ORIGIN_SECRET"
NEXT_ORIGIN_SECRET_ENV = "TOKEX_ORIGIN_SECRET_NEXT"
# A generated secret is 48 letters and digits; anything much shorter is a mistake.
MIN_SECRET_LENGTH = 32


class NotThroughIssuer(InvalidRequest):
    status = 403


class OriginGate:
    def __init__(self, secret: str | None, next_secret: str | None = None) -> None:
        # No secret, no door: the next one alone never opens it.
        listed = (secret, next_secret) if secret else ()
        self._secrets = tuple(value.encode() for value in listed if value)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OriginGate:
        env = os.environ if env is None else env
        secret = env.get(ORIGIN_SECRET_ENV) or None
        next_secret = env.get(NEXT_ORIGIN_SECRET_ENV) or None
        if secret is None:
            if env.get("AWS_LAMBDA_FUNCTION_NAME"):
                raise ConfigurationError(
                    f"{ORIGIN_SECRET_ENV} is required inside AWS Lambda (set by the CDK app)"
                )
            if next_secret is not None:  # never a door open but for the next secret
                raise ConfigurationError(f"{NEXT_ORIGIN_SECRET_ENV} needs {ORIGIN_SECRET_ENV}")
            return cls(None)
        for name, value in ((ORIGIN_SECRET_ENV, secret), (NEXT_ORIGIN_SECRET_ENV, next_secret)):
            if value is not None and len(value) < MIN_SECRET_LENGTH:
                raise ConfigurationError(f"{name} must be at least {MIN_SECRET_LENGTH} characters")
        return cls(secret, next_secret)

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise `NotThroughIssuer` unless the request came through CloudFront.

        `headers` are an HTTP API (payload 2.0) event's: names in lower case, repeated
        headers joined with commas (which never equals the secret).
        """
        if not self._secrets:
            return
        presented = headers.get(ORIGIN_HEADER, "")
        if not isinstance(presented, str):  # an event API Gateway never sends
            presented = ""
        # surrogatepass: any string encodes (a lone surrogate never equals the secret).
        offered = presented.encode(errors="surrogatepass")
        # Each compared, in constant time: which one matched is not for a timer to learn.
        matches = [hmac.compare_digest(offered, secret) for secret in self._secrets]
        if not any(matches):
            raise NotThroughIssuer(
                "this endpoint answers only through the issuer URL: send the request to"
                " the issuer's /token or /introspect",
                # The same answer either way; to the operator, a header with another value
                # is CloudFront and the functions disagreeing on the secret (a rotation
                # half done), not a caller going around CloudFront (docs/deploy.md).
                reason="origin_secret_mismatch" if presented else "not_through_cloudfront",
            )
