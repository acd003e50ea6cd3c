"""Publishing the issuer documents: the JWKS and the OpenID discovery document
(docs/contract.md "Issuer"), written by a `DocumentStore` (adapters/s3.py).

The publisher runs on a schedule, on deploy and on rotation, so publishing must be
idempotent: the documents are serialized deterministically and the store skips an object
whose bytes and headers are already right.

Runs can overlap, and a run's configuration (the published keys) is the one its Lambda
environment read when it started: an hourly run still in flight when a deploy updates
the function (or sent to an environment started before the update) may finish after the
deploy's own run. So each object is marked with when the writing run's configuration
was read, and a run that finds an object holding something else, written with a
configuration read later, writes nothing more: that configuration is at least as new as
its own. (An object it would write as it is stays, whatever its mark, so an environment
configured earlier alike still puts back a document removed from the bucket.)
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tokex.settings import Settings
from tokex.tokens.jwks import build_jwks, discovery_document

JWKS_KEY = ".well-known/jwks.json"
DISCOVERY_KEY = ".well-known/openid-configuration"
CONTENT_TYPE = "application/json"
# docs/contract.md "Issuer": both documents are served with
# `Cache-Control: public, max-age=300`.
CACHE_CONTROL = "public, max-age=300"

log = logging.getLogger(__name__)


class Write(enum.Enum):
    """What `DocumentStore.write_if_changed` did."""

    WRITTEN = "written"
    UNCHANGED = "unchanged"  # the object already has these bytes and headers
    # Written with a configuration read later than ours, which may be newer.
    YIELDED = "yielded"


class DocumentStore(Protocol):
    def write_if_changed(
        self, key: str, body: bytes, *, content_type: str, cache_control: str, configured_at: int
    ) -> Write:
        """Write, marked with `configured_at` (epoch milliseconds), unless the object is
        already current or, holding something else, was written with a configuration
        read after `configured_at`.
        May raise TemporarilyUnavailable."""
        ...


def serialize_document(document: dict[str, Any]) -> bytes:
    """Compact JSON with sorted keys: the same document always gives the same bytes."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def publish_documents(
    store: DocumentStore, *, jwks: dict[str, Any], discovery: dict[str, Any], configured_at: int
) -> list[str]:
    """Write `.well-known/jwks.json` then `.well-known/openid-configuration`, as a run
    whose configuration was read at `configured_at` (epoch milliseconds).

    Returns the keys actually written: an object whose body and headers already match is
    skipped. The JWKS goes first so the discovery document never points at a key set older
    than itself. Once it finds a document holding something else, written with a
    configuration read later, this run writes nothing more (a warning in the log, not an
    error): its configuration may be older. Store failures are TemporarilyUnavailable.
    """
    if not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("the JWKS must list at least one key")
    if not discovery.get("issuer") or not discovery.get("jwks_uri"):
        raise ValueError("the discovery document needs issuer and jwks_uri")
    written = []
    for key, document in ((JWKS_KEY, jwks), (DISCOVERY_KEY, discovery)):
        body = serialize_document(document)
        outcome = store.write_if_changed(
            key,
            body,
            content_type=CONTENT_TYPE,
            cache_control=CACHE_CONTROL,
            configured_at=configured_at,
        )
        if outcome is Write.YIELDED:
            log.warning(
                "%s was written with a configuration read after this run's (%d): this"
                " run's may be older, so it writes nothing more",
                key,
                configured_at,
            )
            break
        if outcome is Write.WRITTEN:
            written.append(key)
    return written


def publish_issuer_documents(
    settings: Settings,
    *,
    public_jwks: Callable[[], list[dict[str, Any]]],
    store: DocumentStore,
    configured_at: float | None = None,
) -> list[str]:
    """JWKS (`public_jwks()`: signing key first, then every other published key) and
    discovery → `store`. `configured_at` (epoch seconds): when `settings` were read, the
    Lambda environment's start (wiring.py); now, if not given."""
    configured_at_ms = int((time.time() if configured_at is None else configured_at) * 1000)
    jwks = build_jwks(public_jwks())
    discovery = discovery_document(
        issuer=settings.issuer,
        token_endpoint=settings.token_endpoint,
        algs=sorted({key["alg"] for key in jwks["keys"]}),
        introspection_endpoint=settings.introspection_endpoint or None,
        regions=settings.served_regions,
    )
    return publish_documents(store, jwks=jwks, discovery=discovery, configured_at=configured_at_ms)
