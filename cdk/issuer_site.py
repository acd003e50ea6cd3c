"""The https issuer: a private S3 bucket behind CloudFront (origin access control).

The bucket holds only `/.well-known/jwks.json` and `/.well-known/openid-configuration`,
written by the JWKS publisher. The token and introspection endpoints are served from the
same distribution (`/token`, `/introspect` → the HTTP API), so the issuer and its
endpoints share one origin.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from tokex.publish import DISCOVERY_KEY, JWKS_KEY
from tokex.regions import regional_path

TOKEN_PATH = "/token"
INTROSPECT_PATH = "/introspect"
# Paths CloudFront sends to the HTTP API, each with the same uncached, https-only behaviour.
API_PATHS = (TOKEN_PATH, INTROSPECT_PATH)


class IssuerSite(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        token_origin_domain: str,
        token_origin_headers: dict[str, str],
        domain_name: str | None = None,
        certificate_arn: str | None = None,
        web_acl_arn: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)

        # Access logs of the issuer bucket and of CloudFront. CloudFront standard logging
        # writes with ACLs, so this bucket (and only this one) keeps ACLs enabled. It is in
        # the stack's Region, which the config refuses where CloudFront delivers no standard
        # logs (NO_CLOUDFRONT_STANDARD_LOGS_REGIONS).
        self.log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365))],
            removal_policy=RemovalPolicy.RETAIN,
        )

        self.bucket = s3.Bucket(
            self,
            "Documents",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="s3/",
            lifecycle_rules=[
                s3.LifecycleRule(noncurrent_version_expiration=Duration.days(90)),
            ],
            # The published keys are what verifiers trust; never delete them with the stack.
            removal_policy=RemovalPolicy.RETAIN,
        )

        certificate = (
            acm.Certificate.from_certificate_arn(self, "Certificate", certificate_arn)
            if certificate_arn
            else None
        )
        api_origin = self.api_origin = api_origin_for(token_origin_domain, token_origin_headers)
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="tokex issuer, token and introspection endpoints",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_origin_access_control(
                    self.bucket,
                    origin_access_levels=[cloudfront.AccessLevel.READ],
                ),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS,
                compress=True,
            ),
            additional_behaviors={path: _api_behavior(api_origin) for path in API_PATHS},
            domain_names=[domain_name] if domain_name else None,
            certificate=certificate,
            # Only a custom certificate lets us raise the TLS floor; the default
            # *.cloudfront.net certificate's policy is fixed by CloudFront.
            minimum_protocol_version=(
                cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021 if certificate else None
            ),
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            enable_logging=True,
            log_bucket=self.log_bucket,
            log_file_prefix="cloudfront/",
            web_acl_id=web_acl_arn,
        )
        self.issuer = (
            f"https://{domain_name}"
            if domain_name
            else f"https://{self.distribution.distribution_domain_name}"
        )

    def add_regional_behaviors(
        self,
        region: str,
        *,
        origin_domain: str | None = None,
        origin_headers: dict[str, str] | None = None,
    ) -> None:
        """`/regions/<region>/token` and `.../introspect` → that Region's API (the home
        API when no origin is given), with the same behaviour as `/token`. CloudFront
        forwards the path whole; the Regional API has routes for it."""
        origin = (
            self.api_origin
            if origin_domain is None
            else api_origin_for(origin_domain, origin_headers or {})
        )
        for path in API_PATHS:
            self.distribution.add_behavior(
                regional_path(region, path), origin, **_api_behavior_options()
            )

    def allow_publishing(self, role: iam.IRole) -> None:
        """The publisher: read and write the two issuer documents, nothing else."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="PublishIssuerDocuments",
                # GetObject also authorizes HeadObject (the publisher skips unchanged writes).
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[self.bucket.arn_for_objects(key) for key in (JWKS_KEY, DISCOVERY_KEY)],
            )
        )


def api_origin_for(domain: str, headers: dict[str, str]) -> cloudfront.IOrigin:
    return origins.HttpOrigin(
        domain,
        protocol_policy=cloudfront.OriginProtocolPolicy.HTTPS_ONLY,
        origin_ssl_protocols=[cloudfront.OriginSslPolicy.TLS_V1_2],
        # The one door (cdk/origin_secret.py): how the functions know CloudFront sent it.
        custom_headers=headers,
    )


def _api_behavior(api_origin: cloudfront.IOrigin) -> cloudfront.BehaviorOptions:
    return cloudfront.BehaviorOptions(origin=api_origin, **_api_behavior_options())


def _api_behavior_options() -> dict[str, Any]:
    """`/token` and `/introspect`: every request reaches the API, whole and over https.

    Caching disabled + ALL_VIEWER_EXCEPT_HOST_HEADER forwards every viewer header but
    Host, including `Authorization` (introspection's HTTP Basic client credentials):
    CloudFront lets an origin request policy forward Authorization only when caching is
    disabled, which is what this behaviour must be anyway.
    """
    return dict(
        # A POST must never be answered with a redirect to https: by then the signed
        # request (or the client secret) has crossed the network in clear. Refuse http.
        viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
        allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
        cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
        origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
        response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS,
        # Token and introspection responses are small; not compressing them rules out
        # compression side channels (BREACH-style) on a secret-bearing body.
        compress=False,
    )
