"""The tokex stack: signing key, policy and state tables, issuer site, API and functions.

The issuer URL is the CloudFront distribution's https domain (or the custom domain from
context), and `/token` and `/introspect` are served by the same distribution, so the
issuer and its endpoints share one origin: TOKEX_TOKEN_ENDPOINT = issuer + "/token",
TOKEX_INTROSPECTION_ENDPOINT = issuer + "/introspect".

Why this has no dependency cycle: the distribution's API origin needs only the HTTP
API's *id* (an `AWS::ApiGatewayV2::Api`, which references nothing), never its routes or
integrations. The chain is therefore one-way:

    Api -> Distribution -> Functions (TOKEX_ISSUER) -> Integrations -> Routes

and CloudFormation creates the distribution before the functions that need its domain.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aws_cdk import App, Aws, CfnOutput, Duration, Fn, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from cdk import nag
from cdk.config import LOG_RETENTION_DAYS, MULTI_REGION_SLOTS, TokexConfig, check_cli_region
from cdk.extension_layer import ProxyExtensionLayer
from cdk.functions import RUNTIME, JwksPublication, TokexFunction
from cdk.issuer_site import INTROSPECT_PATH, TOKEN_PATH, IssuerSite
from cdk.layer_bundling import CoreLayer
from cdk.origin_secret import (
    NEXT_ORIGIN_SECRET_ENV,
    ORIGIN_HEADER,
    ORIGIN_SECRET_ENV,
    OriginSecret,
    RegionalOriginSecret,
    origin_secret_id,
    regional_origin_secret_name,
)
from cdk.policy_table import PolicyTable
from cdk.signing_key import (
    SigningKey,
    allow_published_keys_read,
    slot_alias_name,
    slot_construct_id,
)
from cdk.state_table import StateTable
from cdk.token_api import TokenApi
from tokex.regions import SERVING_REGION_ENV, regional_path

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"
# CloudWatch's periods in the enum's order (INFINITE, last, is not offered).
_RETENTION = dict(zip(LOG_RETENTION_DAYS, list(logs.RetentionDays)[:-1], strict=True))


def log_retention(config: TokexConfig) -> logs.RetentionDays:
    return _RETENTION[config.log_retention_days]


POWERTOOLS_SERVICE = "tokex"


def token_api(stack: Stack, config: TokexConfig) -> TokenApi:
    """A stack's HTTP API, as home's and every Region's is: throttled as the config says
    and access-logged."""
    return TokenApi(
        stack,
        "TokenApi",
        rate_limit=config.throttle_rate_limit,
        burst_limit=config.throttle_burst_limit,
        log_retention=log_retention(config),
    )


class TokexStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: TokexConfig, **kwargs: Any
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            stack_name=config.stack_name,
            description="tokex: AWS workload identity in, short-lived KMS-signed JWT out",
            **kwargs,
        )
        self.config = config

        # One construct per key slot; slot "a" keeps the construct id `SigningKey` every
        # stack has had (its key's logical id must never change: that would replace it).
        self.signing_keys = {
            slot: SigningKey(
                self,
                slot_construct_id(slot),
                key_spec=config.signing_key_spec,
                alias_name=slot_alias_name(config.stack_name, slot),
                multi_region=slot in MULTI_REGION_SLOTS,
                replica_regions=config.other_regions,
            )
            for slot in config.signing_keys
        }
        # The active slot: the key that signs.
        self.signing_key = self.signing_keys[config.active_key]
        # Multi-Region: replicas added in place (the tables keep their names and data).
        replicas = config.other_regions
        self.policy_table = PolicyTable(self, "PolicyTable", replica_regions=replicas)
        self.state_table = StateTable(self, "StateTable", replica_regions=replicas)
        self.token_api = token_api(self, config)
        generation = config.origin_secret_generation
        self.origin_secret = OriginSecret(self, origin_secret_id(generation))
        # The next generation's, made now and admitted by the functions from now on, so
        # that raising originSecretGeneration switches CloudFront to a secret they already
        # admit (cdk/origin_secret.py): the same construct id then, the same secret.
        self.next_origin_secret = OriginSecret(self, origin_secret_id(generation + 1))
        # The Regional APIs' door: named and replicated, so that each Regional stack
        # reads its own Region's copy by name (docs/multi-region.md "Stacks").
        self.regional_origin_secret = (
            RegionalOriginSecret(
                self,
                "RegionalOriginSecret",
                name=regional_origin_secret_name(config.stack_name, generation),
                replica_regions=config.other_regions,
            )
            if config.is_multi_region
            else None
        )
        self.issuer_site = IssuerSite(
            self,
            "IssuerSite",
            token_origin_domain=self.token_api.origin_domain,
            token_origin_headers={ORIGIN_HEADER: self.origin_secret.value},
            domain_name=config.domain_name,
            certificate_arn=config.certificate_arn,
            web_acl_arn=config.web_acl_arn,
        )
        self.issuer = self.issuer_site.issuer
        self.token_endpoint = self.issuer + TOKEN_PATH
        self.introspection_endpoint = self.issuer + INTROSPECT_PATH
        layer = CoreLayer(self, "CoreLayer", runtime=RUNTIME).layer

        key_arn = self.signing_key.key_arn
        # Published besides the signing key, for the publisher and the introspect function:
        # the stack's other slots (the next or previous key of a rotation), then the
        # publishedKeyArns keys.
        self.published_key_arns = [
            *(self.signing_keys[slot].key_arn for slot in config.inactive_keys),
            *config.published_key_arns,
        ]
        published_key_ids = Fn.join(",", self.published_key_arns) if self.published_key_arns else ""
        state_table = self.state_table.table.table_name
        ttl_cap = str(config.ttl_cap_seconds)
        base = function_base_settings(config, issuer=self.issuer, signing_key_id=key_arn)
        # Only CloudFront knows it: the API's execute-api URL is refused (tokex/edge.py).
        behind_cloudfront = {
            ORIGIN_SECRET_ENV: self.origin_secret.value,
            NEXT_ORIGIN_SECRET_ENV: self.next_origin_secret.value,
        }
        # Multi-Region: the home exchange is a Regional exchange too (its own Region's
        # evidence only, docs/security.md "Regional exchanges").
        serving = {SERVING_REGION_ENV: config.home_region} if config.is_multi_region else {}
        exchange_env = {
            **base,
            **behind_cloudfront,
            **serving,
            **exchange_settings(
                config,
                token_endpoint=self.token_endpoint,
                policy_table=self.policy_table.table.table_name,
                state_table=state_table,
            ),
        }
        self.exchange, self.introspect = endpoint_functions(
            self,
            config,
            layer=layer,
            where="",
            exchange_env=exchange_env,
            introspect_env={
                **base,
                **behind_cloudfront,
                **serving,
                **introspect_settings(published_key_ids, state_table),
            },
        )
        # A rotation switches CloudFront first: the functions get the next secret only
        # once the distribution has deployed (CloudFormation waits for that), when no
        # edge sends the secret they stop admitting.
        for function in (self.exchange, self.introspect):
            function.function.node.add_dependency(self.issuer_site.distribution)
        self.publisher = TokexFunction(
            self,
            "JwksPublisher",
            directory="jwks_publisher",
            description="tokex: publishes the JWKS and discovery documents to S3",
            layer=layer,
            environment={
                **base,
                "TOKEX_TOKEN_ENDPOINT": self.token_endpoint,
                "TOKEX_INTROSPECTION_ENDPOINT": self.introspection_endpoint,
                "TOKEX_PUBLISHED_KEY_IDS": published_key_ids,
                "TOKEX_JWKS_BUCKET": self.issuer_site.bucket.bucket_name,
                # Multi-Region: discovery lists every Region's endpoints, home first.
                **(
                    {"TOKEX_SERVED_REGIONS": ",".join(config.regions)}
                    if config.is_multi_region
                    else {}
                ),
            },
            timeout=Duration.seconds(30),
            log_retention=log_retention(config),
            tracing=config.tracing,
        )

        self.policy_table.allow_read(self.exchange.role)
        self.state_table.allow_single_use_writes(self.exchange.role)
        self.state_table.allow_rate_counting(self.exchange.role)
        if config.instance_tags_role_name:
            allow_instance_tag_lookups(self.exchange.role, config)
        allow_published_keys_read(self.introspect.role, config.published_key_arns)
        self.state_table.allow_introspection_reads(self.introspect.role)
        allow_published_keys_read(self.publisher.role, config.published_key_arns)
        # Each slot's key grants are IAM policies of their own, which the functions and
        # the roles' default policies (created with the log grants) depend on: the order
        # of a zero-downtime key switch (cdk/signing_key.py).
        grant_key_slots(self.signing_keys, config, self.exchange, self.introspect)
        for signing_key in self.signing_keys.values():
            signing_key.allow_public_key_read(self.publisher.role, self.publisher.function)
        self.issuer_site.allow_publishing(self.publisher.role)
        self.token_api.add_token_route(self.exchange.function)
        self.token_api.add_introspect_route(self.introspect.function)
        if config.is_multi_region:
            # The home Region at its own path too: `/regions/<home>/token`, `/introspect`.
            assert config.home_region is not None
            self.token_api.add_regional_routes(
                config.home_region, self.exchange.function, self.introspect.function
            )
            self.issuer_site.add_regional_behaviors(config.home_region)

        self.jwks_publication = JwksPublication(
            self,
            "JwksPublication",
            publisher=self.publisher.function,
            properties={
                "SigningKeyArn": key_arn,
                # With a pinned deployNonce, publishing or retiring a key still republishes.
                "PublishedKeyIds": published_key_ids,
                "Issuer": self.issuer,
                # A new value on every synth makes CloudFormation send an Update, so the
                # publisher runs on every deploy (pin it with -c deployNonce=... if needed).
                "DeployNonce": deploy_nonce(config),
                # Discovery lists the Regions: a change of them republishes it (pinned
                # nonce or not). Absent in one Region, so that template stays as it was.
                **({"ServedRegions": ",".join(config.regions)} if config.is_multi_region else {}),
            },
            log_retention=log_retention(config),
        )

        outputs = {
            "IssuerUrl": (self.issuer, "The https issuer (iss) of every token"),
            "TokenEndpoint": (self.token_endpoint, "POST RFC 8693 token exchange here"),
            "IntrospectionEndpoint": (
                self.introspection_endpoint,
                "POST RFC 7662 token introspection here (HTTP Basic: tokex clients add)",
            ),
            "JwksUrl": (self.issuer + "/.well-known/jwks.json", "The issuer's JWKS"),
            "PolicyTableName": (self.policy_table.table.table_name, "tokex policy table"),
            "StateTableName": (
                state_table,
                "tokex state table: introspection clients, revocations, single use",
            ),
            "SigningKeyArn": (key_arn, "The KMS key that signs tokens (activeSigningKey)"),
            "DefaultTtlSeconds": (
                str(config.default_ttl_seconds),
                "Token lifetime when the policy sets none",
            ),
            "TtlCapSeconds": (ttl_cap, "No token lives longer (also Kong's maximum_expiration)"),
            "ExchangeRoleArn": (
                self.exchange.role.role_arn,
                "The exchange's role: what instance-tag roles in other accounts trust",
            ),
            "DistributionDomainName": (
                self.issuer_site.distribution.distribution_domain_name,
                "Point the custom domain's DNS (CNAME/alias) here",
            ),
            "DistributionId": (
                self.issuer_site.distribution.distribution_id,
                "The issuer's CloudFront distribution: invalidate /.well-known/* after an"
                " emergency key rotation",
            ),
        }
        # For workloads, not for the stack's own functions: the tokex proxy as a Lambda
        # extension for Python functions (cdk/extension_layer.py).
        self.proxy_extension_layer = ProxyExtensionLayer.of(self)
        outputs["ProxyExtensionLayerArn"] = (
            self.proxy_extension_layer.layer_version_arn,
            "The tokex proxy Lambda extension layer: Python 3.11-3.13 functions, arm64 or x86_64",
        )
        if config.is_multi_region:
            outputs["RegionalTokenEndpoints"] = (
                Fn.join(
                    ",",
                    [self.issuer + regional_path(region, TOKEN_PATH) for region in config.regions],
                ),
                "Each Region's token endpoint, home first (also in the discovery document)",
            )
        if self.published_key_arns:
            # Omitted rather than empty when there is none.
            outputs["PublishedKeyArns"] = (
                published_key_ids,
                "KMS keys published besides the signing key: the other key slot, then"
                " publishedKeyArns (comma-separated)",
            )
        for output_id, (value, description) in outputs.items():
            CfnOutput(self, output_id, value=value, description=description)

        nag.acknowledge_findings(self)


def endpoint_functions(
    scope: Construct,
    config: TokexConfig,
    *,
    layer: lambda_.ILayerVersion,
    where: str,
    path_prefix: str = "",
    exchange_env: dict[str, str],
    introspect_env: dict[str, str],
) -> tuple[TokexFunction, TokexFunction]:
    """The exchange and introspect functions of a Region (`where`: "" for home, " in
    <region>" for a Regional stack, whose paths start with `path_prefix`), with the
    construct ids every stack has had."""
    exchange = TokexFunction(
        scope,
        "Exchange",
        directory="exchange",
        description=f"tokex token exchange{where}: POST {path_prefix}/token",
        layer=layer,
        environment=exchange_env,
        timeout=Duration.seconds(10),
        log_retention=log_retention(config),
        tracing=config.tracing,
    )
    introspect = TokexFunction(
        scope,
        "Introspect",
        directory="introspect",
        description=(f"tokex token introspection (RFC 7662){where}: POST {path_prefix}/introspect"),
        layer=layer,
        environment=introspect_env,
        timeout=Duration.seconds(10),
        log_retention=log_retention(config),
        tracing=config.tracing,
    )
    return exchange, introspect


def grant_key_slots(
    signing_keys: dict[str, SigningKey],
    config: TokexConfig,
    exchange: TokexFunction,
    introspect: TokexFunction,
) -> None:
    """The active slot signs for the exchange; every slot is verified by introspection.
    Each slot's grants are IAM policies of their own, which the functions and the roles'
    default policies (created with the log grants) depend on: the order of a zero-downtime
    key switch (cdk/signing_key.py)."""
    for slot, signing_key in signing_keys.items():
        if slot == config.active_key:
            signing_key.allow_signing(exchange.role, exchange.function)
        else:
            signing_key.sign_only_after(exchange.function)
        signing_key.allow_verification(introspect.role, introspect.function)


def introspect_settings(published_key_ids: str, state_table: str) -> dict[str, str]:
    """The introspect function's own environment (besides function_base_settings)."""
    return {
        "TOKEX_PUBLISHED_KEY_IDS": published_key_ids,
        "TOKEX_STATE_TABLE": state_table,
    }


def function_base_settings(
    config: TokexConfig, *, issuer: str, signing_key_id: str
) -> dict[str, str]:
    """What every function of every Region has in its environment."""
    return {
        "TOKEX_ISSUER": issuer,
        "TOKEX_SIGNING_KEY_ID": signing_key_id,
        # Every function's settings hold the two together, and the introspect function
        # refuses tokens living longer than the exchange's cap: one pair for all (given to
        # the exchange and introspection alone, a cap under the default TTL's own default,
        # 900, failed every cold start of introspection).
        "TOKEX_TTL_CAP_SECONDS": str(config.ttl_cap_seconds),
        "TOKEX_DEFAULT_TTL_SECONDS": str(config.default_ttl_seconds),
        "POWERTOOLS_SERVICE_NAME": POWERTOOLS_SERVICE,
        "POWERTOOLS_METRICS_NAMESPACE": POWERTOOLS_SERVICE,
        # Every metric's `stack` dimension (tokex_functions/http_endpoint.py): stacks
        # sharing an account and Region keep their metrics, and alarms, apart.
        "TOKEX_STACK_NAME": config.stack_name,
        # Never put events (subject tokens, client secrets, tokens to introspect) or
        # responses (access tokens, claims) in logs/traces.
        "POWERTOOLS_LOGGER_LOG_EVENT": "false",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        "LOG_LEVEL": config.log_level,
    }


def exchange_settings(
    config: TokexConfig, *, token_endpoint: str, policy_table: str, state_table: str
) -> dict[str, str]:
    """The exchange's own environment, the same in every Region (besides the issuer's,
    the origin gate's and the serving Region's)."""
    env = {
        "TOKEX_TOKEN_ENDPOINT": token_endpoint,
        "TOKEX_POLICY_TABLE": policy_table,
        # Single use of accepted signed requests (TOKEX_SINGLE_USE) and the per-caller
        # rate limit (TOKEX_RATE_LIMIT_PER_MINUTE, 60) are on by default.
        "TOKEX_STATE_TABLE": state_table,
        "TOKEX_STS_PARTITIONS": ",".join(config.sts_partitions),
        "TOKEX_RATE_LIMIT_PER_MINUTE": str(config.rate_limit_per_minute),
    }
    if config.sts_regions:
        env["TOKEX_STS_REGIONS"] = ",".join(config.sts_regions)
    if config.require_signed_audience:  # absent: off, and the template is unchanged
        env["TOKEX_REQUIRE_SIGNED_AUDIENCE"] = "true"
    if config.instance_tags_role_name:
        env["TOKEX_INSTANCE_TAGS_ROLE_NAME"] = config.instance_tags_role_name
    if config.trusted_issuers:
        # JWT evidence (docs/deploy.md "JWT evidence: trusted issuers"). No IAM grant goes
        # with it: the exchange fetches each issuer's JWKS over plain HTTPS.
        env["TOKEX_TRUSTED_ISSUERS"] = config.trusted_issuers.to_json()
    return env


def instance_tags_role_arns(config: TokexConfig) -> list[str]:
    """The roles the exchange may assume to read instance tags: the named role in each
    listed account, or in any account (`*`) when none is listed."""
    assert config.instance_tags_role_name
    accounts = list(dict.fromkeys(config.instance_tags_accounts)) or ["*"]
    return [
        f"arn:{Aws.PARTITION}:iam::{account}:role/{config.instance_tags_role_name}"
        for account in accounts
    ]


def allow_instance_tag_lookups(role: iam.IRole, config: TokexConfig) -> None:
    """sts:AssumeRole on the instance-tags role (tokex/adapters/ec2.py), nothing else:
    what the assumed role may do is decided by each target account (ec2:DescribeInstances)."""
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid="AssumeInstanceTagsRole",
            actions=["sts:AssumeRole"],
            resources=instance_tags_role_arns(config),
        )
    )


