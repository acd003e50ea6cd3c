"""Deployment options, read once from CDK context (`cdk.json` or `-c key=value`)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from constructs import Node

from tokex import identifiers
from tokex.errors import ConfigurationError
from tokex.evidence.sts_endpoints import StsEndpoints
from tokex.evidence.trusted_issuers import TrustedIssuerError, TrustedIssuers, parse_trusted_issuers
from tokex.strict_json import StrictJsonError, loads_strict

# The key specs, partitions and identifier rules are the exchange's own (identifiers.py).
SIGNING_KEY_SPECS = tuple(identifiers.SIGNING_KEY_SPECS)
# The signing-key slots a stack may hold: "a" is the key every stack has had from the
# start (construct `SigningKey`), "b" the second key of a rotation (`SigningKeyB`);
# "mrk-a" and "mrk-b" are KMS multi-Region keys (`SigningKeyMrkA`...), the keys of a
# multi-Region deployment (docs/multi-region.md). Whether a key is multi-Region is fixed
# when KMS creates it, so it is part of the slot's name: no context change can turn a
# single-Region key into a multi-Region one in place (that would replace the key).
KEY_SLOTS = ("a", "b", "mrk-a", "mrk-b")
MULTI_REGION_SLOTS = ("mrk-a", "mrk-b")
# CloudFront's default quota of cache behaviours per distribution; the issuer's has two
# (/token, /introspect) and two more per Region (/regions/<r>/...).
CLOUDFRONT_CACHE_BEHAVIORS = 25
MAX_REGIONS = (CLOUDFRONT_CACHE_BEHAVIORS - 2) // 2
# CloudFront delivers no standard logs to a bucket in these Regions (Amazon CloudFront
# Developer Guide, "Choosing an Amazon S3 bucket for your standard logs"), and the stack's
# access-log bucket is in its (home) Region: reported deploys there fail creating the
# distribution (AccessDenied on the log bucket), so synth refuses them up front.
NO_CLOUDFRONT_STANDARD_LOGS_REGIONS = (
    "af-south-1",
    "ap-east-1",
    "ap-southeast-3",
    "eu-south-1",
    "me-south-1",
)
# The partition the stack deploys in: GovCloud has no CloudFront, and China's cannot take
# the distribution as the stack builds it (a custom domain's certificate comes from ACM in
# us-east-1), so a stack elsewhere would fail only at deploy. Callers of the other
# partitions are served from there (`stsPartitions`).
STACK_PARTITION = "aws"
_SERVE_OTHER_PARTITIONS = (
    f"deploy tokex in the {STACK_PARTITION} partition, and serve aws-cn and aws-us-gov"
    " workloads from there with the stsPartitions context"
)
# ARNs below are of a served partition and account (identifiers.py); matched whole.
_ARN_HEAD = rf"arn:(?:{identifiers.PARTITION.pattern})"
_ACCOUNT = identifiers.ACCOUNT_ID.pattern
# CloudFront only takes certificates from ACM in us-east-1.
_CLOUDFRONT_CERT_ARN = re.compile(
    rf"{_ARN_HEAD}:acm:us-east-1:{_ACCOUNT}:certificate/[0-9a-f-]{{36}}"
)
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
MAX_STACK_NAME = 128
_STACK_NAME = re.compile(rf"^[A-Za-z][A-Za-z0-9-]{{0,{MAX_STACK_NAME - 1}}}$")
_WEB_ACL_ARN = re.compile(
    rf"{_ARN_HEAD}:wafv2:us-east-1:{_ACCOUNT}:global/webacl/[\w-]+/[0-9a-f-]{{36}}"
)
# Nothing above INFO: each request's audit line is written at INFO (functions/logs.py).
_LOG_LEVELS = ("DEBUG", "INFO")
# The retention periods CloudWatch Logs offers, in days (PutRetentionPolicy).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)  # fmt: skip
# X-Ray: "lambda" = Lambda's own segments of each invocation (Active tracing, no tracer
# in the function); "sdk" adds the Powertools tracer's subsegments (the handler, each AWS
# call) for about 100 ms more per cold start (docs/performance.md); "off" = no X-Ray.
TRACING_MODES = ("lambda", "sdk", "off")
# A KMS key ARN (not an alias: IAM grants on a key need its key ARN); multi-Region keys
# have `mrk-` ids.
_KMS_KEY_ARN = re.compile(
    rf"{_ARN_HEAD}:kms:{identifiers.REGION.pattern}:{_ACCOUNT}:key/"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
)
MAX_RATE_LIMIT_PER_MINUTE = 100_000


class ConfigError(ValueError):
    """A context value is invalid; the message names the key."""


@dataclass(frozen=True)
class TokexConfig:
    stack_name: str = "Tokex"
    signing_key_spec: str = "RSA_2048"
    # The key slots that exist (each a KMS key of the stack, published in the JWKS), in
    # KEY_SLOTS order whatever the context's order, and the one that signs. Rotation is
    # moving from ("a",) to ("a", "b") to active "b" to ("b",): see docs/deploy.md.
    signing_keys: tuple[str, ...] = ("a",)
    # None: "a" if it exists, else "b" (resolved in __post_init__).
    active_signing_key: str | None = None
    domain_name: str | None = None
    certificate_arn: str | None = None
    sts_partitions: tuple[str, ...] = ("aws",)
    # Empty: every known region of the partitions (the exchange's own default).
    sts_regions: tuple[str, ...] = ()
    ttl_cap_seconds: int = 3600
    default_ttl_seconds: int = 900
    throttle_rate_limit: int = 50
    throttle_burst_limit: int = 100
    # Exchanges a minute per principal (TOKEX_RATE_LIMIT_PER_MINUTE): shared by everything
    # that signs as that principal, so a fleet on one role may need more. Never off here.
    rate_limit_per_minute: int = 60
    log_level: str = "INFO"
    tracing: str = "lambda"
    # A WAF web ACL (scope CLOUDFRONT, created in us-east-1) to attach to the distribution.
    web_acl_arn: str | None = None
    # Changes on every synth unless pinned, so the JWKS publisher runs on every deploy.
    deploy_nonce: str | None = None
    # Keys published in the JWKS (and accepted by introspection) besides the signing key:
    # the next and previous keys of a rotation. KMS key ARNs.
    published_key_arns: tuple[str, ...] = ()
    # Policy `instance.tags`: the role the exchange assumes in an instance's account to
    # read its tags (ec2:DescribeInstances). None: tag conditions never hold.
    instance_tags_role_name: str | None = None
    # The accounts whose role the exchange may assume; empty = any account.
    instance_tags_accounts: tuple[str, ...] = ()
    # Which origin secrets (cdk/origin_secret.py): raising it replaces both in a deploy,
    # the way to rotate them (docs/deploy.md "One door").
    origin_secret_generation: int = 1
    # How long every log group keeps its events: the exchange's is the audit trail.
    log_retention_days: int = 30
    # Signed requests must sign X-Tokex-Audience (TOKEX_REQUIRE_SIGNED_AUDIENCE).
    require_signed_audience: bool = False
    # The deployment's Regions, home first (docs/multi-region.md). Empty or one Region:
    # the single-Region stack, unchanged.
    regions: tuple[str, ...] = ()
    # The JWT issuers whose tokens are evidence (the exchange's TOKEX_TRUSTED_ISSUERS,
    # tokex/evidence/trusted_issuers.py). Empty: SigV4 evidence only, variable absent.
    trusted_issuers: TrustedIssuers = field(default_factory=TrustedIssuers)

    def __post_init__(self) -> None:
        if not _STACK_NAME.match(self.stack_name):
            raise ConfigError(f"stackName {self.stack_name!r} is not a valid stack name")
        if self.signing_key_spec not in SIGNING_KEY_SPECS:
            raise ConfigError(
                f"signingKeySpec must be one of {', '.join(SIGNING_KEY_SPECS)},"
                f" not {self.signing_key_spec!r}"
            )
        self._check_signing_keys()
        if (self.domain_name is None) != (self.certificate_arn is None):
            raise ConfigError("domainName and certificateArn go together: set both or neither")
        if self.domain_name is not None and not _DOMAIN.match(self.domain_name):
            raise ConfigError(f"domainName {self.domain_name!r} is not a lowercase DNS name")
        if self.certificate_arn is not None and not _CLOUDFRONT_CERT_ARN.fullmatch(
            self.certificate_arn
        ):
            raise ConfigError("certificateArn must be an ACM certificate ARN in us-east-1")
        if self.certificate_arn is not None:
            refuse_arn_outside_stack_partition("certificateArn", self.certificate_arn)
        for partition in self.sts_partitions:
            if not identifiers.is_partition(partition):
                raise ConfigError(f"stsPartitions: unknown partition {partition!r}")
        for region in self.sts_regions:
            if not identifiers.is_region(region):
                raise ConfigError(f"stsRegions: {region!r} is not a region name")
        self._check_sts_endpoints("stsRegions", self.sts_regions)
        if not 60 <= self.ttl_cap_seconds <= 43200:
            raise ConfigError("ttlCapSeconds must be between 60 and 43200")
        if not 60 <= self.default_ttl_seconds <= self.ttl_cap_seconds:
            raise ConfigError("defaultTtlSeconds must be between 60 and ttlCapSeconds")
        if min(self.throttle_rate_limit, self.throttle_burst_limit) < 1:
            raise ConfigError("throttleRateLimit and throttleBurstLimit must be positive")
        if not 1 <= self.rate_limit_per_minute <= MAX_RATE_LIMIT_PER_MINUTE:
            raise ConfigError(
                f"rateLimitPerMinute must be between 1 and {MAX_RATE_LIMIT_PER_MINUTE}"
                " (the per-principal budget can be raised, not switched off)"
            )
        if self.web_acl_arn is not None and not _WEB_ACL_ARN.fullmatch(self.web_acl_arn):
            raise ConfigError("webAclArn must be a WAFv2 global (CLOUDFRONT) web ACL ARN")
        if self.web_acl_arn is not None:
            refuse_arn_outside_stack_partition("webAclArn", self.web_acl_arn)
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(
                f"logLevel must be one of {', '.join(_LOG_LEVELS)}: the audit trail is"
                " written at INFO, so a level above it would drop it"
            )
        if self.tracing not in TRACING_MODES:
            raise ConfigError(f"tracing must be one of {', '.join(TRACING_MODES)}")
        for arn in self.published_key_arns:
            if not _KMS_KEY_ARN.fullmatch(arn):
                raise ConfigError(f"publishedKeyArns: {arn!r} is not a KMS key ARN")
            refuse_arn_outside_stack_partition("publishedKeyArns", arn)
        self._check_published_key_regions()
        if self.instance_tags_role_name is not None and not (
            identifiers.ROLE_NAME_WITH_PATH.fullmatch(self.instance_tags_role_name)
        ):
            raise ConfigError(
                f"instanceTagsRoleName {self.instance_tags_role_name!r} is not an IAM role name"
            )
        if self.instance_tags_accounts and self.instance_tags_role_name is None:
            raise ConfigError("instanceTagsAccounts needs instanceTagsRoleName")
        for account in self.instance_tags_accounts:
            if not identifiers.is_account_id(account):
                raise ConfigError(f"instanceTagsAccounts: {account!r} is not an account id")
        self._check_trusted_issuers()
        self._check_regions()
        if self.origin_secret_generation < 1:
            raise ConfigError("originSecretGeneration must be a positive integer")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ConfigError(
                "logRetentionDays must be one of CloudWatch Logs' periods:"
                f" {', '.join(map(str, LOG_RETENTION_DAYS))}"
            )

    def _check_regions(self) -> None:
        for region in self.regions:
            if not identifiers.is_region(region):
                raise ConfigError(f"regions: {region!r} is not a region name")
            # One CloudFront distribution fronts them all: the commercial partition only.
            if identifiers.partition_of_region(region) != STACK_PARTITION:
                raise ConfigError(
                    f"regions: {region!r} is not in the {STACK_PARTITION} partition (one"
                    f" CloudFront distribution fronts every Region): {_SERVE_OTHER_PARTITIONS}"
                )
        if len(set(self.regions)) != len(self.regions):
            raise ConfigError(f"regions lists a Region twice: {list(self.regions)}")
        if len(self.regions) > MAX_REGIONS:
            # Found at synth, not half-way through a deploy at the CloudFront update.
            raise ConfigError(
                f"regions: at most {MAX_REGIONS} Regions, not {len(self.regions)}: the "
                f"distribution needs two cache behaviours per Region besides its two own, "
                f"and CloudFront allows {CLOUDFRONT_CACHE_BEHAVIORS} by default"
            )
        if self.home_region is not None:
            refuse_region_without_standard_logs(self.home_region, "regions: the home Region")
        if not self.is_multi_region:
            return
        for region in self.regions:
            # Each Regional exchange accepts its own Region's STS only (settings.py).
            self._check_sts_endpoints("regions", (region,))
        # Each other Region's stacks are named `<stackName>-<region>-Api` and
        # `<stackName>-<region>` (cdk/regional_stacks.py), under CloudFormation's limit too.
        longest = max((f"{self.stack_name}-{r}-Api" for r in self.other_regions), key=len)
        if len(longest) > MAX_STACK_NAME:
            raise ConfigError(
                f"stackName is too long for regions: the Regional stack {longest[:40]}... would"
                f" be {len(longest)} characters, and CloudFormation allows {MAX_STACK_NAME}"
            )
        single = [slot for slot in self.signing_keys if slot not in MULTI_REGION_SLOTS]
        if single:
            raise ConfigError(
                f"regions: every signing key of a multi-Region deployment is a multi-Region"
                f" key (slots {', '.join(MULTI_REGION_SLOTS)}), not {', '.join(single)}: a new"
                " deployment sets signingKeys=mrk-a and activeSigningKey=mrk-a; an existing one"
                " first rotates to mrk-a"
                ' (docs/multi-region.md "Opting in")'
            )
        if self.sts_regions:
            raise ConfigError(
                "stsRegions and regions do not go together: each Regional exchange serves"
                " its own Region's STS only (docs/security.md, Regional exchanges)"
            )
        if self.published_key_arns:
            raise ConfigError(
                "publishedKeyArns is for single-Region deployments: a multi-Region"
                " deployment publishes its own multi-Region key slots only"
            )

    def _check_published_key_regions(self) -> None:
        """The publisher and introspection read the keys with their own Region's KMS
        client: a key in another Region (or partition) would fail the JWKS resource, and
        with it the deploy. The stack's Region is `regions`' one when named, else the
        CDK CLI's (`check_cli_region`)."""
        key_regions = published_key_regions(self)
        if len(self.regions) == 1:
            refuse_keys_outside(self.regions[0], "the deployment's Region", key_regions)
        if len(key_regions) > 1:
            raise ConfigError(
                "publishedKeyArns: every key must be in the deployment's Region, not in"
                f" {', '.join(sorted(key_regions))}: the functions read them with their"
                " Region's KMS"
            )

    def _check_sts_endpoints(self, key: str, regions: tuple[str, ...]) -> None:
        """The exchange's own check of its STS allowlist, made when it loads: a Region its
        partitions do not have would stop every exchange after a deploy that succeeded."""
        try:
            StsEndpoints(self.sts_partitions, regions)
        except ConfigurationError as err:
            raise ConfigError(
                f"{key}: {err} (stsPartitions: {', '.join(self.sts_partitions)})"
            ) from None

    def _check_signing_keys(self) -> None:
        slots = ", ".join(KEY_SLOTS)
        if not self.signing_keys:
            raise ConfigError(f"signingKeys must list at least one key slot ({slots})")
        for slot in self.signing_keys:
            if slot not in KEY_SLOTS:
                raise ConfigError(f"signingKeys: unknown key slot {slot!r} (the slots are {slots})")
        if len(set(self.signing_keys)) != len(self.signing_keys):
            raise ConfigError(f"signingKeys lists a slot twice: {list(self.signing_keys)}")
        # Frozen dataclass: normalize the order and resolve the default active slot.
        keys = tuple(slot for slot in KEY_SLOTS if slot in self.signing_keys)
        object.__setattr__(self, "signing_keys", keys)
        active = self.active_signing_key or keys[0]
        if active not in keys:
            raise ConfigError(
                f"activeSigningKey {active!r} is not in signingKeys ({', '.join(keys)}): a key"
                " signs only once it exists and is published (see docs/deploy.md, Key rotation)"
            )
        object.__setattr__(self, "active_signing_key", active)

    def _check_trusted_issuers(self) -> None:
        """The exchange's own rules (https only: a deployment never trusts a plain-http
        issuer) and, when the issuer is known at synth (a custom domain), never tokex's own
        issuer; with the CloudFront domain the exchange checks that at cold start."""
        try:
            parse_trusted_issuers(
                [trusted.to_document() for trusted in self.trusted_issuers.issuers],
                allow_http_loopback=False,
                own_issuer=self.known_issuer or "",
            )
        except TrustedIssuerError as err:
            raise ConfigError(str(err)) from None

    @property
    def active_key(self) -> str:
        """The slot that signs (`active_signing_key`, resolved)."""
        assert self.active_signing_key is not None
        return self.active_signing_key

    @property
    def inactive_keys(self) -> tuple[str, ...]:
        """The slots that exist but do not sign: published only."""
        return tuple(slot for slot in self.signing_keys if slot != self.active_key)

    @property
    def is_multi_region(self) -> bool:
        return len(self.regions) > 1

    @property
    def home_region(self) -> str | None:
        return self.regions[0] if self.regions else None

    @property
    def other_regions(self) -> tuple[str, ...]:
        """The Regions besides home: one Regional stack pair each."""
        return self.regions[1:]

    @property
    def known_issuer(self) -> str | None:
        """The issuer URL when synth knows it (a custom domain); None for the CloudFront
        domain, which exists only once deployed."""
        return f"https://{self.domain_name}" if self.domain_name else None

    @classmethod
    def from_context(cls, node: Node) -> TokexConfig:
        def get(key: str) -> Any:
            """The key's value, None when it is absent. Present but empty (`-c key=`, a
            templating step's empty variable) it is refused, not taken as absent: -c wins
            over cdk.json, and the default would replace cdk.json's value without a word
            (requireSignedAudience off, the WAF detached, a shorter log retention)."""
            value = node.try_get_context(key)
            if _is_blank(value):
                raise ConfigError(f"{key} is empty: give it a value, or leave it out")
            return value

        def text(key: str) -> str | None:
            value = get(key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{key} must be a string")
            return value

        def strings(key: str) -> tuple[str, ...] | None:
            value = get(key)
            if value is None:
                return None
            if isinstance(value, str) and value.lstrip().startswith("["):
                # `-c key='["x","y"]'`: the CDK CLI passes every -c value as a string.
                try:
                    value = loads_strict(value)
                except StrictJsonError:  # nested too deep for the parser included
                    raise ConfigError(
                        f"{key} is not a valid JSON list: {_shortened(value)!r}"
                    ) from None
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{key} must be a list of strings or a comma-separated string")
            return tuple(i.strip() for i in items if i.strip())

        def allow_list(key: str, default: str) -> tuple[str, ...] | None:
            """A list whose default is the wide one: given, it must name something. Empty
            (`[]`, `,`, or `-c key=` from a templating step's empty variable), it would
            silently mean the default, and an allow-list would fail open."""
            value = node.try_get_context(key)
            if value is None:
                return None
            if _is_blank(value) or not (items := strings(key)):
                raise ConfigError(
                    f"{key} is empty: name at least one, or leave it out for {default}"
                )
            return items

        def flag(key: str) -> bool | None:
            # cdk.json holds a boolean; `-c key=true` passes a string.
            value = get(key)
            if value is None or isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ConfigError(f"{key} must be true or false")

        def integer(key: str) -> int | None:
            value = get(key)
            if value is None:
                return None
            # [0-9], not \d: `int` reads other scripts' digits too ('٣٦٠٠' is 3600).
            if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,6}", str(value)):
                raise ConfigError(f"{key} must be a whole number from 0 to 999999")
            return int(value)

        def trusted_issuers(key: str) -> TrustedIssuers | None:
            # A JSON list from `-c key='[...]'` (a string, parsed strictly there) or
            # cdk.json (a list).
            value = get(key)
            if value is None:
                return None
            try:
                return parse_trusted_issuers(value, allow_http_loopback=False)
            except TrustedIssuerError as err:  # the message names `trustedIssuers`
                raise ConfigError(str(err)) from None

        values: dict[str, Any] = {
            "stack_name": text("stackName"),
            "signing_key_spec": text("signingKeySpec"),
            "signing_keys": strings("signingKeys"),
            "active_signing_key": text("activeSigningKey"),
            "domain_name": text("domainName"),
            "certificate_arn": text("certificateArn"),
            "sts_partitions": allow_list("stsPartitions", "the default (aws)"),
            "sts_regions": allow_list("stsRegions", "every Region of stsPartitions"),
            "ttl_cap_seconds": integer("ttlCapSeconds"),
            "default_ttl_seconds": integer("defaultTtlSeconds"),
            "throttle_rate_limit": integer("throttleRateLimit"),
            "throttle_burst_limit": integer("throttleBurstLimit"),
            "rate_limit_per_minute": integer("rateLimitPerMinute"),
            "log_level": text("logLevel"),
            "tracing": text("tracing"),
            "deploy_nonce": text("deployNonce"),
            "web_acl_arn": text("webAclArn"),
            "published_key_arns": strings("publishedKeyArns"),
            "instance_tags_role_name": text("instanceTagsRoleName"),
            "instance_tags_accounts": allow_list("instanceTagsAccounts", "any account"),
            "trusted_issuers": trusted_issuers("trustedIssuers"),
            "regions": strings("regions"),
            "origin_secret_generation": integer("originSecretGeneration"),
            "log_retention_days": integer("logRetentionDays"),
            "require_signed_audience": flag("requireSignedAudience"),
        }
        _refuse_unknown_keys(node, CONTEXT_KEYS)
        return cls(**{k: v for k, v in values.items() if v is not None})


