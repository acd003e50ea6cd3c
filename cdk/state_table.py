"""The DynamoDB table of tokex's state: key `id` (S), TTL attribute `expires_at` (N).

Three kinds of item share it, each written by one party only:

- `sig#<sha256>`: the exchange records each signed request that got past STS (single
  use), with `expires_at` = the end of the signature's window, its `admission` id and,
  when a failure of tokex's own upstreams gave the request back, `released_at`. Nobody
  reads them back: a conditional write refuses the second use.
- `rate#<principal>#<minute>`: the exchange counts each caller's exchanges per minute;
  they expire after two minutes.

Both are written by tokex/adapters/state_table/admission.py in one `TransactWriteItems`
per exchange (a transaction is authorised item by item as the PutItem and UpdateItem it
holds, so the grants below are all it needs).
- `client#<id>`: introspection clients, written by operators (`tokex clients add`), read
  by the introspect function. No `expires_at`: kept until removed.
- `revoked-jti#...`, `revoked-principal#...`: revocations, written by operators
  (`tokex revoke`), read by the introspect function; they expire after the TTL cap.

Introspection clients live here, so the table is retained like the policy table.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk.tables import retained_table
from tokex.adapters.state_table import schema

# The schema is the runtime's (tokex/adapters/state_table/schema.py): one definition.
TTL_ATTRIBUTE = schema.TTL_ATTRIBUTE
# tokex/adapters/state_table/admission.py writes `sig#<hex sha-256>` items (single use),
# and nothing else.
SINGLE_USE_KEY_PATTERN = schema.USED_EVIDENCE_PREFIX + "*"
# The same admission write counts in `rate#<principal>#<window>` items, and nothing else.
RATE_COUNTER_KEY_PATTERN = schema.RATE_PREFIX + "*"
# What introspection reads: its clients (GetItem) and revocations (BatchGetItem), and only
# those items: not the single-use records nor the rate counters.
INTROSPECT_READ_ACTIONS = ["dynamodb:BatchGetItem", "dynamodb:GetItem"]
INTROSPECT_READ_KEY_PATTERNS = [
    prefix + "*"
    for prefix in (
        schema.CLIENT_PREFIX,
        schema.REVOKED_JTI_PREFIX,
        schema.REVOKED_PRINCIPAL_PREFIX,
    )
]


class StateTable(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, replica_regions: Sequence[str] = ()
    ) -> None:
        super().__init__(scope, construct_id)
        # It holds the introspection clients (operator data): kept like the policy table.
        self.table = retained_table(
            self, "Table", time_to_live_attribute=TTL_ATTRIBUTE, replica_regions=replica_regions
        )

    def allow_single_use_writes(self, role: iam.IRole) -> None:
        allow_single_use_writes(role, self.table.table_arn)

    def allow_rate_counting(self, role: iam.IRole) -> None:
        allow_rate_counting(role, self.table.table_arn)

    def allow_introspection_reads(self, role: iam.IRole) -> None:
        allow_introspection_reads(role, self.table.table_arn)


# The grants take the table's ARN: a Regional exchange is granted its own Region's replica.


def allow_single_use_writes(role: iam.IRole, table_arn: str) -> None:
    """The exchange: conditional puts of `sig#...` items, nothing else."""
    _allow_writes_to(
        role, table_arn, "RecordSignatureUse", "dynamodb:PutItem", SINGLE_USE_KEY_PATTERN
    )


def allow_rate_counting(role: iam.IRole, table_arn: str) -> None:
    """The exchange: atomic counters in `rate#...` items, nothing else."""
    _allow_writes_to(
        role, table_arn, "CountCallerExchanges", "dynamodb:UpdateItem", RATE_COUNTER_KEY_PATTERN
    )


def _allow_writes_to(
    role: iam.IRole, table_arn: str, sid: str, action: str, key_pattern: str
) -> None:
    """`action` on the items whose key matches `key_pattern` only.

    `dynamodb:LeadingKeys` is the partition key of the item written; with the condition
    the exchange cannot create, overwrite or shadow a client or a revocation item, even if
    its code were made to try. (ForAllValues over the one key a write has; StringLike for
    the prefix.)
    """
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid=sid,
            actions=[action],
            resources=[table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [key_pattern]}},
        )
    )


def allow_introspection_reads(role: iam.IRole, table_arn: str) -> None:
    """The introspect function: read clients and revocations; never write."""
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid="ReadClientsAndRevocations",
            actions=INTROSPECT_READ_ACTIONS,
            resources=[table_arn],
            conditions={
                "ForAllValues:StringLike": {"dynamodb:LeadingKeys": INTROSPECT_READ_KEY_PATTERNS}
            },
        )
    )
