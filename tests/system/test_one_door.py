"""The one door (docs/deploy.md, *One door*): with the origin secret set, as the CDK app sets
it, the exchange and introspect handlers answer only requests carrying CloudFront's
origin header, and refuse the rest before reading anything else.

Each case cold-starts the real handler against the provisioned emulator and invokes it
directly, as API Gateway would; `assert_refused` reads the audit line it writes."""

from __future__ import annotations

import json
import urllib.parse
from types import ModuleType
from typing import Any

import pytest

from tests.system.endpoints import Answer, assert_refused, sign, verify
from tokex.client.signing import encode_subject_token
from tokex.edge import ORIGIN_HEADER, ORIGIN_SECRET_ENV
from tokex.introspection_clients import basic_authorization
from tokex.local.front import http_api_event
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.runner import LocalSystem, handler_environment
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

SECRET = "cloudfrontOriginSecret0123456789abcdefABCDEF01"
FORM = "application/x-www-form-urlencoded"
NOT_THROUGH = (
    "this endpoint answers only through the issuer URL: send the request to the issuer's"
    " /token or /introspect"
)


def _cold(system: LocalSystem, name: str) -> ModuleType:
    with handler_environment(system.handler_env(**{ORIGIN_SECRET_ENV: SECRET})):
        return load_handler(name)


def _invoke(
    handler: ModuleType, path: str, form: dict[str, str], headers: dict[str, str]
) -> Answer:
    event = http_api_event(
        "POST",
        path,
        "",
        {"content-type": FORM, **headers},
        urllib.parse.urlencode(form).encode(),
        "203.0.113.7",
    )
    result = handler.lambda_handler(event, LambdaContext(f"tokex-{path.strip('/')}"))
    assert result["headers"]["Content-Type"] == "application/json"
    assert result["headers"]["Cache-Control"] == "no-store"
    return result["statusCode"], result["headers"], json.loads(result["body"])


def _token_form(signed: dict[str, Any]) -> dict[str, str]:
    return {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": encode_subject_token(signed),
        "audience": "demo-api",
    }


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param({}, "not_through_cloudfront", id="no-header"),
        pytest.param({ORIGIN_HEADER: ""}, "not_through_cloudfront", id="empty"),
        # To the caller the same; to the operator CloudFront sending a stale secret.
        pytest.param(
            {ORIGIN_HEADER: SECRET[:-1] + "x"}, "origin_secret_mismatch", id="wrong-secret"
        ),
    ],
)
def test_exchange_refuses_requests_that_skipped_cloudfront(
    local_system: LocalSystem, headers: dict[str, str], reason: str
) -> None:
    handler = _cold(local_system, "exchange")
    signed = sign(local_system)
    body = assert_refused(
        lambda: _invoke(handler, "/token", _token_form(signed), headers),
        403,
        "invalid_request",
        reason,
    )
    assert body == {"error": "invalid_request", "error_description": NOT_THROUGH}
    # Refused before the evidence was looked at: the same signed request still works
    # through the door.
    status, _, body = _invoke(handler, "/token", _token_form(signed), {ORIGIN_HEADER: SECRET})
    assert status == 200, body
    verify(local_system, body["access_token"])


def test_introspection_refuses_requests_that_skipped_cloudfront(local_system: LocalSystem) -> None:
    token_status, _, issued = _invoke(
        _cold(local_system, "exchange"),
        "/token",
        _token_form(sign(local_system)),
        {ORIGIN_HEADER: SECRET},
    )
    assert token_status == 200, issued
    handler = _cold(local_system, "introspect")
    credentials = {"authorization": basic_authorization(*local_system.introspection_client)}
    form = {"token": issued["access_token"]}

    body = assert_refused(
        lambda: _invoke(handler, "/introspect", form, credentials),
        403,
        "invalid_request",
        "not_through_cloudfront",
    )
    assert body == {"error": "invalid_request", "error_description": NOT_THROUGH}

    status, _, body = _invoke(handler, "/introspect", form, {**credentials, ORIGIN_HEADER: SECRET})
    assert status == 200
    assert body["active"] is True
    assert body["aud"] == "demo-api"
