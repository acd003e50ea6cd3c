"""The issuer documents' publisher (functions/jwks_publisher/handler.py), cold-started
against the running system's emulator with settings of the test's own."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from tokex import wiring
from tokex.errors import ConfigurationError, TokexError
from tokex.local.emulator import set_signature_checking
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.runner import handler_environment
from tokex.publish import CACHE_CONTROL, CONTENT_TYPE, DISCOVERY_KEY, JWKS_KEY


def test_a_published_key_kms_refuses_fails_the_publisher_naming_it(local_system, caplog) -> None:
    """docs/deploy.md: "the publisher fails, naming the key in its log". The key and KMS's
    code were only in the exception's reason, which nothing logged: every run said "the
    signing service is unavailable, retry later", and nothing more. (A key deleted, or an
    ARN mistyped; the emulator still reads a disabled key, which KMS refuses alike.)"""
    deployment = local_system.deployment
    gone = f"arn:aws:kms:{deployment.region}:123456789012:key/{uuid.uuid4()}"
    with handler_environment(local_system.handler_env(TOKEX_PUBLISHED_KEY_IDS=gone)):
        publisher = load_handler("jwks_publisher")
    with pytest.raises((TokexError, ConfigurationError)):
        publisher.lambda_handler({}, LambdaContext("tokex-jwks-publisher"))
    [failed] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failed.getMessage() == "publishing the issuer documents failed"
    assert gone in failed.reason
    assert "NotFoundException" in failed.reason


def test_two_runs_at_once_on_an_empty_bucket_publish_whole_documents(local_system) -> None:
    """The hourly schedule and a deploy's run can overlap: two cold publishers at once on a
    bucket that holds nothing yet both succeed, the documents are whole and served with
    their headers, and a third run finds nothing to write."""
    deployment = local_system.deployment
    bucket = empty_bucket(local_system)
    with handler_environment(local_system.handler_env(TOKEX_JWKS_BUCKET=bucket)):
        publishers = [load_handler("jwks_publisher") for _ in range(3)]
    together = threading.Barrier(2)
    outcomes: list[object] = []

    def publish(publisher: Any) -> None:
        together.wait()
        try:
            outcomes.append(publisher.lambda_handler({}, LambdaContext("tokex-jwks-publisher")))
        except Exception as err:  # reported by the assertion below
            outcomes.append(err)

    runs = [threading.Thread(target=publish, args=(p,)) for p in publishers[:2]]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
    assert len(outcomes) == 2 and not [o for o in outcomes if isinstance(o, Exception)]
    s3 = deployment.client("s3")
    jwks = s3.get_object(Bucket=bucket, Key=JWKS_KEY)
    discovery = s3.get_object(Bucket=bucket, Key=DISCOVERY_KEY)
    for answer in (jwks, discovery):
        assert (answer["ContentType"], answer["CacheControl"]) == (CONTENT_TYPE, CACHE_CONTROL)
    published = json.loads(jwks["Body"].read())
    served = s3.get_object(Bucket=deployment.jwks_bucket, Key=JWKS_KEY)["Body"].read()
    assert published == json.loads(served)  # what the system's own publisher wrote
    assert json.loads(discovery["Body"].read())["issuer"] == local_system.issuer
    third = publishers[2].lambda_handler({}, LambdaContext("tokex-jwks-publisher"))
    assert third == {"written": []}, third


def empty_bucket(local_system: Any) -> str:
    deployment = local_system.deployment
    bucket = f"tokex-documents-{uuid.uuid4().hex[:12]}"
    admin = deployment.emulator_admin_token
    set_signature_checking(deployment.endpoint_url, on=False, admin_token=admin)
    try:
        deployment.client("s3").create_bucket(Bucket=bucket)
    finally:
        set_signature_checking(deployment.endpoint_url, on=True, admin_token=admin)
    return bucket


def test_documents_are_marked_with_when_the_environment_read_its_configuration(
    local_system, monkeypatch
) -> None:
    """The mark is when the function's environment read its configuration (at its cold
    start), not when a run began: a run of an environment configured before a deploy,
    even one that begins after the deploy's own run, must not count as newer."""
    bucket = empty_bucket(local_system)
    configured = 1_700_000_000.25
    environment = local_system.handler_env(TOKEX_JWKS_BUCKET=bucket)
    with handler_environment(environment), monkeypatch.context() as frozen:
        frozen.setattr(wiring, "time", SimpleNamespace(time=lambda: configured))
        publisher = load_handler("jwks_publisher")
    written = publisher.lambda_handler({}, LambdaContext("tokex-jwks-publisher"))
    assert written == {"written": [JWKS_KEY, DISCOVERY_KEY]}
    s3 = local_system.deployment.client("s3")
    for key in (JWKS_KEY, DISCOVERY_KEY):
        marks = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
        assert marks == {"tokex-configured-at": "1700000000250"}
