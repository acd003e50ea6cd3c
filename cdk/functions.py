"""The Lambda functions (exchange, introspect, publisher), each with its own role, and what
triggers the publisher.

Roles are created here with no managed policy: every permission a function has is a
statement added by the construct that owns the resource (signing key, tables, issuer
bucket) or, for instance tag lookups, by the stack; plus writing to its own log group
and X-Ray tracing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aws_cdk import CustomResource, Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

FUNCTIONS_DIR = Path(__file__).resolve().parent.parent / "functions"
RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCHITECTURE = lambda_.Architecture.ARM_64
HANDLER = "handler.lambda_handler"
PUBLISH_SCHEDULE = events.Schedule.rate(Duration.hours(1))


class TokexFunction(Construct):
    """One handler directory as an arm64 Python function with the core layer."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        directory: str,
        description: str,
        layer: lambda_.ILayerVersion,
        environment: Mapping[str, str],
        timeout: Duration,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"tokex {directory}: least privilege, see docs/deploy.md",
        )
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            description=description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=HANDLER,
            code=lambda_.Code.from_asset(
                str(FUNCTIONS_DIR / directory), exclude=["__pycache__", "*.pyc"]
            ),
            layers=[layer],
            role=self.role,
            memory_size=512,
            timeout=timeout,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            environment=dict(environment),
        )


class JwksPublication(Construct):
    """Runs the publisher every hour and on every deploy, so the JWKS exists when
    `cdk deploy` returns and heals within the hour if an object is removed."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        publisher: lambda_.IFunction,
        properties: Mapping[str, str],
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.schedule = events.Rule(
            self,
            "Schedule",
            description="tokex: republish the JWKS and discovery documents",
            schedule=PUBLISH_SCHEDULE,
            targets=[
                targets.LambdaFunction(
                    publisher, retry_attempts=2, max_event_age=Duration.minutes(30)
                )
            ],
        )
        # The provider framework answers CloudFormation (success or failure) for the
        # publisher, which only returns {"PhysicalResourceId": ...}.
        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=publisher,
            log_group=logs.LogGroup(self, "ProviderLogs", retention=log_retention),
        )
        self.resource = CustomResource(
            self,
            "Publish",
            service_token=self.provider.service_token,
            resource_type="Custom::TokexJwks",
            properties=dict(properties),
        )