def _is_blank(value: object) -> bool:
    """An empty context value: what `-c key=` passes (or only spaces)."""
    return isinstance(value, str) and not value.strip()


def _shortened(text: str, limit: int = 80) -> str:
    """A context value quoted in an error, cut so that the message stays one line."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def check_cli_region(config: TokexConfig, cli_region: str | None) -> None:
    """A `regions` of one Region leaves the stack as the single-Region one, byte for byte
    and so not pinned to a Region: it goes wherever the CDK CLI deploys
    (`CDK_DEFAULT_REGION`, which the CLI sets from its profile). Refuse a synth whose CLI
    would put it anywhere but the Region named, and publishedKeyArns keys of another
    Region than the CLI's (the functions' KMS client reads its own Region only), and a
    CLI Region outside the aws partition or without CloudFront standard logs; without a
    CLI Region there is no check."""
    if len(config.regions) == 1 and cli_region and cli_region != config.regions[0]:
        raise ConfigError(
            f"regions names {config.regions[0]} only, but the CDK CLI deploys to"
            f" {cli_region}: deploy with {config.regions[0]} as the CLI's Region"
            " (AWS_REGION or the profile's), or leave regions out"
        )
    if cli_region and not config.regions:
        refuse_region_outside_stack_partition(cli_region, "the CDK CLI's Region")
        refuse_region_without_standard_logs(cli_region, "the CDK CLI's Region")
        refuse_keys_outside(cli_region, "where the CDK CLI deploys", published_key_regions(config))


def refuse_region_outside_stack_partition(region: str, which: str) -> None:
    """ConfigError if the stack would be in a Region outside the aws partition (`which`
    Region it is, in words): its CloudFront distribution exists in aws only."""
    partition = identifiers.partition_of_region(region)
    if partition != STACK_PARTITION:
        where = f"the {partition} partition" if partition else "no partition tokex serves"
        raise ConfigError(
            f"{which}, {region}, is in {where}, not {STACK_PARTITION}: the stack's CloudFront"
            f" distribution deploys in {STACK_PARTITION} only; {_SERVE_OTHER_PARTITIONS}"
        )


def refuse_arn_outside_stack_partition(key: str, arn: str) -> None:
    """ConfigError if context `key`'s ARN is not of its own Region's partition, or not of
    the stack's (aws): either way, the stack could not use it, and only a deploy would
    say so. `arn` has already matched its key's pattern (a served partition, a Region)."""
    fields = arn.split(":")
    partition, region = fields[1], fields[3]
    own = identifiers.partition_of_region(region)
    if partition != own:
        where = f"in the {own} partition" if own else "in no partition tokex serves"
        raise ConfigError(
            f"{key}: {arn!r} is an {partition} ARN, but its Region, {region}, is {where}"
        )
    if partition != STACK_PARTITION:
        raise ConfigError(
            f"{key}: {arn!r} is in the {partition} partition, not {STACK_PARTITION}, the"
            f" stack's: {_SERVE_OTHER_PARTITIONS}"
        )


