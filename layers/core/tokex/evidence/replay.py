"""Optional single use of accepted signed requests (security.md).

A SigV4 signature stays valid for its whole date window, so anyone who sees a signed
request (a log, a proxy) could exchange it again. With single use on, the SHA-256 of each
accepted signature is written with a conditional put; a second use inside the window is
refused. DynamoDB's TTL removes the record once the window has passed.
"""

from __future__ import annotations

import hashlib
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tokex.errors import InvalidGrant, TemporarilyUnavailable
from tokex.evidence.sigv4_request import MAX_AGE, MAX_SKEW_FUTURE, StsRequest


class DynamoDbReplayGuard:
    def __init__(self, dynamodb_client: Any, table_name: str) -> None:
        self._dynamodb = dynamodb_client
        self._table = table_name

    def use_once(self, request: StsRequest) -> None:
        digest = hashlib.sha256(request.signature.encode("ascii")).hexdigest()
        expires_at = int((request.amz_date + MAX_AGE + MAX_SKEW_FUTURE).timestamp())
        try:
            self._dynamodb.put_item(
                TableName=self._table,
                Item={"id": {"S": f"sig#{digest}"}, "expires_at": {"N": str(expires_at)}},
                ConditionExpression="attribute_not_exists(id)",
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise InvalidGrant(
                    "this signed request was already used; sign a new one for each exchange",
                    reason="replay",
                ) from None
            raise TemporarilyUnavailable(
                "the replay store is unavailable", reason="replay_store_error"
            ) from None
        except BotoCoreError:
            raise TemporarilyUnavailable(
                "the replay store is unavailable", reason="replay_store_unreachable"
            ) from None


def create_state_table(dynamodb_client: Any, table_name: str) -> None:
    """The state table, for local mode and tests (the CDK app defines the deployed one):
    key `id` (S), TTL attribute `expires_at` (N, epoch seconds)."""
    dynamodb_client.create_table(
        TableName=table_name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
