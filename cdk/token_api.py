"""The HTTP API: `POST /token` (exchange) and `POST /introspect`, throttled, access-logged."""

from __future__ import annotations

import json

import jsii
from aws_cdk import Stack
from aws_cdk import aws_apigateway as apigw_v1
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from tokex.regions import regional_path

TOKEN_ROUTE_PATH = "/token"
INTROSPECT_ROUTE_PATH = "/introspect"

# HTTP API `$context` variables (API Gateway developer guide, "Customizing HTTP API access
# logs"). No body and no header but User-Agent: the subject token carries signed AWS
# credentials, an introspection request a client secret.
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "requestTime": "$context.requestTime",
    "sourceIp": "$context.identity.sourceIp",
    "userAgent": "$context.identity.userAgent",
    "httpMethod": "$context.httpMethod",
    "path": "$context.path",
    "routeKey": "$context.routeKey",
    "status": "$context.status",
    "protocol": "$context.protocol",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationStatus": "$context.integrationStatus",
    "integrationLatency": "$context.integrationLatency",
    "integrationError": "$context.integrationErrorMessage",
}


@jsii.implements(apigw.IAccessLogSettings)
class _AccessLogSettings:
    def __init__(self, log_group: logs.ILogGroup) -> None:
        self._destination = apigw.LogGroupLogDestination(log_group)

    @property
    def destination(self) -> apigw.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw_v1.AccessLogFormat:
        return apigw_v1.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS))


class TokenApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        rate_limit: int,
        burst_limit: int,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.api = apigw.HttpApi(
            self,
            "Api",
            api_name=f"{Stack.of(self).stack_name}-token",
            description="tokex token exchange (RFC 8693) and introspection (RFC 7662)",
            create_default_stage=False,
        )
        self.access_logs = logs.LogGroup(self, "AccessLogs", retention=log_retention)
        self.stage = apigw.HttpStage(
            self,
            "DefaultStage",
            http_api=self.api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigw.ThrottleSettings(rate_limit=rate_limit, burst_limit=burst_limit),
            access_log_settings=_AccessLogSettings(self.access_logs),
        )

    @property
    def origin_domain(self) -> str:
        """The API's own host name, for CloudFront's origin (no scheme, no path)."""
        # The stack's Region: a pseudo parameter in a single-Region stack, the Regional
        # stack's own Region (a literal) when the home stack's CloudFront points at it.
        stack = Stack.of(self)
        return f"{self.api.api_id}.execute-api.{stack.region}.{stack.url_suffix}"

    def add_token_route(self, handler: lambda_.IFunction) -> None:
        """`POST /token` and `ANY /token` → the exchange."""
        self._add_post_route(TOKEN_ROUTE_PATH, "Exchange", handler)

    def add_introspect_route(self, handler: lambda_.IFunction) -> None:
        """`POST /introspect` and `ANY /introspect` → the introspect function."""
        self._add_post_route(INTROSPECT_ROUTE_PATH, "Introspect", handler)

    def add_regional_routes(
        self, region: str, exchange: lambda_.IFunction, introspect: lambda_.IFunction
    ) -> None:
        """`/regions/<region>/token` and `.../introspect` (docs/multi-region.md)."""
        add_regional_routes(self.api, region, exchange, introspect)

    def _add_post_route(self, path: str, integration_id: str, handler: lambda_.IFunction) -> None:
        """`POST <path>`, plus `ANY <path>` on the same integration so that another method
        gets the contract's 405 `invalid_request` from the function, not API Gateway's 404.
        (API Gateway picks the most specific route: POST always goes to `POST <path>`.)
        """
        add_post_route(self.api, path, integration_id, handler)


def add_post_route(
    api: apigw.IHttpApi,
    path: str,
    integration_id: str,
    handler: lambda_.IFunction,
    scope: Construct | None = None,
) -> None:
    """`POST <path>` and `ANY <path>` on one integration (see `_add_post_route`), on this
    stack's API or on a Regional API stack's (routes live with their functions)."""
    integration = integrations.HttpLambdaIntegration(
        integration_id,
        handler,
        payload_format_version=apigw.PayloadFormatVersion.VERSION_2_0,
    )
    for method in (apigw.HttpMethod.POST, apigw.HttpMethod.ANY):
        if isinstance(api, apigw.HttpApi):
            api.add_routes(path=path, methods=[method], integration=integration)
        else:
            # An imported API (a Regional API stack's): the route in `scope`, with the id
            # `add_routes` would give it (`POST--token`).
            assert scope is not None
            apigw.HttpRoute(
                scope,
                f"{method.value}{path}".replace("/", "--"),
                http_api=api,
                route_key=apigw.HttpRouteKey.with_(path, method),
                integration=integration,
            )


def add_regional_routes(
    api: apigw.IHttpApi,
    region: str,
    exchange: lambda_.IFunction,
    introspect: lambda_.IFunction,
    scope: Construct | None = None,
) -> None:
    """`/regions/<region>/token` and `.../introspect`; `scope` holds the routes of an
    imported API."""
    token_path = regional_path(region, TOKEN_ROUTE_PATH)
    add_post_route(api, token_path, "RegionalExchange", exchange, scope)
    introspect_path = regional_path(region, INTROSPECT_ROUTE_PATH)
    add_post_route(api, introspect_path, "RegionalIntrospect", introspect, scope)