def refuse_region_without_standard_logs(region: str, which: str) -> None:
    """ConfigError if the stack, and so its access-log bucket, would be in a Region
    CloudFront delivers no standard logs to (`which` Region it is, in words)."""
    if region in NO_CLOUDFRONT_STANDARD_LOGS_REGIONS:
        raise ConfigError(
            f"{which}, {region}, cannot hold the stack: CloudFront delivers no standard logs"
            f' to a bucket in {region} (Amazon CloudFront Developer Guide, "Choosing an'
            " Amazon S3 bucket for your standard logs\"), and they are where each client's IP"
            ' is recorded (docs/deploy.md, "What the stack builds"). Deploy it to another'
            f" Region; in a multi-Region deployment, {region} can be one of the other Regions"
        )


def published_key_regions(config: TokexConfig) -> set[str]:
    """The Regions of the publishedKeyArns keys (an ARN's fourth field)."""
    return {arn.split(":")[3] for arn in config.published_key_arns}


def refuse_keys_outside(region: str, which: str, key_regions: set[str]) -> None:
    """ConfigError naming the publishedKeyArns Regions other than `region` (`which`
    Region it is, in words), if any: the functions read keys with their Region's KMS."""
    if elsewhere := key_regions - {region}:
        raise ConfigError(
            f"publishedKeyArns: every key must be in {region}, {which}, not"
            f" {', '.join(sorted(elsewhere))}: the functions read them with their Region's KMS"
        )


