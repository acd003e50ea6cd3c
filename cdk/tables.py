"""The one way tokex makes a DynamoDB table: what both of its tables need."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct


def retained_table(
    scope: Construct, construct_id: str, *, time_to_live_attribute: str | None = None
) -> dynamodb.TableV2:
    """Key `id` (S), on demand, point-in-time recovery, encrypted, deletion-protected and
    kept when the stack is deleted: both tables hold operator data (policies, clients).

    TableV2 (AWS::DynamoDB::GlobalTable): replicas can be added later to run tokex in
    several regions with the same data.
    """
    return dynamodb.TableV2(
        scope,
        construct_id,
        partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
        time_to_live_attribute=time_to_live_attribute,
        billing=dynamodb.Billing.on_demand(),
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        encryption=dynamodb.TableEncryptionV2.aws_managed_key(),
        deletion_protection=True,
        removal_policy=RemovalPolicy.RETAIN,
    )
