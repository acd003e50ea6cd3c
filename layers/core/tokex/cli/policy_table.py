"""The CLI's access to a deployment's policy table: a PolicyStore whose failures become
CommandErrors with a hint (used by `tokex policy` and `tokex policy explain`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tokex.cli.deployment import Deployment, aws_hint
from tokex.cli.errors import AWS_ERROR, FAILED, INVALID_POLICY, CommandError

if TYPE_CHECKING:
    from tokex.adapters.policy_table import RevisionMismatch

# The store and the cache log each invalid document, for the exchange's log; the commands
# report them themselves (one line, or in their JSON), so Python's last-resort handler
# must not print them again, unprefixed, on stderr.
for _name in ("tokex.adapters.policy_table", "tokex.policy.cache"):
    logging.getLogger(_name).addHandler(logging.NullHandler())


@contextlib.contextmanager
def policy_table(deployment: Deployment) -> Iterator[Any]:
    """A PolicyStore on the deployment's table; store failures become CommandErrors."""
    from tokex.adapters.policy_table import PoliciesBlocked, PolicyStore, RevisionMismatch
    from tokex.errors import TemporarilyUnavailable

    try:
        yield PolicyStore(deployment.client("dynamodb"), deployment.table)
    except RevisionMismatch as exc:  # `put`/`delete --if-revision`: nothing was written
        raise CommandError(
            _changed_since(exc),
            error=FAILED,
            input="--if-revision",
            details={"revision": exc.revision, "if_revision": exc.expected},
        ) from None
    except PoliciesBlocked as exc:  # no AWS failure: a document an operator must fix
        raise CommandError(
            f"policy table {deployment.table!r}: {exc.reason}",
            error=INVALID_POLICY,
            input=deployment.flag,
        ) from None
    except TemporarilyUnavailable as exc:
        # The store's `reason` names the operation and the AWS error code (never data).
        hint = aws_hint(exc.reason)
        message = f"policy table {deployment.table!r}: {exc.reason}"
        raise CommandError(
            f"{message} ({hint})" if hint else message, error=AWS_ERROR, input=deployment.flag
        ) from None


def _changed_since(mismatch: RevisionMismatch) -> str:
    """What an operator whose `--if-revision` no longer matches should do."""
    policy, expected = repr(mismatch.policy_id), mismatch.expected
    if mismatch.revision is None:
        return (
            f"policy {policy} does not exist, not at revision {expected}: it was deleted since "
            "you read it; nothing was written (put it with --if-revision 0 to create it again)"
        )
    return (
        f"policy {policy} is at revision {mismatch.revision}, not {expected}: it changed since "
        "you read it; nothing was written: get it again and re-apply your change"
    )
