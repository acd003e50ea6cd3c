"""The DynamoDB table of policies (one item per policy; see docs/deploy.md for the shape)."""

from __future__ import annotations

from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk.tables import retained_table

# What the exchange may do with the table: read policies, nothing else. Writes come from
# operators (`tokex policy put`) with their own credentials.
EXCHANGE_READ_ACTIONS = ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"]


class PolicyTable(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.table = retained_table(self, "Table")

    def allow_read(self, role: iam.IRole) -> None:
        """Exact actions on this table's ARN only (no indexes, streams or other tables)."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadPolicies",
                actions=EXCHANGE_READ_ACTIONS,
                resources=[self.table.table_arn],
            )
        )
