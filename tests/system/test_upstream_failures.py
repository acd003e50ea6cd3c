"""STS or KMS unreachable, or the signing key disabled: 503 `temporarily_unavailable` with
Retry-After, nothing leaked.

Each case is a cold start of the real exchange handler whose settings point one upstream
at a closed loopback port, while everything else is the provisioned emulator."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tests.system.endpoints import (
    Recorded,
    assert_refused,
    audit_lines,
    emitted_metrics,
    outcomes,
    sign,
)
from tests.system.upstreams import LoopbackHttpServer
from tokex.local.emulator import set_signature_checking


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param(
            lambda dead: {"TOKEX_STS_CONNECT_OVERRIDE": dead},
            "sts GetCallerIdentity: unreachable (sts.us-east-1.amazonaws.com)",
            id="sts-down",
        ),
        pytest.param(
            lambda dead: {"AWS_ENDPOINT_URL_KMS": dead},
            "kms GetPublicKey: EndpointConnectionError",
            id="kms-down",
        ),
        pytest.param(
            lambda dead: {"AWS_ENDPOINT_URL_DYNAMODB": dead},
            "dynamodb GetItem: EndpointConnectionError",
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
    assert answer.headers["Retry-After"] == "5"  # an outage: soon, unlike a misconfiguration
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
        body = assert_refused(
            answer, 503, "temporarily_unavailable", f"kms Sign: {code}", outcome="misconfigured"
        )
        assert answer.headers["Retry-After"] == "60"
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
        outcome="misconfigured",
    )
    assert answer.headers["Retry-After"] == "60"
    assert key["KeyId"] not in body["error_description"]


MISSING_KEY = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize("usage", ["deleted", "ENCRYPT_DECRYPT"])
def test_a_cold_start_with_a_key_that_cannot_sign_is_an_audited_counted_503(
    local_system, usage
) -> None:
    """A signing key that cannot be used (gone, mistyped, not a signing key) found at a
    cold environment's first exchange is the same audited, counted 503 as a warm
    environment's Sign reports for it: never the crash's "internal error", uncounted."""
    key_id = MISSING_KEY
    if usage != "deleted":
        with as_key_administrator(local_system.deployment) as kms:
            key_id = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage=usage)["KeyMetadata"][
                "Arn"
            ]
    handler = cold_exchange_handler(local_system, TOKEX_SIGNING_KEY_ID=key_id)
    for _ in range(2):  # each request tries the key again: a fixed key serves at once
        answer = Recorded(lambda: invoke_exchange(handler, sign(local_system)))
        with emitted_metrics() as metrics:
            body = assert_refused(
                answer,
                503,
                "temporarily_unavailable",
                f"kms GetPublicKey: {kms_key_refusal(key_id, usage)}",
                outcome="misconfigured",
            )
        assert outcomes(metrics) == ["misconfigured"]
        assert answer.headers["Retry-After"] == "60"
        assert body["error_description"] == "the signing service is unavailable, retry later"


def kms_key_refusal(key_id: str, usage: str) -> str:
    """What the exchange's reason says of a key that cannot sign (adapters/kms.py)."""
    if usage == "deleted":
        return f"KMS key {key_id!r} cannot sign tokens (NotFoundException)"
    return f"KMS key {key_id!r} has KeyUsage {usage!r}, not SIGN_VERIFY"


DYNAMODB = "com.amazonaws.dynamodb.v20120810#"


@pytest.mark.parametrize(
    ("operation", "status", "code", "outcome"),
    [
        ("TrentService.Sign", 400, "AccessDeniedException", "misconfigured"),
        ("TrentService.Sign", 400, "ThrottlingException", "unavailable"),
        ("TrentService.Sign", 500, "KMSInternalException", "unavailable"),
        ("DynamoDB_20120810.Scan", 400, "AccessDeniedException", "misconfigured"),
        ("DynamoDB_20120810.Scan", 400, "ProvisionedThroughputExceededException", "unavailable"),
        ("DynamoDB_20120810.TransactWriteItems", 400, "ResourceNotFoundException", "misconfigured"),
        ("DynamoDB_20120810.TransactWriteItems", 400, "ThrottlingException", "unavailable"),
    ],
)
def test_a_misconfiguration_is_told_from_an_outage(
    local_system, counting_proxy, operation, status, code, outcome
) -> None:
    """An upstream refusing tokex's role (a key policy, IAM) or missing its resource lasts
    until an operator acts: `misconfigured`, Retry-After 60; one throttling or failing is
    `unavailable`, Retry-After 5. The caller's answer is the same 503 otherwise."""
    settings = {**counting_proxy.handler_settings(), "TOKEX_POLICY_CACHE_SECONDS": "0"}
    handler = cold_exchange_handler(local_system, **settings)
    assert invoke_exchange(handler, sign(local_system))[0] == 200
    service, _, api = operation.partition(".")
    if service.startswith("DynamoDB"):
        counting_proxy.fail(operation, status, DYNAMODB + code)
        reason = f"dynamodb {api}: {code}"
    else:
        counting_proxy.fail(operation, status, code)
        reason = f"kms {api}: {code}"
    answer = Recorded(lambda: invoke_exchange(handler, sign(local_system)))
    with emitted_metrics() as metrics:
        body = assert_refused(answer, 503, "temporarily_unavailable", reason, outcome=outcome)
    assert outcomes(metrics) == [outcome]
    assert answer.headers["Retry-After"] == ("60" if outcome == "misconfigured" else "5")
    assert code not in body["error_description"]  # the same answer to the caller
    assert "arn:" not in body["error_description"]


STS_THROTTLING = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender'
    b"</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>"
)


def test_sts_throttling_names_its_region_and_the_access_key_that_signed(local_system) -> None:
    """STS throttles per account: the audit line says which Region's STS (its host, in the
    reason too, with STS's error code) and which access key signed the request, so a
    noisy account can be told from an outage of STS. The caller's answer says neither."""
    throttling = LoopbackHttpServer(
        lambda *_: (400, [("Content-Type", "text/xml")], STS_THROTTLING)
    )
    try:
        handler = cold_exchange_handler(local_system, TOKEX_STS_CONNECT_OVERRIDE=throttling.url)
        signed = sign(local_system, region="eu-west-1")
        with audit_lines() as audits:
            status, _, body = invoke_exchange(handler, signed)
    finally:
        throttling.stop()
    host = "sts.eu-west-1.amazonaws.com"
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    assert body["error_description"] == "STS is unavailable or throttling; retry later"
    [audit] = audits
    assert audit["outcome"] == "unavailable"
    assert audit["reason"] == f"sts GetCallerIdentity: Throttling ({host})"
    assert audit["sts_host"] == host
    access_key_id = local_system.deployment.workload.session().get_credentials().access_key
    assert audit["access_key_id"] == access_key_id
    assert access_key_id not in json.dumps(body) and host not in json.dumps(body)
