"""The tokex stack: signing key, policy table, issuer site, token API and functions.

The issuer URL is the CloudFront distribution's https domain (or the custom domain from
context), and `/token` is served by the same distribution, so the issuer and the token
endpoint share one origin: TOKEX_TOKEN_ENDPOINT = issuer + "/token".

Why this has no dependency cycle: the distribution's `/token` origin needs only the HTTP
API's *id* (an `AWS::ApiGatewayV2::Api`, which references nothing), never its routes or
integration. The chain is therefore one-way:

    Api -> Distribution -> exchange Function (TOKEX_ISSUER) -> Integration -> Route

and CloudFormation creates the distribution before the functions that need its domain.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aws_cdk import App, CfnOutput, Duration, Stack, Validations
from aws_cdk import aws_logs as logs
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from cdk import nag
from cdk.config import TokexConfig
from cdk.functions import RUNTIME, JwksPublication, TokexFunction
from cdk.issuer_site import TOKEN_PATH, IssuerSite
from cdk.layer_bundling import CoreLayer
from cdk.policy_table import PolicyTable
from cdk.signing_key import SigningKey
from cdk.token_api import TokenApi

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"
LOG_RETENTION = logs.RetentionDays.ONE_MONTH
POWERTOOLS_SERVICE = "tokex"


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

        self.signing_key = SigningKey(
            self,
            "SigningKey",
            key_spec=config.signing_key_spec,
            alias_name=f"alias/tokex/{config.stack_name}/signing",
        )
        self.policy_table = PolicyTable(self, "PolicyTable")
        self.token_api = TokenApi(
            self,
            "TokenApi",
            rate_limit=config.throttle_rate_limit,
            burst_limit=config.throttle_burst_limit,
            log_retention=LOG_RETENTION,
        )
        self.issuer_site = IssuerSite(
            self,
            "IssuerSite",
            token_origin_domain=self.token_api.origin_domain,
            domain_name=config.domain_name,
            certificate_arn=config.certificate_arn,
            web_acl_arn=config.web_acl_arn,
        )
        self.issuer = self.issuer_site.issuer
        self.token_endpoint = self.issuer + TOKEN_PATH
        layer = CoreLayer(self, "CoreLayer", runtime=RUNTIME).layer

        key_arn = self.signing_key.key.key_arn
        common = {
            "TOKEX_ISSUER": self.issuer,
            "TOKEX_SIGNING_KEY_ID": key_arn,
            "TOKEX_TOKEN_ENDPOINT": self.token_endpoint,
            "POWERTOOLS_SERVICE_NAME": POWERTOOLS_SERVICE,
            "POWERTOOLS_METRICS_NAMESPACE": POWERTOOLS_SERVICE,
            # Never put events (subject tokens) or responses (access tokens) in logs/traces.
            "POWERTOOLS_LOGGER_LOG_EVENT": "false",
            "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
            "LOG_LEVEL": config.log_level,
        }
        exchange_env = {
            **common,
            "TOKEX_POLICY_TABLE": self.policy_table.table.table_name,
            "TOKEX_STS_PARTITIONS": ",".join(config.sts_partitions),
            "TOKEX_TTL_CAP_SECONDS": str(config.ttl_cap_seconds),
            "TOKEX_DEFAULT_TTL_SECONDS": str(config.default_ttl_seconds),
        }
        if config.sts_regions:
            exchange_env["TOKEX_STS_REGIONS"] = ",".join(config.sts_regions)
        self.exchange = TokexFunction(
            self,
            "Exchange",
            directory="exchange",
            description="tokex token exchange: POST /token",
            layer=layer,
            environment=exchange_env,
            timeout=Duration.seconds(10),
            log_retention=LOG_RETENTION,
        )
        self.publisher = TokexFunction(
            self,
            "JwksPublisher",
            directory="jwks_publisher",
            description="tokex: publishes the JWKS and discovery documents to S3",
            layer=layer,
            environment={**common, "TOKEX_JWKS_BUCKET": self.issuer_site.bucket.bucket_name},
            timeout=Duration.seconds(30),
            log_retention=LOG_RETENTION,
        )

        self.signing_key.allow_signing(self.exchange.role)
        self.policy_table.allow_read(self.exchange.role)
        self.signing_key.allow_public_key_read(self.publisher.role)
        self.issuer_site.allow_publishing(self.publisher.role)
        self.token_api.add_token_route(self.exchange.function)

        self.jwks_publication = JwksPublication(
            self,
            "JwksPublication",
            publisher=self.publisher.function,
            properties={
                "SigningKeyArn": key_arn,
                "Issuer": self.issuer,
                # A new value on every synth makes CloudFormation send an Update, so the
                # publisher runs on every deploy (pin it with -c deployNonce=... if needed).
                "DeployNonce": deploy_nonce(config),
            },
            log_retention=LOG_RETENTION,
        )

        outputs = {
            "IssuerUrl": (self.issuer, "The https issuer (iss) of every token"),
            "TokenEndpoint": (self.token_endpoint, "POST RFC 8693 token exchange here"),
            "JwksUrl": (self.issuer + "/.well-known/jwks.json", "The issuer's JWKS"),
            "PolicyTableName": (self.policy_table.table.table_name, "tokex policy table"),
            "SigningKeyArn": (key_arn, "The KMS key that signs tokens"),
            "DistributionDomainName": (
                self.issuer_site.distribution.distribution_domain_name,
                "Point the custom domain's DNS (CNAME/alias) here",
            ),
        }
        for output_id, (value, description) in outputs.items():
            CfnOutput(self, output_id, value=value, description=description)

        nag.acknowledge_findings(self)


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
    *, context: dict[str, Any] | None = None, outdir: str | None = None
) -> tuple[App, TokexStack]:
    """The CDK app with cdk-nag's AWS Solutions checks: unacknowledged findings fail synth.

    `context` overrides `cdk.json` (tests use it the way an operator uses `-c key=value`).
    """
    app = App(context={**project_context(), **(context or {})}, outdir=outdir)
    config = TokexConfig.from_context(app.node)
    stack = TokexStack(app, config.stack_name, config=config)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack
