"""Typed settings, parsed once at cold start from the environment.

Handlers build one `Settings` with `Settings.from_env()` at import time and never read
`os.environ` anywhere else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tokex import identifiers
from tokex.errors import ConfigurationError
from tokex.evidence.trusted_issuers import (
    TrustedIssuerError,
    TrustedIssuers,
    parse_trusted_issuers,
)
from tokex.issuer_url import LOOPBACK_HOSTS, issuer_url_problem

DEFAULT_TTL_SECONDS = 900
DEFAULT_TTL_CAP_SECONDS = 3600
# Policies are cached in memory at most this long (docs/policies.md "Evaluation").
MAX_POLICY_CACHE_SECONDS = 60
# The time budget of one request, shared by all its upstream calls (deadline.py). The
# exchange and introspect functions time out at 10 s (cdk/tokex_stack.py): the 503 must
# leave the function well before that (deadline + 0.5 s for a compensating write, then
# the log and metrics flush), or the caller gets API Gateway's bare 5xx with no
# Retry-After and no audit line, after waiting the full 10 s. 6 s is also far beyond a
# healthy exchange (an STS and a KMS round trip, tens of ms in region; a cold start's
# first GetPublicKey and policy scan, a few hundred ms) and below `tokex.client`'s 10 s
# budget for a whole token call (DEFAULT_TIMEOUT), so a caller hears the 503 rather than
# giving up first.
DEFAULT_DEADLINE_SECONDS = 6.0
MIN_DEADLINE_SECONDS = 0.5
MAX_DEADLINE_SECONDS = 9.0


@dataclass(frozen=True)
class Settings:
    issuer: str
    signing_key_id: str = ""
    # Keys the publisher puts in the JWKS besides the signing key (next and previous keys
    # of a rotation), as KMS key ids, ARNs or aliases.
    published_key_ids: tuple[str, ...] = ()
    policy_table: str = ""
    jwks_bucket: str = ""
    token_endpoint: str = ""
    introspection_endpoint: str = ""
    partitions: tuple[str, ...] = ("aws",)
    # Empty = every known region of the allowed partitions.
    regions: tuple[str, ...] = ()
    # A Regional exchange (TOKEX_SERVING_REGION; docs/security.md "Regional exchanges"):
    # it serves only evidence made for its own Region, so a piece of evidence used up in
    # one Region's table can never be used again in another before replication.
    serving_region: str = ""
    # A multi-Region deployment's Regions, home first (TOKEX_SERVED_REGIONS, publisher
    # only): listed in the discovery document with their own endpoints.
    served_regions: tuple[str, ...] = ()
    allow_fips: bool = True
    default_ttl_seconds: int = DEFAULT_TTL_SECONDS
    ttl_cap_seconds: int = DEFAULT_TTL_CAP_SECONDS
    policy_cache_seconds: int = 30
    # Local mode and tests only: the TCP destination for the forwarded STS request
    # (e.g. http://127.0.0.1:5000). The validated STS host is still the Host header.
    sts_connect_override: str | None = None
    # DynamoDB table of short-lived state (TTL attribute `expires_at`): single-use records
    # of accepted signatures, introspection clients, revocations.
    state_table: str = ""
    # Refuse a signed request accepted before (optional; on by default):
    # docs/security.md "Single use and the rate limit".
    single_use: bool = True
    # Refuse a signed request that does not sign X-Tokex-Audience (TOKEX_REQUIRE_SIGNED_
    # AUDIENCE): a leaked one could otherwise buy a token for any audience the principal
    # may have. Off by default: a signer of its own may not send it (tokex's always do).
    require_signed_audience: bool = False
    # Token exchanges per caller principal per minute (0 = no limit); needs state_table.
    rate_limit_per_minute: int = 60
    # One budget per request for every upstream call (TOKEX_DEADLINE_SECONDS).
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    # Local mode only: PEM file of the certificate that signs the demo instance's identity
    # document, trusted for `local_instance_regions`. Refused for an https issuer.
    local_instance_certificate: str = ""
    local_instance_regions: tuple[str, ...] = ()
    # Policy `instance.tags`: the role tokex assumes in an instance's account to call
    # ec2:DescribeInstances (adapters/ec2.py). Empty = tag conditions never hold.
    instance_tags_role_name: str = ""
    # The JWT issuers whose tokens are evidence (TOKEX_TRUSTED_ISSUERS, a JSON list; CDK
    # context `trustedIssuers`): docs/contract.md "JWT evidence". Empty: SigV4 only.
    trusted_issuers: TrustedIssuers = field(default_factory=TrustedIssuers)
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_issuer(self.issuer, allow_http_loopback=self.sts_connect_override is not None)
        for partition in self.partitions:
            if not identifiers.is_partition(partition):
                raise ConfigurationError(f"unknown partition {partition!r}")
        if self.serving_region:
            if not identifiers.is_region(self.serving_region):
                raise ConfigurationError("TOKEX_SERVING_REGION must be a region name")
            if self.regions and self.regions != (self.serving_region,):
                raise ConfigurationError(
                    "TOKEX_STS_REGIONS must be empty or the serving region alone: a Regional"
                    " exchange accepts requests signed for its own Region's STS only"
                )
            # Frozen dataclass: its STS endpoints are its own Region's.
            object.__setattr__(self, "regions", (self.serving_region,))
        for region in self.served_regions:
            if not identifiers.is_region(region):
                raise ConfigurationError(f"TOKEX_SERVED_REGIONS: {region!r} is not a region name")
        if len(set(self.served_regions)) != len(self.served_regions):
            raise ConfigurationError("TOKEX_SERVED_REGIONS lists a Region twice")
        if not 60 <= self.ttl_cap_seconds <= 43200:
            raise ConfigurationError("TOKEX_TTL_CAP_SECONDS must be between 60 and 43200")
        if not 60 <= self.default_ttl_seconds <= self.ttl_cap_seconds:
            raise ConfigurationError("TOKEX_DEFAULT_TTL_SECONDS must be 60..TTL cap")
        if not MIN_DEADLINE_SECONDS <= self.deadline_seconds <= MAX_DEADLINE_SECONDS:
            raise ConfigurationError(
                f"TOKEX_DEADLINE_SECONDS must be {MIN_DEADLINE_SECONDS}..{MAX_DEADLINE_SECONDS}"
            )
        if not 0 <= self.policy_cache_seconds <= MAX_POLICY_CACHE_SECONDS:
            raise ConfigurationError(
                f"TOKEX_POLICY_CACHE_SECONDS must be 0..{MAX_POLICY_CACHE_SECONDS}"
            )
        # Checked here, at cold start: the tag lookup itself is built on first use.
        if self.instance_tags_role_name and not identifiers.ROLE_NAME_WITH_PATH.fullmatch(
            self.instance_tags_role_name
        ):
            raise ConfigurationError("TOKEX_INSTANCE_TAGS_ROLE_NAME is not a valid IAM role name")
        if self.local_instance_certificate and not self.is_local:
            raise ConfigurationError(
                "TOKEX_LOCAL_INSTANCE_CERTIFICATE is for local mode only: deployed issuers "
                "trust AWS's pinned instance identity certificates and nothing else"
            )
        for trusted in self.trusted_issuers.issuers:
            # Local issuers (plain http on loopback) are trusted by local mode only, as
            # the local instance certificate is.
            if urlsplit(trusted.issuer).scheme.lower() == "http" and not self.is_local:
                raise ConfigurationError(
                    "TOKEX_TRUSTED_ISSUERS: plain-http issuers are for local mode only"
                )
            if trusted.issuer == self.issuer:
                raise ConfigurationError("TOKEX_TRUSTED_ISSUERS may not list tokex's own issuer")
        if self.sts_connect_override is not None:
            parts = urlsplit(self.sts_connect_override)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError("TOKEX_STS_CONNECT_OVERRIDE must be an http(s) URL")
            # The override decides who answers "who is this caller?": it exists for the
            # emulator only, so it may never point off this machine.
            if parts.hostname not in LOOPBACK_HOSTS:
                raise ConfigurationError("TOKEX_STS_CONNECT_OVERRIDE must be a loopback URL")
            # ...and only with local mode's http loopback issuer: in Lambda, loopback is
            # the Runtime API and extensions, which must never vouch for a caller.
            if not self.is_local:
                raise ConfigurationError(
                    "TOKEX_STS_CONNECT_OVERRIDE is for local mode only (http loopback issuer)"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def csv(name: str, default: str = "") -> tuple[str, ...]:
            raw = env.get(name, default)
            listed = tuple(p.strip() for p in raw.split(",") if p.strip())
            if raw.strip() and not listed:
                # `,`: a list emptied by hand, where an empty allowlist would allow all
                raise ConfigurationError(f"{name} lists nothing: give its values or unset it")
            return listed

        def integer(name: str, default: int) -> int:
            raw = env.get(name, "")
            if not raw:
                return default
            if not re.fullmatch(r"[0-9]{1,6}", raw):
                raise ConfigurationError(f"{name} must be a positive integer")
            return int(raw)

        def flag(name: str, default: bool) -> bool:
            raw = env.get(name, "").lower()
            if raw not in ("", "true", "false"):
                raise ConfigurationError(f"{name} must be true or false")
            return default if not raw else raw == "true"

        def seconds(name: str, default: float) -> float:
            raw = env.get(name, "")
            if not raw:
                return default
            if not re.fullmatch(r"[0-9]{1,2}(\.[0-9]{1,3})?", raw):
                raise ConfigurationError(f"{name} must be a number of seconds, like 6 or 1.5")
            return float(raw)

        issuer = env.get("TOKEX_ISSUER", "")
        if not issuer:
            raise ConfigurationError("TOKEX_ISSUER is required")
        if env.get("AWS_LAMBDA_FUNCTION_NAME") and (
            env.get("TOKEX_STS_CONNECT_OVERRIDE") or env.get("TOKEX_LOCAL_INSTANCE_CERTIFICATE")
        ):
            raise ConfigurationError("local-mode settings are refused inside AWS Lambda")
        try:
            # Which issuers may be plain http, and never tokex's own: __post_init__.
            trusted_issuers = parse_trusted_issuers(
                env.get("TOKEX_TRUSTED_ISSUERS", ""), allow_http_loopback=True
            )
        except TrustedIssuerError as err:
            raise ConfigurationError(f"TOKEX_TRUSTED_ISSUERS: {err}") from None
        return cls(
            issuer=issuer,
            signing_key_id=env.get("TOKEX_SIGNING_KEY_ID", ""),
            published_key_ids=csv("TOKEX_PUBLISHED_KEY_IDS"),
            policy_table=env.get("TOKEX_POLICY_TABLE", ""),
            jwks_bucket=env.get("TOKEX_JWKS_BUCKET", ""),
            token_endpoint=env.get("TOKEX_TOKEN_ENDPOINT", "") or issuer + "/token",
            introspection_endpoint=env.get("TOKEX_INTROSPECTION_ENDPOINT", ""),
            partitions=csv("TOKEX_STS_PARTITIONS", "aws"),
            regions=csv("TOKEX_STS_REGIONS"),
            serving_region=env.get("TOKEX_SERVING_REGION", ""),
            served_regions=csv("TOKEX_SERVED_REGIONS"),
            allow_fips=flag("TOKEX_STS_ALLOW_FIPS", True),
            default_ttl_seconds=integer("TOKEX_DEFAULT_TTL_SECONDS", DEFAULT_TTL_SECONDS),
            ttl_cap_seconds=integer("TOKEX_TTL_CAP_SECONDS", DEFAULT_TTL_CAP_SECONDS),
            policy_cache_seconds=integer("TOKEX_POLICY_CACHE_SECONDS", 30),
            sts_connect_override=env.get("TOKEX_STS_CONNECT_OVERRIDE") or None,
            state_table=env.get("TOKEX_STATE_TABLE", ""),
            single_use=flag("TOKEX_SINGLE_USE", True),
            require_signed_audience=flag("TOKEX_REQUIRE_SIGNED_AUDIENCE", False),
            rate_limit_per_minute=integer("TOKEX_RATE_LIMIT_PER_MINUTE", 60),
            deadline_seconds=seconds("TOKEX_DEADLINE_SECONDS", DEFAULT_DEADLINE_SECONDS),
            local_instance_certificate=env.get("TOKEX_LOCAL_INSTANCE_CERTIFICATE", ""),
            local_instance_regions=csv("TOKEX_LOCAL_INSTANCE_REGIONS", "us-east-1"),
            instance_tags_role_name=env.get("TOKEX_INSTANCE_TAGS_ROLE_NAME", ""),
            trusted_issuers=trusted_issuers,
        )

    @property
    def is_local(self) -> bool:
        """Local mode: plain-http loopback issuer with the STS emulator override."""
        return self.issuer.startswith("http://") and self.sts_connect_override is not None


def _check_issuer(issuer: str, *, allow_http_loopback: bool) -> None:
    """Deployed issuers are https; plain http only on loopback in local mode (contract)."""
    problem = issuer_url_problem(issuer, allow_http_loopback=allow_http_loopback)
    if problem is not None:
        raise ConfigurationError(f"TOKEX_ISSUER {problem}")
