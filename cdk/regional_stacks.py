"""A multi-Region deployment: the home stack and, per other Region, two stacks
(docs/multi-region.md "Stacks").

    <name>-<region>-Api  the Regional HTTP API (no routes)      ──┐
    <name>               the home stack, whose CloudFront sends     │ deploy order
                         /regions/<region>/... to that API        │
    <name>-<region>      the Regional exchange and introspect     ◀─┘
                         functions, their routes on that API, and
                         the signing keys' Regional replicas

The split breaks what would be a cycle between two stacks: CloudFront (home) needs the
Regional API's id, and the Regional functions need the issuer (CloudFront's domain), the
tables' names and the keys' ARNs (home). The API references nothing, so it deploys first.

Every value crosses stacks as a CloudFormation `Fn::GetStackOutput` (what CDK makes of
a reference with `crossRegionReferences`): a *weak* reference, read when the consuming
stack is created or updated, with no export lock. Strong references are not an option
across Regions (`Fn::ImportValue` is same-Region only; CDK's older SSM-parameter bridge
needs custom-resource Lambda functions in every stack), and a lock would turn every key
rotation into a deadly embrace: retiring a key slot would have to deploy the Regional
stacks before home, against the order `cdk deploy --all` uses. What weak costs: a
Regional stack sees a new value only when it is deployed, so multi-Region changes are
always deployed with `--all` (home first, then each Region: the dependencies order it),
and the values referenced (table names, key ARNs, the distribution's domain, API ids)
belong to retained or never-replaced resources. The one exception is the Regional origin
secret, read by name in each Region (cdk/origin_secret.py).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import App, CfnOutput, Environment, Stack
from aws_cdk import aws_apigatewayv2 as apigw
from constructs import Construct

from cdk import nag
from cdk.config import TokexConfig
from cdk.extension_layer import ProxyExtensionLayer
from cdk.functions import RUNTIME
from cdk.issuer_site import INTROSPECT_PATH, TOKEN_PATH
from cdk.layer_bundling import CoreLayer
from cdk.origin_secret import ORIGIN_HEADER, ORIGIN_SECRET_ENV, resolve_by_name
from cdk.policy_table import allow_policy_reads
from cdk.signing_key import SigningKey, slot_alias_name, slot_construct_id
from cdk.state_table import (
    allow_introspection_reads,
    allow_rate_counting,
    allow_single_use_writes,
)
from cdk.tables import table_arn_in
from cdk.token_api import add_regional_routes
from cdk.tokex_stack import (
    TokexStack,
    allow_instance_tag_lookups,
    endpoint_functions,
    exchange_settings,
    function_base_settings,
    grant_key_slots,
    introspect_settings,
    token_api,
)
from tokex.regions import SERVING_REGION_ENV, regional_path


def api_stack_name(config: TokexConfig, region: str) -> str:
    return f"{config.stack_name}-{region}-Api"


def regional_stack_name(config: TokexConfig, region: str) -> str:
    return f"{config.stack_name}-{region}"


def add_regions(app: App, config: TokexConfig) -> TokexStack:
    """The home stack (returned) and each other Region's two stacks."""
    assert config.home_region is not None
    apis = {
        region: RegionalApiStack(
            app,
            api_stack_name(config, region),
            config=config,
            env=Environment(region=region),
            cross_region_references=True,
        )
        for region in config.other_regions
    }
    home = TokexStack(
        app,
        config.stack_name,
        config=config,
        env=Environment(region=config.home_region),
        cross_region_references=True,
    )
    assert home.regional_origin_secret is not None
    for region, api in apis.items():
        home.issuer_site.add_regional_behaviors(
            region,
            origin_domain=api.token_api.origin_domain,
            origin_headers={ORIGIN_HEADER: home.regional_origin_secret.value},
        )
        RegionalStack(
            app,
            regional_stack_name(config, region),
            config=config,
            home=home,
            api=api,
            env=Environment(region=region),
            cross_region_references=True,
        )
    return home


