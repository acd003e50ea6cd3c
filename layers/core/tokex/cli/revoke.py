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
from tokex.cli.deployment import check_ttl_seconds
from tokex.cli.errors import UsageError
from tokex.cli.inputs import whole_number
from tokex.cli.state_table import resolve_state_table, state_table_parent, store_error

# The longest lifetime any deployment allows: a record kept this long outlives every token
# it can match, whatever the deployment's own cap.
from tokex.policy.model import MAX_TTL_CAP_SECONDS

JTI = re.compile(r"[\x21-\x7e]{1,256}")


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
        default=MAX_TTL_CAP_SECONDS,
        metavar="SECONDS",
        help="the deployment's TTL cap: how long the record is kept "
        f"(default {MAX_TTL_CAP_SECONDS}, the largest any deployment allows)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokex.adapters.state_table.revocations import RevocationStore
    from tokex.errors import TemporarilyUnavailable

    check_ttl_seconds(args.ttl_cap, "--ttl-cap")
    if args.principal is not None:
        _check_principal(args.principal)
    elif not JTI.fullmatch(args.jti):
        raise UsageError(
            "--jti: must be 1-256 printable ASCII characters (the token's jti claim)",
            input="--jti",
        )
    dynamodb, table = resolve_state_table(args)
    store = RevocationStore(dynamodb, table, ttl_cap_seconds=args.ttl_cap)
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


def _check_principal(arn: str) -> None:
    # Tokens name the canonical principal in `sub`: a role or an IAM user, or for EKS
    # evidence the service account's `eks:…` principal (docs/contract.md "The access
    # token (RFC 9068 profile)").
    if identifiers.EKS_PRINCIPAL.fullmatch(arn):
        return
    if identifiers.PRINCIPAL_ARN.fullmatch(arn):
        head, _, name = arn.partition(":role/")
        if name and "/" in name:
            # Tokens name roles without their path (STS never reveals it): a pathed ARN
            # would revoke nothing, silently, in the middle of an incident.
            short = f"{head}:role/{name.rsplit('/', 1)[1]}"
            raise UsageError(
                f"--principal: tokens name roles without their path; use {short}",
                input="--principal",
            )
        return
    hint = ""
    if ":assumed-role/" in arn:
        hint = "; tokens name the role, not the session: use arn:aws:iam::ACCOUNT:role/NAME"
    raise UsageError(
        f"--principal {arn!r}: must be a role or IAM user ARN "
        f"(arn:aws:iam::ACCOUNT:role/NAME or arn:aws:iam::ACCOUNT:user/NAME) or an EKS "
        f"service account's principal (eks:ACCOUNT:REGION:CLUSTER:NAMESPACE:NAME){hint}",
        input="--principal",
    )


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
