"""The wiring: builds the use cases from one `Settings` and the AWS adapters (used by the
handlers and local mode, so both build tokex the same way). The one module, besides the
adapters and the tooling, that knows which adapter implements which interface."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tokex.adapters import aws_clients
from tokex.adapters.kms import KmsPublicKeys, KmsSigner, unusable_key
from tokex.adapters.policy_table import PolicyStore
from tokex.adapters.state_table.admission import DynamoDbAdmission
from tokex.adapters.sts import StsForwarder
from tokex.adapters.tracing import Traced, untraced
from tokex.errors import ConfigurationError
from tokex.exchange import TokenExchange
from tokex.policy.cache import CachedPolicies
from tokex.policy.evaluate import TagLookup
from tokex.settings import Settings

if TYPE_CHECKING:
    from tokex.adapters.state_table.introspection_clients import ClientStore
    from tokex.evidence.instance_identity import CertificateStore
    from tokex.evidence.jwt_evidence import IssuerKeys
    from tokex.introspection import Introspector

T = TypeVar("T")

# Each function imports what its own use case needs (below): the exchange's cold start
# loads neither introspection nor the publisher.


def build_token_exchange(settings: Settings, *, traced: Traced = untraced) -> TokenExchange:
    """`traced`: what each upstream call botocore does not make runs in (STS's, the
    issuers'): the function's tracer gives X-Ray subsegments (adapters/tracing.py)."""
    if not (settings.signing_key_id and settings.policy_table):
        raise ConfigurationError("TOKEX_SIGNING_KEY_ID and TOKEX_POLICY_TABLE are required")
    admits = settings.single_use or settings.rate_limit_per_minute > 0
    if admits and not settings.state_table:  # never a silent fall back to neither
        raise ConfigurationError(
            "TOKEX_STATE_TABLE is required for single use and the rate limit (to run without"
            " both: TOKEX_SINGLE_USE=false and TOKEX_RATE_LIMIT_PER_MINUTE=0)"
        )
    # One session for all clients: each new session would load the service models again.
    session = aws_clients.new_session()
    kms = aws_clients.client("kms", session=session)
    dynamodb = aws_clients.client("dynamodb", session=session)

    return TokenExchange(
        settings=settings,
        sts=StsForwarder(settings.sts_connect_override, traced=traced),
        policies=CachedPolicies(
            PolicyStore(dynamodb, settings.policy_table), settings.policy_cache_seconds
        ),
        # KMS GetPublicKey (for the kid) runs on first use, not at import: a KMS hiccup
        # during a cold start then costs one 503, not a failed Lambda init. The first
        # exchange loads it ahead in the background, and its Sign waits for that one
        # GetPublicKey rather than making another.
        signer=built_once(lambda: kms_signer(kms, settings.signing_key_id)),
        # AWS's ~130 pinned certificates are parsed only once instance evidence arrives.
        instance_certificates=built_once(lambda: instance_certificates(settings)),
        admission=DynamoDbAdmission(
            dynamodb,
            settings.state_table,
            single_use=settings.single_use,
            rate_limit_per_minute=settings.rate_limit_per_minute,
            region=settings.serving_region,
        )
        if admits
        else None,
        instance_tags=_instance_tag_lookup(settings, session),
        issuer_keys=_issuer_keys(settings, traced),
        background=background_work(),
        load_ahead=True,
    )


def kms_signer(kms: Any, key_id: str) -> KmsSigner:
    """The exchange's signer, built on first use: a key that cannot sign JWTs (deleted,
    mistyped, not SIGN_VERIFY, an unsupported spec) is then that request's 503, audited
    and counted as `misconfigured`, as a warm environment's Sign reports the same key gone,
    not a crash of the exchange."""
    try:
        return KmsSigner(kms, key_id)
    except ConfigurationError as exc:
        raise unusable_key(exc) from None


# Lambda serves one request at a time per process, and so does `tokex local`'s front (one
# handler at a time in the interpreter, whichever Region's front received it). An exchange
# uses at most three: the two loads ahead of a cold environment, the write; the fourth is
# room for a write still running after its request gave up waiting for it.
BACKGROUND_THREADS = 4


@functools.cache
def background_work() -> ThreadPoolExecutor:
    """The threads that run an exchange's admission write while KMS signs, and a cold
    environment's loads ahead while STS answers: one small pool per process, made once
    and reused by every invocation (and every exchange built)."""
    return ThreadPoolExecutor(BACKGROUND_THREADS, thread_name_prefix="tokex-background")


def build_introspection(settings: Settings) -> tuple[Introspector, ClientStore]:
    """Introspection against the published keys (read from KMS, as the publisher does)
    with the revocation records of the state table, and the clients (state table too)
    that may call `POST /introspect`."""
    from tokex.adapters.state_table.introspection_clients import ClientStore
    from tokex.adapters.state_table.revocations import RevocationStore
    from tokex.introspection import Introspector, PublishedKeys

    if not (settings.signing_key_id and settings.state_table):
        raise ConfigurationError("TOKEX_SIGNING_KEY_ID and TOKEX_STATE_TABLE are required")
    session = aws_clients.new_session()
    kms = aws_clients.client("kms", session=session)
    dynamodb = aws_clients.client("dynamodb", session=session)
    public_keys = KmsPublicKeys(kms, published_key_ids(settings))
    introspector = Introspector(
        issuer=settings.issuer,
        keys=PublishedKeys(public_keys.for_introspection),
        revocations=RevocationStore(
            dynamodb, settings.state_table, ttl_cap_seconds=settings.ttl_cap_seconds
        ),
        ttl_cap_seconds=settings.ttl_cap_seconds,
    )
    return introspector, ClientStore(dynamodb, settings.state_table)


def build_issuer_publisher(settings: Settings) -> Callable[[], list[str]]:
    """Publishes the JWKS (signing key first, then every other published key) and the
    discovery document to the issuer bucket; returns the keys written. The settings are
    checked when it runs (a ConfigurationError then), as the publisher always has."""
    from tokex.adapters.s3 import S3Documents
    from tokex.publish import publish_issuer_documents

    # When this environment read its configuration: what its runs mark the documents
    # with, so a run of an environment configured before a deploy never overwrites what
    # one configured after it wrote (publish.py).
    configured_at = time.time()
    session = aws_clients.new_session()
    kms = aws_clients.client("kms", session=session)
    s3 = aws_clients.client("s3", session=session)

    def publish() -> list[str]:
        if not (settings.signing_key_id and settings.jwks_bucket):
            raise ConfigurationError("TOKEX_SIGNING_KEY_ID and TOKEX_JWKS_BUCKET are required")
        return publish_issuer_documents(
            settings,
            public_jwks=KmsPublicKeys(kms, published_key_ids(settings)).jwks,
            store=S3Documents(s3, settings.jwks_bucket),
            configured_at=configured_at,
        )

    return publish


def built_once(build: Callable[[], T]) -> Callable[[], T]:
    """`build()` on the first call, whoever calls first: concurrent first callers wait
    for that one build rather than making another. A failure is not kept (the next call
    builds again), so a hiccup costs one request, never the environment."""
    lock = threading.Lock()
    built = functools.cache(build)

    def get() -> T:
        with lock:
            return built()

    return get


def _instance_tag_lookup(settings: Settings, session: object) -> TagLookup | None:
    """The EC2 tag lookup, built (its module loaded, its STS client made) when a policy's
    tag condition first asks: a cold start, and every exchange without one, skips it."""
    if not settings.instance_tags_role_name:
        return None

    def build() -> TagLookup:
        from tokex.adapters.ec2 import InstanceTagLookup

        return InstanceTagLookup(
            aws_clients.client("sts", session=session),
            role_name=settings.instance_tags_role_name,
        )

    lookup = built_once(build)
    return lambda instance: lookup()(instance)


def _issuer_keys(settings: Settings, traced: Traced) -> Callable[[], IssuerKeys] | None:
    """The trusted JWT issuers' keys, fetched on first use and cached per issuer; their
    adapter loads when the first JWT arrives (a signed request never loads it)."""
    if not settings.trusted_issuers:
        return None

    def build() -> IssuerKeys:
        from tokex.adapters.oidc_keys import OidcIssuerKeys

        # Local mode's issuers are plain http on loopback (settings.py allows them there
        # only).
        return OidcIssuerKeys(allow_http_loopback=settings.is_local, traced=traced)

    return built_once(build)


def published_key_ids(settings: Settings) -> list[str]:
    """The signing key first, then every other published key, each once."""
    return list(dict.fromkeys((settings.signing_key_id, *settings.published_key_ids)))


def instance_certificates(settings: Settings) -> CertificateStore:
    """AWS's pinned certificates; plus, in local mode only, the demo instance's."""
    from tokex.evidence.instance_identity import CertificateStore

    store = CertificateStore.default()
    # Settings refuse a local certificate outside local mode (settings.py).
    if settings.local_instance_certificate:
        # Local mode only, and only when instance evidence first arrives: off the cold path.
        from cryptography import x509

        pem = Path(settings.local_instance_certificate).read_bytes()
        certificate = x509.load_pem_x509_certificate(pem)
        for region in settings.local_instance_regions:
            store.add("rsa2048", region, certificate)
    return store
