"""The DynamoDB table of policies (one item per policy; see docs/deploy.md for the shape)."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk.tables import retained_table
from tokex.adapters.policy_table import GENERATION_ID

# What the exchange may do with the table: read every policy (one Scan: the policy cache
# loads them all, adapters/policy_table.py), and read the generation item before and after
# it (GetItem of that one key: the Scan was one state of the table), nothing else. Writes
# come from operators (`tokex policy put`) with their own credentials.
EXCHANGE_READ_ACTIONS = ["dynamodb:Scan"]
EXCHANGE_GENERATION_ACTIONS = ["dynamodb:GetItem"]


class PolicyTable(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, replica_regions: Sequence[str] = ()
    ) -> None:
        super().__init__(scope, construct_id)
        self.table = retained_table(self, "Table", replica_regions=replica_regions)

    def allow_read(self, role: iam.IRole) -> None:
        allow_policy_reads(role, self.table.table_arn)


def allow_policy_reads(role: iam.IRole, table_arn: str) -> None:
    """Exact actions on the table's ARN only (no indexes, streams or other tables), GetItem
    of the generation item only; a Regional exchange reads its own Region's replica."""
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid="ReadPolicies",
            actions=EXCHANGE_READ_ACTIONS,
            resources=[table_arn],
        )
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid="ReadPolicyGeneration",
            actions=EXCHANGE_GENERATION_ACTIONS,
            resources=[table_arn],
            # The generation item only: no policy is read one by one.
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [GENERATION_ID]}},
        )
    )