# The keys `from_context` reads: docs/deploy.md "Context options".
CONTEXT_KEYS = frozenset(
    {
        "stackName",
        "signingKeySpec",
        "signingKeys",
        "activeSigningKey",
        "domainName",
        "certificateArn",
        "stsPartitions",
        "stsRegions",
        "ttlCapSeconds",
        "defaultTtlSeconds",
        "throttleRateLimit",
        "throttleBurstLimit",
        "rateLimitPerMinute",
        "logLevel",
        "tracing",
        "deployNonce",
        "webAclArn",
        "publishedKeyArns",
        "instanceTagsRoleName",
        "instanceTagsAccounts",
        "trustedIssuers",
        "regions",
        "originSecretGeneration",
        "logRetentionDays",
        "requireSignedAudience",
    }
)
# A key that could be meant as an option of tokex's (one word of letters, digits and `_`,
# any case: `requireAudience`, `waf_acl_arn`, `TTL_CAP`). CDK's own keys and feature flags
# have `@` or `:` in them (`@aws-cdk/...`, `aws:cdk:...`, the lookups of cdk.context.json),
# or dashes (`acknowledged-issue-numbers`): they pass unless they spell one of tokex's options.
_OPTION_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _spelling(key: str) -> str:
    """A key as a reader sees it: case, `_`, `-`, spaces and the like ignored."""
    return re.sub(r"[^a-z0-9]", "", key.lower())


def _refuse_unknown_keys(node: Node, known: frozenset[str]) -> None:
    """A misspelt option would otherwise be dropped without a word, and its default used:
    `instanceTagAccounts` (no s), `InstanceTagsAccounts` or `instance_tags_accounts` left
    the tag role assumable in every account, and `stsRegion` accepted every Region."""
    spelled = {_spelling(option): option for option in known}
    for key in sorted(node.get_all_context()):
        if key in known or key.startswith("@") or ":" in key:
            continue
        close = difflib.get_close_matches(_spelling(key), spelled, n=1, cutoff=0.85)
        if not close and not _OPTION_SHAPE.fullmatch(key):
            continue  # CDK's or another tool's, and nothing like an option of tokex's
        hint = f" (did you mean {spelled[close[0]]}?)" if close else ""
        raise ConfigError(f"{key!r} is not a tokex context option{hint}: docs/deploy.md lists them")
