"""The DynamoDB table of policies (one item per policy; see docs/deploy.md for the shape)."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

# What the exchange may do with the table: read policies, nothing else. Writes come from
# operators (`tokex policy put`) with their own credentials.
EXCHANGE_READ_ACTIONS = ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"]


class PolicyTable(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        # TableV2 (AWS::DynamoDB::GlobalTable): replicas can be added later to run tokex
        # in several regions with the same policies (architecture.md, "Scale past one region").
        self.table = dynamodb.TableV2(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing=dynamodb.Billing.on_demand(),
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryptionV2.aws_managed_key(),
            deletion_protection=True,
            # Policies are operator data: deleting the stack must not delete them.
            removal_policy=RemovalPolicy.RETAIN,
        )

    def allow_read(self, role: iam.IRole) -> None:
        """Exact actions on this table's ARN only (no indexes, streams or other tables)."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadPolicies",
                actions=EXCHANGE_READ_ACTIONS,
                resources=[self.table.table_arn],
            )
        )
