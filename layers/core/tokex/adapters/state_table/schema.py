"""The state table's schema, defined once: one DynamoDB table, key `id` (S), TTL
attribute `expires_at` (N, epoch seconds), several kinds of record told apart by the
prefix of their key. The CDK app defines the deployed table with the same key and TTL
attribute (cdk/); `create_state_table` makes it for local mode and tests.

| record                                 | written by              | expires               |
|----------------------------------------|-------------------------|-----------------------|
| `sig#<sha256 of the evidence>`         | admission (single use)  | when no copy verifies |
| `rate#[<region>#]<principal>#<minute>` | admission (rate limit)  | a window after its own |
| `client#<client id>`                   | introspection_clients   | never (until removed) |
| `revoked-jti#<jti>`                    | revocations             | past the TTL cap      |
| `revoked-principal#<arn>` (folded)     | revocations             | past the TTL cap      |

The evidence of `sig#` is a SigV4 signature or an AWS OIF token's issuer and `jti`
(evidence/replay.py `UsedEvidence`, whose `expires_at` is the record's); `<region>#` is
a Regional exchange's (admission.py).
"""

from __future__ import annotations

from typing import Any

KEY_ATTRIBUTE = "id"
TTL_ATTRIBUTE = "expires_at"

USED_EVIDENCE_PREFIX = "sig#"
# The key holds a principal ARN: at most ~620 characters (an IAM user under a 512-character
# path), far inside DynamoDB's 2048-byte partition key; the item stays under 1 KB.
RATE_PREFIX = "rate#"
CLIENT_PREFIX = "client#"
REVOKED_JTI_PREFIX = "revoked-jti#"
REVOKED_PRINCIPAL_PREFIX = "revoked-principal#"


def used_evidence_key(evidence_digest: str) -> str:
    """`sig#` + 64 hex characters (evidence/replay.py `UsedEvidence.digest`: a SigV4
    signature's, or an AWS OIF token's issuer and `jti`): ~150 bytes, whatever the request."""
    return USED_EVIDENCE_PREFIX + evidence_digest


def rate_key(principal: str, window_number: int) -> str:
    return f"{RATE_PREFIX}{principal}#{window_number}"


def client_key(client_id: str) -> str:
    return CLIENT_PREFIX + client_id


def revoked_jti_key(jti: str) -> str:
    return REVOKED_JTI_PREFIX + jti


def revoked_principal_key(principal: str) -> str:
    """IAM names are unique in an account whatever their case, and a user's whatever its
    path, so a role or user ARN is keyed in lower case and a user without its path: a
    revocation typed in another case, or without the path STS reports in the token's
    `sub` (`user/ops/bob`), must not revoke nothing, silently. An EKS principal is kept as
    it is (its cluster name is case-sensitive)."""
    if not principal.startswith("arn:"):
        return REVOKED_PRINCIPAL_PREFIX + principal
    head, user, name = principal.lower().partition(":user/")
    return REVOKED_PRINCIPAL_PREFIX + head + user + (name.rsplit("/", 1)[-1] if user else "")


def pathed_revoked_principal_key(principal: str) -> str:
    """The key of a revocation written before users' paths were left out of keys. Read
    until such records have expired (TTL cap plus margin after the upgrade)."""
    return REVOKED_PRINCIPAL_PREFIX + (
        principal.lower() if principal.startswith("arn:") else principal
    )


def legacy_revoked_principal_key(principal: str) -> str:
    """The key of a revocation written before keys were folded: the ARN as typed. Read
    until such records have expired (TTL cap plus margin after the upgrade)."""
    return REVOKED_PRINCIPAL_PREFIX + principal


def key(value: str) -> dict[str, Any]:
    """The DynamoDB `Key` of the record whose `id` is `value`."""
    return {KEY_ATTRIBUTE: {"S": value}}


def create_state_table(dynamodb_client: Any, table_name: str) -> None:
    """The state table, for local mode and tests (the CDK app defines the deployed one)."""
    dynamodb_client.create_table(
        TableName=table_name,
        KeySchema=[{"AttributeName": KEY_ATTRIBUTE, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": KEY_ATTRIBUTE, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    # As the deployed table has it (cdk/state_table.py): what the CLI tells the state
    # table from the policy table by (cli/deployment.py `check_table_kind`).
    dynamodb_client.update_time_to_live(
        TableName=table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
    )
