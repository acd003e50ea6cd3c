"""STS or KMS unreachable, or the signing key disabled: 503 `temporarily_unavailable` with
Retry-After, nothing leaked.

Each case is a cold start of the real exchange handler whose settings point one upstream
at a closed loopback port, while everything else is the provisioned emulator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tests.system.endpoints import Recorded, assert_refused, sign
from tokex.local.emulator import set_signature_checking


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


@contextlib.contextmanager
def as_key_administrator(deployment: Any) -> Iterator[Any]:
    """The emulator's KMS as the key's administrator would use it (an operator's step, not
    the service's: signature checks off meanwhile)."""
    admin = deployment.emulator_admin_token
    set_signature_checking(deployment.endpoint_url, on=False, admin_token=admin)
    try:
        yield deployment.client("kms")
    finally:
        set_signature_checking(deployment.endpoint_url, on=True, admin_token=admin)


def test_a_signing_key_disabled_or_scheduled_for_deletion_is_503_until_enabled(
    local_system,
) -> None:
    """KMS refuses to sign with a key that is not enabled (the emulator as AWS): each
    refusal is 503 with Retry-After, naming no key, and the exchange recovers when the key
    is enabled again, with no new cold start."""
    deployment = local_system.deployment
    with as_key_administrator(deployment) as kms:
        key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    handler = cold_exchange_handler(local_system, TOKEX_SIGNING_KEY_ID=key["Arn"])

    def exchange() -> tuple[int, dict[str, str], dict[str, Any]]:
        return invoke_exchange(handler, sign(local_system))

    assert exchange()[0] == 200
    for change, undo, code in (
        ("disable_key", "enable_key", "DisabledException"),
        ("schedule_key_deletion", "cancel_key_deletion", "KMSInvalidStateException"),
    ):
        with as_key_administrator(deployment) as kms:
            getattr(kms, change)(KeyId=key["KeyId"])
        answer = Recorded(exchange)
        body = assert_refused(answer, 503, "temporarily_unavailable", f"kms Sign: {code}")
        assert int(answer.headers["Retry-After"]) > 0
        assert key["KeyId"] not in body["error_description"]
        with as_key_administrator(deployment) as kms:
            getattr(kms, undo)(KeyId=key["KeyId"])
            kms.enable_key(KeyId=key["KeyId"])  # a cancelled deletion leaves it disabled
        status, _, body = exchange()
        assert status == 200 and body["access_token"].count(".") == 2


def test_a_cold_start_with_a_disabled_signing_key_is_503(local_system) -> None:
    """The key is read once per environment: refused, the exchange is a 503 (the audit
    line names the key for the operator; the answer does not)."""
    deployment = local_system.deployment
    with as_key_administrator(deployment) as kms:
        key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        kms.disable_key(KeyId=key["KeyId"])
    handler = cold_exchange_handler(local_system, TOKEX_SIGNING_KEY_ID=key["Arn"])
    answer = Recorded(lambda: invoke_exchange(handler, sign(local_system)))
    body = assert_refused(
        answer,
        503,
        "temporarily_unavailable",
        f"kms GetPublicKey: DisabledException ({key['Arn']})",
    )
    assert int(answer.headers["Retry-After"]) > 0
    assert key["KeyId"] not in body["error_description"]
