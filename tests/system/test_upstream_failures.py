"""STS or KMS unreachable: 503 `temporarily_unavailable` with Retry-After, nothing leaked.

Each case is a cold start of the real exchange handler whose settings point one upstream
at a closed loopback port, while everything else is the provisioned emulator."""

from __future__ import annotations

import pytest

from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tests.system.endpoints import Recorded, assert_refused, sign


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param(
            lambda dead: {"TOKEX_STS_CONNECT_OVERRIDE": dead},
            "sts GetCallerIdentity: unreachable",
            id="sts-down",
        ),
        pytest.param(
            lambda dead: {"AWS_ENDPOINT_URL_KMS": dead},
            "kms GetPublicKey: EndpointConnectionError",
            id="kms-down",
        ),
        pytest.param(
            lambda dead: {"AWS_ENDPOINT_URL_DYNAMODB": dead},
            "dynamodb Scan: EndpointConnectionError",
            id="dynamodb-down",
        ),
    ],
)
def test_upstream_down_is_503_with_retry_after(local_system, overrides, reason, refused_port):
    dead = f"http://127.0.0.1:{refused_port}"
    env = overrides(dead)
    if "AWS_ENDPOINT_URL_DYNAMODB" in env:
        # Reach the policy store, not the state table (single use, rate limit).
        env.update(TOKEX_SINGLE_USE="false", TOKEX_RATE_LIMIT_PER_MINUTE="0")
    handler = cold_exchange_handler(local_system, **env)
    signed = sign(local_system)
    answer = Recorded(lambda: invoke_exchange(handler, signed))
    body = assert_refused(answer, 503, "temporarily_unavailable", reason)
    assert int(answer.headers["Retry-After"]) > 0
    assert "127.0.0.1" not in body["error_description"]
    assert "arn:aws" not in body["error_description"]
