"""`tokex revoke --jti ID | --principal ARN`: introspection answers `active: false` for
the token with that `jti`, or for every token of that principal issued up to now.

    tokex revoke --jti 3q2-7wX... --stack tokex
    tokex revoke --principal arn:aws:iam::123456789012:role/orders --stack tokex
    tokex revoke --principal eks:123456789012:eu-west-1:prod:orders:api --stack tokex

Only relying parties that introspect (or otherwise consult tokex) see a revocation; a
gateway that checks signatures offline (Kong `jwt`, `openid-connect` without
introspection) accepts the token until it expires. Revoking a principal does not stop it
from getting new tokens: write a deny policy for that.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime
from typing import Any

from tokex import identifiers
from tokex.cli.deployment import (
    STATE_TABLE_OUTPUT,
    Deployment,
    check_ttl_seconds,
    resolve_deployment,
)
from tokex.cli.errors import FAILED, CommandError, UsageError
from tokex.cli.inputs import whole_number
from tokex.cli.principal_arn import principal_problem
from tokex.cli.state_table import state_table_parent, store_error

# The longest lifetime any deployment allows: a record kept this long outlives every token
# it can match, whatever the deployment's own cap.
from tokex.policy.model import MAX_TTL_CAP_SECONDS

JTI = re.compile(r"[\x21-\x7e]{1,256}")
# The stack's output (cdk/tokex_stack.py, cdk/regional_stacks.py): its exchange's TTL cap.
TTL_CAP_OUTPUT = "TtlCapSeconds"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "revoke",
        parents=[state_table_parent()],
        help="revoke a token (by jti) or every token of a principal",
        description="Record a revocation in the deployment's state table. Introspection "
        "answers active: false for matching tokens from the next call on.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--jti", metavar="ID", help="the token's jti claim")
    what.add_argument(
        "--principal",
        metavar="ARN",
        help="a role or user ARN, or an EKS service account's eks:... principal (the "
        "tokens' sub): revokes all its tokens issued up to now",
    )
    parser.add_argument(
        "--ttl-cap",
        type=whole_number,
        default=None,
        metavar="SECONDS",
        help=f"how long the record is kept (default {MAX_TTL_CAP_SECONDS}, the longest any "
        f"deployment allows; with --stack, never less than its {TTL_CAP_OUTPUT} output)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokex.adapters.state_table.revocations import RevocationStore
    from tokex.errors import TemporarilyUnavailable

    if args.ttl_cap is not None:
        check_ttl_seconds(args.ttl_cap, "--ttl-cap")
    if args.principal is not None:
        _check_principal(args.principal)
    elif not JTI.fullmatch(args.jti):
        raise UsageError(
            "--jti: must be 1-256 printable ASCII characters (the token's jti claim)",
            input="--jti",
        )
    deployment = resolve_deployment(args, output=STATE_TABLE_OUTPUT)
    ttl_cap = _ttl_cap(args.ttl_cap, deployment)
    store = RevocationStore(
        deployment.client("dynamodb"), deployment.table, ttl_cap_seconds=ttl_cap
    )
    try:
        if args.principal is not None:
            revocation = store.revoke_principal(args.principal)
        else:
            revocation = store.revoke_jti(args.jti)
    except TemporarilyUnavailable as exc:
        raise store_error(exc, args) from None
    revoked_at = _iso(revocation.revoked_at)
    if args.json:
        print(
            json.dumps(
                {
                    revocation.kind: revocation.value,
                    "revoked_at": revocation.revoked_at,
                    "expires_at": revocation.expires_at,
                }
            )
        )
    elif revocation.kind == "principal":
        print(f"revoked every token of {revocation.value} issued at or before {revoked_at}")
    else:
        print(f"revoked token {revocation.value} ({revoked_at})")
    return 0


def _ttl_cap(given: int | None, deployment: Deployment) -> int:
    """How long the record is kept: by default the longest any deployment allows, which
    also outlives tokens issued before the deployment's cap was lowered. A shorter
    --ttl-cap may not undercut the --stack's own cap: DynamoDB's TTL would delete the
    record while a token it revokes is still valid, and introspection accept that token
    again. (A --table names no cap to check against.)"""
    if given is None:
        return MAX_TTL_CAP_SECONDS
    if not deployment.stack:
        return given
    cap = deployment.stack_seconds(TTL_CAP_OUTPUT)
    if given < cap:
        raise CommandError(
            f"--ttl-cap {given}: below the TTL cap of stack {deployment.stack} ({cap} s, its "
            f"{TTL_CAP_OUTPUT} output): the record would expire before the tokens it revokes; "
            "leave --ttl-cap out to keep it for the longest any deployment allows",
            error=FAILED,
            input="--ttl-cap",
        )
    return given


def _check_principal(arn: str) -> None:
    # Tokens name the canonical principal in `sub`: a role or an IAM user, or for EKS
    # evidence the service account's `eks:…` principal (docs/contract.md "The access
    # token (RFC 9068 profile)"). Only a name IAM can give is one: any other ARN matches no
    # token, and its revocation would report success while every token stays active.
    if identifiers.EKS_PRINCIPAL.fullmatch(arn) or identifiers.USER_ARN.fullmatch(arn):
        return
    if role := identifiers.ROLE_ARN.fullmatch(arn):
        partition, account, path, name = role.groups()
        if path:
            # Tokens name roles without their path (STS never reveals it): a pathed ARN
            # would revoke nothing, silently, in the middle of an incident.
            raise UsageError(
                f"--principal: tokens name roles without their path; use "
                f"arn:{partition}:iam::{account}:role/{name}",
                input="--principal",
            )
        return
    if "*" in arn or "?" in arn:  # a policy's glob (docs/policies.md "Globs")
        raise UsageError(
            f"--principal {arn!r}: revocation takes one exact principal, not a pattern: "
            "`tokex policy list` shows who matches",
            input="--principal",
        )
    why = ""
    if ":assumed-role/" in arn:
        why = "; tokens name the role, not the session: use arn:aws:iam::ACCOUNT:role/NAME"
    elif arn.startswith("arn:"):
        why = f"; {principal_problem(arn)}"  # which part IAM would not have
    raise UsageError(
        f"--principal {arn!r}: must be a role or IAM user ARN "
        f"(arn:aws:iam::ACCOUNT:role/NAME or arn:aws:iam::ACCOUNT:user/NAME) or an EKS "
        f"service account's principal (eks:ACCOUNT:REGION:CLUSTER:NAMESPACE:NAME){why}",
        input="--principal",
    )


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
