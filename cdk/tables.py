"""The one way tokex makes a DynamoDB table: what both of its tables need."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct


def retained_table(
    scope: Construct,
    construct_id: str,
    *,
    time_to_live_attribute: str | None = None,
    replica_regions: Sequence[str] = (),
) -> dynamodb.TableV2:
    """Key `id` (S), on demand, point-in-time recovery, encrypted, deletion-protected and
    kept when the stack is deleted: both tables hold operator data (policies, clients).

    TableV2 (AWS::DynamoDB::GlobalTable): `replica_regions` are added in place, the table
    keeps its name and data (docs/multi-region.md). Replicas inherit the table's settings
    (PITR, deletion protection, encryption); the consistency is the default multi-Region
    eventual consistency (why: docs/multi-region.md "Replication, single use and revocation").
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
        replicas=[dynamodb.ReplicaTableProps(region=region) for region in replica_regions] or None,
    )


def table_arn_in(scope: Construct, table_name: str, region: str) -> str:
    """The ARN of a global table's replica in `region` (same name in every Region)."""
    return Stack.of(scope).format_arn(
        service="dynamodb", region=region, resource="table", resource_name=table_name
    )
