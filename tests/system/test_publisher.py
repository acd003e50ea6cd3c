"""The issuer documents' publisher (functions/jwks_publisher/handler.py), cold-started
against the running system's emulator with settings of the test's own."""

from __future__ import annotations

import logging
import uuid

import pytest

from tokex.errors import ConfigurationError, TokexError
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.runner import handler_environment


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
