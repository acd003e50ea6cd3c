"""The CLI's access to a deployment's policy table: a PolicyStore whose failures become
CommandErrors with a hint (used by `tokex policy` and `tokex policy explain`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tokex.cli.deployment import Deployment, aws_hint
from tokex.cli.errors import AWS_ERROR, CommandError


@contextlib.contextmanager
def policy_table(deployment: Deployment) -> Iterator[Any]:
    """A PolicyStore on the deployment's table; store failures become CommandErrors."""
    from tokex.adapters.policy_table import PolicyStore
    from tokex.errors import TemporarilyUnavailable

    try:
        yield PolicyStore(deployment.client("dynamodb"), deployment.table)
    except TemporarilyUnavailable as exc:
        # The store's `reason` names the operation and the AWS error code (never data).
        hint = aws_hint(exc.reason)
        message = f"policy table {deployment.table!r}: {exc.reason}"
        raise CommandError(
            f"{message} ({hint})" if hint else message, error=AWS_ERROR, input=deployment.flag
        ) from None