def deploy_nonce(config: TokexConfig) -> str:
    """The context's `deployNonce`, or the synth time to the microsecond."""
    return config.deploy_nonce or datetime.now(UTC).isoformat(timespec="microseconds")


def project_context() -> dict[str, Any]:
    """`cdk.json`'s context (options and feature flags).

    The CDK CLI passes it to the app itself; reading it here too makes `python app.py` and
    the tests synthesize exactly what `cdk synth` does (the CLI's values still win).
    """
    cdk_json = json.loads(CDK_JSON.read_text(encoding="utf-8"))
    return dict(cdk_json.get("context", {}))


def build_app(
    *,
    context: dict[str, Any] | None = None,
    post_cli_context: dict[str, Any] | None = None,
    outdir: str | None = None,
) -> tuple[App, TokexStack]:
    """The CDK app with cdk-nag's AWS Solutions checks: unacknowledged findings fail synth.

    `context` overrides `cdk.json` (tests use it the way an operator uses `-c key=value`);
    the CDK CLI's own context (`CDK_CONTEXT_JSON`) overrides both. `post_cli_context`
    overrides even the CLI's: the offline switch in app.py must beat the
    `aws:cdk:bundling-stacks` value the CLI always sends.
    """
    app = App(
        context={**project_context(), **(context or {})},
        post_cli_context=post_cli_context,
        outdir=outdir,
    )
    config = TokexConfig.from_context(app.node)
    check_cli_region(config, os.environ.get("CDK_DEFAULT_REGION"))
    if not config.is_multi_region:
        stack = TokexStack(app, config.stack_name, config=config)
    else:
        # Imported here: a single-Region synth never loads the Regional stacks.
        from cdk.regional_stacks import add_regions

        stack = add_regions(app, config)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack
