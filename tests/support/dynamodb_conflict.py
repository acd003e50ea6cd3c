"""A DynamoDB client whose first transactions are cancelled as DynamoDB cancels one that
raced another on the same item (`TransactionConflict`): for the writers that try again."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError


class ConflictingOnce:
    """The DynamoDB client, but its first `conflicts` transactions are cancelled for a
    conflict (nothing of them applied); everything else is the client's own."""

    def __init__(self, client: Any, conflicts: int = 1) -> None:
        self._client = client
        self.conflicts = conflicts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def transact_write_items(self, **request: Any) -> Any:
        if self.conflicts:
            self.conflicts -= 1
            reasons = [{"Code": "None"}, {"Code": "TransactionConflict"}]
            error = {"Error": {"Code": "TransactionCanceledException", "Message": "conflict"}}
            raise ClientError({**error, "CancellationReasons": reasons}, "TransactWriteItems")
        return self._client.transact_write_items(**request)
