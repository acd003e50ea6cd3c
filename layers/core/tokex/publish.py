"""Publishing the issuer documents: the JWKS and the OpenID discovery document
(docs/contract.md "Issuer"), written by a `DocumentStore` (adapters/s3.py).

The publisher runs on a schedule, on deploy and on rotation, so publishing must be
idempotent: the documents are serialized deterministically and the store skips an object
whose bytes and headers are already right.
"""

from __future__ import annotations

import json
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


class DocumentStore(Protocol):
    def write_if_changed(
        self, key: str, body: bytes, *, content_type: str, cache_control: str
    ) -> bool:
        """Write unless already current; whether it wrote. May raise
        TemporarilyUnavailable."""
        ...


def serialize_document(document: dict[str, Any]) -> bytes:
    """Compact JSON with sorted keys: the same document always gives the same bytes."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def publish_documents(
    store: DocumentStore, *, jwks: dict[str, Any], discovery: dict[str, Any]
) -> list[str]:
    """Write `.well-known/jwks.json` then `.well-known/openid-configuration`.

    Returns the keys actually written: an object whose body and headers already match is
    skipped. The JWKS goes first so the discovery document never points at a key set older
    than itself. Store failures are TemporarilyUnavailable.
    """
    if not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("the JWKS must list at least one key")
    if not discovery.get("issuer") or not discovery.get("jwks_uri"):
        raise ValueError("the discovery document needs issuer and jwks_uri")
    written = []
    for key, document in ((JWKS_KEY, jwks), (DISCOVERY_KEY, discovery)):
        body = serialize_document(document)
        if store.write_if_changed(
            key, body, content_type=CONTENT_TYPE, cache_control=CACHE_CONTROL
        ):
            written.append(key)
    return written


def publish_issuer_documents(
    settings: Settings,
    *,
    public_jwks: Callable[[], list[dict[str, Any]]],
    store: DocumentStore,
) -> list[str]:
    """JWKS (`public_jwks()`: signing key first, then every other published key) and
    discovery → `store`."""
    jwks = build_jwks(public_jwks())
    discovery = discovery_document(
        issuer=settings.issuer,
        token_endpoint=settings.token_endpoint,
        algs=sorted({key["alg"] for key in jwks["keys"]}),
        introspection_endpoint=settings.introspection_endpoint or None,
        regions=settings.served_regions,
    )
    return publish_documents(store, jwks=jwks, discovery=discovery)