class RegionalApiStack(Stack):
    """A Region's HTTP API: throttled and access-logged like the home one; its routes
    are added by the Regional stack with the functions they call."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: TokexConfig, **kwargs: Any
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            stack_name=construct_id,
            description="tokex: a Region's token API (multi-Region, docs/multi-region.md)",
            **kwargs,
        )
        self.token_api = token_api(self, config)


class RegionalStack(Stack):
    """A Region's exchange and introspect functions, behind CloudFront only, with the
    Regional replicas of the signing keys and grants on the tables' Regional replicas."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: TokexConfig,
        home: TokexStack,
        api: RegionalApiStack,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            stack_name=construct_id,
            description="tokex: a Region's exchange (multi-Region, docs/multi-region.md)",
            **kwargs,
        )
        self.config = config
        region = self.region
        # The same slots as home, each the Regional replica of home's multi-Region key.
        self.signing_keys = {
            slot: SigningKey(
                self,
                slot_construct_id(slot),
                key_spec=config.signing_key_spec,
                alias_name=slot_alias_name(config.stack_name, slot),
                primary_key_arn=home.signing_keys[slot].key_arn,
                # Were this replica made the primary, the others stay the only targets.
                replica_regions=[r for r in config.regions if r != region],
            )
            for slot in config.signing_keys
        }
        self.signing_key = self.signing_keys[config.active_key]
        published_key_ids = ",".join(
            self.signing_keys[slot].key_arn for slot in config.inactive_keys
        )
        layer = CoreLayer(self, "CoreLayer", runtime=RUNTIME).layer
        policy_table = home.policy_table.table.table_name
        state_table = home.state_table.table.table_name
        policy_table_arn = table_arn_in(self, policy_table, region)
        state_table_arn = table_arn_in(self, state_table, region)
        assert home.regional_origin_secret is not None
        regional = {
            **function_base_settings(
                config, issuer=home.issuer, signing_key_id=self.signing_key.key_arn
            ),
            ORIGIN_SECRET_ENV: resolve_by_name(home.regional_origin_secret.name),
            SERVING_REGION_ENV: region,
        }
        self.exchange, self.introspect = endpoint_functions(
            self,
            config,
            layer=layer,
            where=f" in {region}",
            path_prefix=regional_path(region, ""),
            exchange_env={
                **regional,
                **exchange_settings(
                    config,
                    token_endpoint=home.issuer + regional_path(region, TOKEN_PATH),
                    policy_table=policy_table,
                    state_table=state_table,
                ),
            },
            introspect_env={
                **regional,
                **introspect_settings(published_key_ids, state_table),
            },
        )
        allow_policy_reads(self.exchange.role, policy_table_arn)
        allow_single_use_writes(self.exchange.role, state_table_arn)
        allow_rate_counting(self.exchange.role, state_table_arn)
        if config.instance_tags_role_name:
            allow_instance_tag_lookups(self.exchange.role, config)
        allow_introspection_reads(self.introspect.role, state_table_arn)
        grant_key_slots(self.signing_keys, config, self.exchange, self.introspect)
        self.api = apigw.HttpApi.from_http_api_attributes(
            self, "TokenApi", http_api_id=api.token_api.api.api_id
        )
        self.routes = Construct(self, "Routes")
        add_regional_routes(
            self.api, region, self.exchange.function, self.introspect.function, self.routes
        )
        outputs = {
            "TokenEndpoint": (
                home.issuer + regional_path(region, TOKEN_PATH),
                f"POST RFC 8693 token exchange here, served in {region}",
            ),
            "IntrospectionEndpoint": (
                home.issuer + regional_path(region, INTROSPECT_PATH),
                f"POST RFC 7662 token introspection here, served in {region}",
            ),
            # What `tokex policy|revoke|clients --stack` read from home's outputs, so that
            # `--stack <this stack> --region <region>` writes to this Region's replicas of
            # the same global tables: operators keep working while home is down.
            "PolicyTableName": (policy_table, f"tokex policy table, replicated in {region}"),
            "StateTableName": (
                state_table,
                f"tokex state table, replicated in {region}: introspection clients,"
                " revocations, single use",
            ),
            "DefaultTtlSeconds": (
                str(config.default_ttl_seconds),
                "Token lifetime when the policy sets none",
            ),
            "TtlCapSeconds": (str(config.ttl_cap_seconds), "No token lives longer"),
            "SigningKeyArn": (
                self.signing_key.key_arn,
                f"The Regional replica of the key that signs, in {region}",
            ),
            "ExchangeRoleArn": (
                self.exchange.role.role_arn,
                f"The exchange's role in {region}: what instance-tag roles in other accounts"
                " trust, besides every other Region's",
            ),
            # Layers are Regional: the workloads of this Region take this one.
            "ProxyExtensionLayerArn": (
                ProxyExtensionLayer.of(self).layer_version_arn,
                f"The tokex proxy Lambda extension layer in {region}: Python 3.11-3.13"
                " functions, arm64 or x86_64",
            ),
        }
        for output_id, (value, description) in outputs.items():
            CfnOutput(self, output_id, value=value, description=description)
        nag.acknowledge_regional_findings(self)
