"""STS or KMS unreachable: 503 `temporarily_unavailable` with Retry-After, nothing leaked.

Each case is a cold start of the real exchange handler whose settings point one upstream
at a closed loopback port, while everything else is the provisioned emulator."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.integration.test_exchange import sign
from tokex.client.signing import encode_subject_token
from tokex.local.emulator import free_port
from tokex.local.front import http_api_event
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.runner import handler_environment
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT


def invoke(handler, signed) -> tuple[int, dict, dict]:
    return invoke_for(handler, signed, "demo-api")


def invoke_for(handler, signed, audience: str) -> tuple[int, dict, dict]:
    """POST /token straight into a loaded exchange handler (an API Gateway v2 event)."""
    body = urllib.parse.urlencode(
        {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token_type": SIGV4_TOKEN_TYPE,
            "subject_token": encode_subject_token(signed),
            "audience": audience,
        }
    ).encode()
    event = http_api_event(
        "POST",
        "/token",
        "",
        {"content-type": "application/x-www-form-urlencoded"},
        body,
        "127.0.0.1",
    )
    result = handler.lambda_handler(event, LambdaContext("tokex-exchange"))
    return result["statusCode"], result["headers"], json.loads(result["body"])


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(lambda dead: {"TOKEX_STS_CONNECT_OVERRIDE": dead}, id="sts-down"),
        pytest.param(lambda dead: {"AWS_ENDPOINT_URL_KMS": dead}, id="kms-down"),
        pytest.param(lambda dead: {"AWS_ENDPOINT_URL_DYNAMODB": dead}, id="dynamodb-down"),
    ],
)
def test_upstream_down_is_503_with_retry_after(local_system, overrides):
    dead = f"http://127.0.0.1:{free_port()}"
    env = local_system.deployment.handler_env(local_system.issuer, **overrides(dead))
    if "AWS_ENDPOINT_URL_DYNAMODB" in overrides(dead):
        env["TOKEX_SINGLE_USE"] = "false"  # reach the policy store, not the state table
    with handler_environment(env):
        handler = load_handler("exchange")
    status, headers, body = invoke(handler, sign(local_system))
    assert status == 503, body
    assert body["error"] == "temporarily_unavailable"
    assert int(headers["Retry-After"]) > 0
    assert "127.0.0.1" not in body["error_description"]
    assert "arn:aws" not in body["error_description"]
