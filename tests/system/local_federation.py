"""Helpers of the JWT evidence tests of `tokex local` (docs/local.md "JWT evidence"): an
SDK client of the local STS-compatible endpoint, and a relying party's verification of a
local issuer's token, from nothing but its discovery document fetched over HTTP."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import jwt
from botocore.config import Config
from botocore.exceptions import ClientError

from tokex.local.federation import LocalFederation
from tokex.local.provision import Credentials
from tokex.local.runner import LocalSystem

# One attempt: a refusal must be seen as the endpoint sent it, not retried.
ONE_ATTEMPT = Config(retries={"max_attempts": 1, "mode": "standard"})


def federation(system: LocalSystem) -> LocalFederation:
    assert system.federation is not None
    return system.federation


def sts_client(
    system: LocalSystem,
    credentials: Credentials | None = None,
    *,
    region: str = "us-east-1",
    validate: bool = True,
) -> Any:
    """An unmodified boto3 STS client of the local endpoint (what AWS_ENDPOINT_URL_STS in
    the env files names); `validate=False` lets values boto3 would refuse reach it."""
    creds = credentials or system.deployment.workload
    config = ONE_ATTEMPT.merge(Config(parameter_validation=validate))
    return creds.session(region).client(
        "sts", endpoint_url=federation(system).sts_url, config=config
    )


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return dict(json.loads(response.read()))


def verify_issued(
    token: str, issuer: str, audience: str, algorithms: list[str], *, leeway: float = 0
) -> dict[str, Any]:
    """Verify as a relying party: `{issuer}/.well-known/openid-configuration`, whose
    `jwks_uri` names the keys; the key by the token's `kid` (`leeway`: seconds of clock
    skew allowed, for tokens that live only seconds)."""
    discovery = get_json(issuer + "/.well-known/openid-configuration")
    assert discovery["issuer"] == issuer
    keys = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False)
    key = keys.get_signing_key_from_jwt(token)
    return dict(
        jwt.decode(
            token,
            key.key,
            algorithms=algorithms,
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["iss", "aud", "iat", "exp", "jti", "sub"]},
        )
    )


def refusal(err: ClientError) -> tuple[int, str, str]:
    """(HTTP status, error code, message) of an STS error answer, as boto3 parsed it."""
    error = err.response["Error"]
    return err.response["ResponseMetadata"]["HTTPStatusCode"], error["Code"], error["Message"]
