"""Wires the adapters into the use cases from one `Settings` (used by the handlers and
local mode, so both build tokex the same way)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import boto3
from cryptography import x509

from tokex import aws
from tokex.admission import DynamoDbAdmission
from tokex.clients import ClientStore
from tokex.errors import ConfigurationError, TemporarilyUnavailable
from tokex.evidence.ec2_tags import InstanceTagLookup
from tokex.evidence.instance_identity import CertificateStore
from tokex.evidence.sts import StsForwarder
from tokex.exchange import TokenExchange
from tokex.introspection import Introspector, PublishedKeys
from tokex.policy.cache import CachedPolicies
from tokex.policy.store import PolicyStore
from tokex.publish import publish_documents
from tokex.revocation import RevocationStore
from tokex.settings import Settings
from tokex.tokens.jwks import build_jwks, discovery_document
from tokex.tokens.kms_signer import KmsSigner, public_jwk_for_key


def build_token_exchange(settings: Settings) -> TokenExchange:
    if not (settings.signing_key_id and settings.policy_table):
        raise ConfigurationError("TOKEX_SIGNING_KEY_ID and TOKEX_POLICY_TABLE are required")
    # One session for all clients: each new session would load the service models again.
    session = boto3.session.Session()
    kms = aws.client("kms", session=session)
    dynamodb = aws.client("dynamodb", session=session)

    # KMS GetPublicKey (for the kid) runs on first use, not at import: a KMS hiccup during
    # a cold start then costs one 503, not a failed Lambda init. Failures are not cached.
    @functools.cache
    def signer() -> KmsSigner:
        return KmsSigner(kms, settings.signing_key_id)

    # AWS's ~130 pinned certificates are parsed only once instance evidence arrives.
    @functools.cache
    def certificates() -> CertificateStore:
        return instance_certificates(settings)

    return TokenExchange(
        settings=settings,
        sts=StsForwarder(settings.sts_connect_override),
        policies=CachedPolicies(
            PolicyStore(dynamodb, settings.policy_table), settings.policy_cache_seconds
        ),
        signer=signer,
        instance_certificates=certificates,
        admission=DynamoDbAdmission(
            dynamodb,
            settings.state_table,
            single_use=settings.single_use,
            rate_limit_per_minute=settings.rate_limit_per_minute,
        )
        if settings.state_table and (settings.single_use or settings.rate_limit_per_minute)
        else None,
        instance_tags=InstanceTagLookup(
            aws.client("sts", session=session), role_name=settings.instance_tags_role_name
        )
        if settings.instance_tags_role_name
        else None,
    )


def build_introspection(settings: Settings) -> tuple[Introspector, ClientStore]:
    """Introspection against the published keys (read from KMS, as the publisher does)
    with the revocation records of the state table, and the clients (state table too)
    that may call `POST /introspect`."""
    if not (settings.signing_key_id and settings.state_table):
        raise ConfigurationError("TOKEX_SIGNING_KEY_ID and TOKEX_STATE_TABLE are required")
    session = boto3.session.Session()
    kms = aws.client("kms", session=session)
    dynamodb = aws.client("dynamodb", session=session)

    def published_keys() -> list[dict[str, Any]]:
        try:
            return [public_jwk_for_key(kms, key_id) for key_id in published_key_ids(settings)]
        except ConfigurationError as exc:
            # Raised per request, not at import: a 503 that names the cause in the log.
            raise TemporarilyUnavailable(
                "the signing keys are unavailable, retry later", reason=f"keys: {exc}"
            ) from None

    introspector = Introspector(
        issuer=settings.issuer,
        keys=PublishedKeys(published_keys),
        revocations=RevocationStore(
            dynamodb, settings.state_table, ttl_cap_seconds=settings.ttl_cap_seconds
        ),
        ttl_cap_seconds=settings.ttl_cap_seconds,
    )
    return introspector, ClientStore(dynamodb, settings.state_table)


def published_key_ids(settings: Settings) -> list[str]:
    """The signing key first, then every other published key, each once."""
    return list(dict.fromkeys((settings.signing_key_id, *settings.published_key_ids)))


def instance_certificates(settings: Settings) -> CertificateStore:
    """AWS's pinned certificates; plus, in local mode only, the demo instance's."""
    store = CertificateStore.default()
    # Settings refuse a local certificate outside local mode (settings.py).
    if settings.local_instance_certificate:
        pem = Path(settings.local_instance_certificate).read_bytes()
        certificate = x509.load_pem_x509_certificate(pem)
        for region in settings.local_instance_regions:
            store.add("rsa2048", region, certificate)
    return store


def publish_issuer_documents(settings: Settings, *, kms: Any, s3: Any) -> list[str]:
    """JWKS (signing key first, then every other published key) and discovery → S3."""
    if not (settings.signing_key_id and settings.jwks_bucket):
        raise ConfigurationError("TOKEX_SIGNING_KEY_ID and TOKEX_JWKS_BUCKET are required")
    jwks = build_jwks(public_jwk_for_key(kms, key_id) for key_id in published_key_ids(settings))
    discovery = discovery_document(
        issuer=settings.issuer,
        token_endpoint=settings.token_endpoint,
        algs=sorted({key["alg"] for key in jwks["keys"]}),
        introspection_endpoint=settings.introspection_endpoint or None,
    )
    return publish_documents(s3, settings.jwks_bucket, jwks=jwks, discovery=discovery)
