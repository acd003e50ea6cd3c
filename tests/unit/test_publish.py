"""publish.py against a store of the test's own: what a run marks the documents with,
and what a run that finds a document written with a later configuration does."""

from __future__ import annotations

import logging
import time

import pytest

from tokex.publish import DISCOVERY_KEY, JWKS_KEY, Write, publish_issuer_documents
from tokex.settings import Settings

JWK = {"kty": "EC", "kid": "k1", "use": "sig", "alg": "ES256", "crv": "P-256", "x": "x", "y": "y"}
SETTINGS = Settings.from_env(
    {
        "TOKEX_ISSUER": "https://auth.example.com",
        "TOKEX_SIGNING_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/k1",
        "TOKEX_JWKS_BUCKET": "issuer",
        "TOKEX_TOKEN_ENDPOINT": "https://auth.example.com/token",
    }
)


class Store:
    """Answers each write with the next of `outcomes`; records what it was asked."""

    def __init__(self, *outcomes: Write) -> None:
        self.outcomes = list(outcomes)
        self.writes: list[tuple[str, int]] = []

    def write_if_changed(
        self, key: str, body: bytes, *, content_type: str, cache_control: str, configured_at: int
    ) -> Write:
        self.writes.append((key, configured_at))
        return self.outcomes.pop(0)


def test_both_documents_are_marked_with_when_the_configuration_was_read() -> None:
    """The mark is the environment's configuration time (wiring.py), not the run's: a run
    sent, after a deploy, to an environment that read the old configuration must not
    count as newer than the deploy's own run."""
    store = Store(Write.WRITTEN, Write.UNCHANGED)
    written = publish_issuer_documents(
        SETTINGS, public_jwks=lambda: [JWK], store=store, configured_at=1_700_000_000.0015
    )
    assert written == [JWKS_KEY]
    assert store.writes == [(JWKS_KEY, 1_700_000_000_001), (DISCOVERY_KEY, 1_700_000_000_001)]


def test_without_a_configuration_time_the_mark_is_now() -> None:
    store = Store(Write.UNCHANGED, Write.UNCHANGED)
    before = time.time()
    publish_issuer_documents(SETTINGS, public_jwks=lambda: [JWK], store=store)
    after = time.time()
    marks = {mark for _, mark in store.writes}
    assert len(marks) == 1 and int(before * 1000) <= marks.pop() <= int(after * 1000)


def test_a_run_that_yields_the_jwks_writes_no_discovery(caplog: pytest.LogCaptureFixture) -> None:
    store = Store(Write.YIELDED)
    with caplog.at_level(logging.WARNING, logger="tokex.publish"):
        written = publish_issuer_documents(
            SETTINGS, public_jwks=lambda: [JWK], store=store, configured_at=1.0
        )
    assert written == []
    assert store.writes == [(JWKS_KEY, 1000)]
    [yielded] = caplog.records
    assert yielded.levelno == logging.WARNING
    assert yielded.getMessage() == (
        f"{JWKS_KEY} was written with a configuration read after this run's (1000): this"
        " run's may be older, so it writes nothing more"
    )
