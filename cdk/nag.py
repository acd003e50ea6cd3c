"""cdk-nag (AwsSolutions) acknowledgments: each on the narrowest construct, with its reason.

cdk-nag 3 reads CDK's own acknowledgments (`Validations.of(scope).acknowledge`), which
apply to the construct and everything below it. Nothing here is acknowledged stack-wide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Acknowledgment, CfnElement, Stack, Validations
from constructs import IConstruct

if TYPE_CHECKING:
    from cdk.config import TokexConfig
    from cdk.regional_stacks import RegionalStack
    from cdk.tokex_stack import TokexStack

XRAY_REASON = (
    "Only X-Ray's xray:PutTraceSegments and xray:PutTelemetryRecords (added by Tracing.ACTIVE)"
    " use Resource '*': X-Ray has no resource-level permissions for them. Every other"
    " statement of this role names its resources exactly, without wildcards (tests/infra"
    " assert the exact list)."
)
RUNTIME_REASON = (
    "python3.13 is pinned on purpose (supported by Lambda until 2029): the layer is built"
    " from cp313 wheels for this exact ABI, so the runtime and the layer must move"
    " together. Upgrading is a one-line change of RUNTIME in cdk/functions.py."
)


TOKEN_ROUTE_REASON = (
    "/token is the RFC 8693 token exchange: the caller authenticates inside the"
    " request (subject_token = a SigV4-signed sts:GetCallerIdentity that the exchange"
    " verifies with STS), so an API Gateway authorizer would need the credentials the"
    " workload is exchanging for. Throttling is on at the stage; ANY only exists so"
    " other methods get the contract's 405."
)
INTROSPECT_ROUTE_REASON = (
    "/introspect authenticates its callers itself, as RFC 7662 section 2.1 requires:"
    " HTTP Basic client credentials checked against the hashed secrets of the state"
    " table before the form is read (401 invalid_client otherwise). An API Gateway"
    " authorizer would be a second copy of that check with the same table. Throttling"
    " is on at the stage; ANY only exists so other methods get the contract's 405."
)
REGIONAL_SECRET_REASON = (
    "The Regional origin secret is read by CloudFormation (dynamic references) into"
    " CloudFront's Regional origin headers and the Regional functions' environment at"
    " deploy time: an automatic rotation would change it in neither, and every Regional"
    " request would be refused until the next deploy. It is rotated by raising"
    ' originSecretGeneration in a deploy (docs/deploy.md "One door").'
)


def _acknowledge_routes(routes: IConstruct) -> None:
    """APIG4 on each `/token` and `/introspect` route (also `/regions/<r>/...`): the
    routes are the children whose ids end in `--token` or `--introspect`."""
    found = 0
    for child in routes.node.children:
        if child.node.id.endswith("--token"):
            _ack(child, "APIG4", TOKEN_ROUTE_REASON)
            found += 1
        elif child.node.id.endswith("--introspect"):
            _ack(child, "APIG4", INTROSPECT_ROUTE_REASON)
            found += 1
    assert found, f"no routes under {routes.node.path}"


def _acknowledge_tag_lookups(role: IConstruct, config: TokexConfig) -> None:
    if config.instance_tags_role_name and not config.instance_tags_accounts:
        role_name = config.instance_tags_role_name
        _ack(
            role,
            f"IAM5[Resource::arn:<AWS::Partition>:iam::*:role/{role_name}]",
            f"Instance tag lookups assume the role {role_name} in the account of the instance"
            " presenting evidence, which any account a policy names may be; only the account"
            " is a wildcard, the role name is exact. Each target account decides by the role's"
            " trust policy whether the exchange role may assume it. Set instanceTagsAccounts"
            " to replace the wildcard with exact role ARNs.",
        )


def _ack(scope: IConstruct, rule: str, reason: str) -> None:
    Validations.of(scope).acknowledge(
        Acknowledgment(id=f"AwsSolutions::AwsSolutions-{rule}", reason=reason)
    )


def _arn_token(stack: Stack, construct: IConstruct) -> str:
    """How cdk-nag writes `Fn::GetAtt <logical id>.Arn` in a finding id."""
    child = construct.node.default_child
    assert isinstance(child, CfnElement)
    return f"<{stack.get_logical_id(child)}.Arn>"


def acknowledge_findings(stack: TokexStack) -> None:
    for function in (stack.exchange, stack.introspect, stack.publisher):
        _ack(function.role, "IAM5[Resource::*]", XRAY_REASON)
        _ack(function.function, "L1", RUNTIME_REASON)

    for secret in (stack.origin_secret, stack.next_origin_secret):
        _ack(
            secret.secret,
            "SMG4",
            "The origin secret is read by CloudFormation (dynamic references) into"
            " CloudFront's origin header and the functions' environment at deploy time: an"
            " automatic rotation would change it in neither, and every request would be"
            " refused until the next deploy. It is rotated by raising originSecretGeneration"
            ' in a deploy (docs/deploy.md "One door").',
        )

    _ack(
        stack.jwks_publication.provider_role,
        f"IAM5[Resource::{_arn_token(stack, stack.publisher.function)}:*]",
        "The provider framework may invoke the JWKS publisher function and its versions"
        " (ARN:*); it is that one function and nothing else.",
    )

    _acknowledge_routes(stack.token_api.api)
    if stack.regional_origin_secret is not None:
        _ack(stack.regional_origin_secret.secret, "SMG4", REGIONAL_SECRET_REASON)

    _acknowledge_tag_lookups(stack.exchange.role, stack.config)

    distribution = stack.issuer_site.distribution
    _ack(
        distribution,
        "CFR1",
        "The issuer documents and token endpoint serve AWS workloads in any region and"
        " JWT verifiers anywhere; geo restriction would break legitimate callers.",
    )
    if stack.config.web_acl_arn is None:
        _ack(
            distribution,
            "CFR2",
            "No WAF web ACL by default (cost): /token is throttled at API Gateway and"
            " answers 4xx cheaply; set the webAclArn context to attach one (it sees only"
            " CloudFront's traffic, not requests sent to the execute-api URL).",
        )
    if stack.config.domain_name is None:
        _ack(
            distribution,
            "CFR4",
            "Without a custom domain the distribution uses the default *.cloudfront.net"
            " certificate, whose minimum TLS version CloudFront does not let us raise;"
            " with domainName/certificateArn the policy is TLSv1.2_2021.",
        )


def acknowledge_regional_findings(stack: RegionalStack) -> None:
    """A Regional stack's functions: the same reasons as the home stack's."""
    for function in (stack.exchange, stack.introspect):
        _ack(function.role, "IAM5[Resource::*]", XRAY_REASON)
        _ack(function.function, "L1", RUNTIME_REASON)
    _acknowledge_routes(stack.routes)
    _acknowledge_tag_lookups(stack.exchange.role, stack.config)
