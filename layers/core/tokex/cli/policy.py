"""`tokex policy`: manage a deployment's policies, and explain its decisions.

`put`, `get`, `list` and `delete` work on the policy table (adapters/policy_table.py, the same
module the exchange reads with); `validate` is offline; `explain` runs the exchange's own
evaluation (policy/evaluate.py `explain`, which `evaluate` is built on) for a principal and
audience without issuing anything. Exit codes (cli/errors.py): 0 done, 1 an invalid policy,
an absent id, a policy no longer at the `--if-revision` read (`put`, `delete`: it changed
since) or an AWS failure, 2 a usage error.

`get` shows the policy's revision (the count of its writes, adapters/policy_table.py) beside
the document, which stays what `put` takes; `put --if-revision N` and `delete --if-revision
N` write only if the stored policy is still at revision N, so that an edit of what `get`
showed cannot undo a change made since. Without the flag the last write wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tokex.cli.deployment import (
    Deployment,
    add_deployment_arguments,
    check_deployment,
    check_ttl_seconds,
    resolve_deployment,
)
from tokex.cli.errors import (
    INVALID_INPUT,
    INVALID_POLICY,
    NOT_FOUND,
    CommandError,
    UsageError,
    escaped,
    printable_json,
)
from tokex.cli.inputs import require_file, whole_number
from tokex.cli.policy_document import load_policy_file
from tokex.cli.policy_explain import add_explain_arguments, explain_command
from tokex.cli.policy_table import policy_table
from tokex.evidence.identity import AWS_OIF, SIGV4
from tokex.policy.model import Policy, PolicyValidationError
from tokex.settings import DEFAULT_TTL_CAP_SECONDS


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "policy",
        help="manage a deployment's policies",
        description="Put, read, list, delete and validate policy documents (docs/policies.md), "
        "and explain which policy decides an exchange.",
    )
    commands = parser.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    put = _command(commands, "put", run_put, "validate a policy document, then write it")
    put.add_argument("file", metavar="FILE", help="the policy document (JSON), - for stdin")
    _ttl_cap_argument(put)
    _if_revision_argument(put, "write", "0: only if there is no such policy yet")
    get = _command(
        commands, "get", run_get, "print a stored policy document (its revision on stderr)"
    )
    get.add_argument("policy_id", metavar="ID", help="the policy's id")
    _command(commands, "list", run_list, "list the stored policies")
    delete = _command(commands, "delete", run_delete, "delete a policy (exit 1 if absent)")
    delete.add_argument("policy_id", metavar="ID", help="the policy's id")
    _if_revision_argument(delete, "delete", "0: only one written before revisions")
    validate = _command(
        commands,
        "validate",
        run_validate,
        "check a policy document offline (every error in it)",
        deployment=False,
    )
    validate.add_argument("file", metavar="FILE", help="the policy document (JSON), - for stdin")
    _ttl_cap_argument(validate)

    explain = _command(
        commands,
        "explain",
        run_explain,
        "show which policy would decide an exchange, and why (issues nothing)",
    )
    add_explain_arguments(explain)
    explain.add_argument(
        "--ttl-cap",
        type=whole_number,
        default=None,
        metavar="S",
        help="the deployment's TTL cap (default: the --stack's TtlCapSeconds output, else "
        f"{DEFAULT_TTL_CAP_SECONDS})",
    )


def _command(
    commands: Any, name: str, func: Any, summary: str, *, deployment: bool = True
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=summary, description=summary)
    if deployment:
        add_deployment_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=func)
    return parser


def _ttl_cap_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ttl-cap",
        type=whole_number,
        default=DEFAULT_TTL_CAP_SECONDS,
        metavar="S",
        help=f"the deployment's TTL cap (default {DEFAULT_TTL_CAP_SECONDS})",
    )


# DynamoDB's numbers have 38 digits of precision: a revision is one of them.
MAX_REVISION = 10**38 - 1


def _if_revision_argument(parser: argparse.ArgumentParser, verb: str, zero: str) -> None:
    parser.add_argument(
        "--if-revision",
        type=whole_number,
        default=None,
        metavar="N",
        help=f"{verb} only if the stored policy is still at revision N, as `get` showed it "
        f"({zero}); else exit 1, nothing written: how to avoid undoing a change made since "
        "you read it (without it, the last write wins)",
    )


def _check_revision(revision: int | None) -> None:
    if revision is not None and not 0 <= revision <= MAX_REVISION:
        raise UsageError(
            f"--if-revision {revision}: must be 0..{MAX_REVISION} (a revision `tokex policy "
            "get` showed, 0 for none)",
            input="--if-revision",
        )


def run_validate(args: argparse.Namespace) -> int:
    check_ttl_seconds(args.ttl_cap, "--ttl-cap")
    require_file(args.file, label="policy document", stdin=True)
    policy = load_policy_file(args.file, ttl_cap=args.ttl_cap)
    warnings = policy_warnings(policy)
    if args.json:
        result = {"valid": True, "id": policy.id, "warnings": warnings}
        _print_json({**result, "document": policy.to_document()})
        return 0
    _warn(warnings)
    state = "" if policy.enabled else ", disabled"
    print(f"valid: {policy.id} ({policy.effect}{state})")
    return 0


def run_put(args: argparse.Namespace) -> int:
    check_ttl_seconds(args.ttl_cap, "--ttl-cap")
    _check_revision(args.if_revision)
    require_file(args.file, label="policy document", stdin=True)
    check_deployment(args)
    policy = load_policy_file(args.file, ttl_cap=args.ttl_cap)
    warnings = policy_warnings(policy)
    if not args.json:  # with --json they are part of the answer (stderr stays empty)
        _warn(warnings)
    deployment = resolve_deployment(args)
    with policy_table(deployment) as store:
        if args.if_revision is None:
            store.put(policy)  # the last write wins
        else:
            store.put(policy, if_revision=args.if_revision)
    print(json.dumps({"id": policy.id, "warnings": warnings}) if args.json else policy.id)
    return 0


# DynamoDB's limit on a partition key: a string key is 1-2048 bytes of UTF-8.
MAX_KEY_BYTES = 2048


def _check_key(policy_id: str) -> None:
    """An id the table could hold (exit 2 before any AWS call otherwise). Not only the ids
    `policy put` writes (POLICY_ID): an item written by other means, under an id such as
    "orders api", may make every exchange answer 503, and `get` and `delete` are how
    `policy list` says to mend that."""
    try:
        size = len(policy_id.encode("utf-8"))
    except UnicodeEncodeError:  # command-line bytes that are not UTF-8
        size = 0
    if not 0 < size <= MAX_KEY_BYTES:
        raise UsageError(
            f"policy id {policy_id!r}: must be 1-{MAX_KEY_BYTES} bytes of UTF-8 text "
            "(a DynamoDB key)",
            input=policy_id or "ID",
        )


def run_get(args: argparse.Namespace) -> int:
    _check_key(args.policy_id)
    deployment = resolve_deployment(args)
    with policy_table(deployment) as store:
        try:
            stored = store.get_stored(args.policy_id)
        except PolicyValidationError as exc:
            raise CommandError(
                f"stored policy {args.policy_id!r} is invalid ({exc}); {exc.consequence}",
                error=INVALID_INPUT,
                input=args.policy_id,
            ) from None
    if stored is None:
        raise _absent(args.policy_id, deployment)
    document = stored.policy.to_document()
    if args.json:  # one object: the document, and its revision (remove it before `put`)
        _print_json({**document, "revision": stored.revision})
        return 0
    # stdout is the document alone, as `put` takes it back.
    _print_json(document)
    print(
        f"tokex policy: {escaped(args.policy_id)} is at revision {stored.revision} "
        f"(put --if-revision {stored.revision} writes only if it still is)",
        file=sys.stderr,
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    deployment = resolve_deployment(args)
    with policy_table(deployment) as store:
        # Every policy as stored and every invalid item, even of a table that blocks
        # every exchange: an operator sees all there is to fix at once.
        inventory = store.inventory()
    policies = inventory.policies
    listing = {
        "table": deployment.table,
        "policies": [p.to_document() for p in policies],
        "invalid": list(inventory.invalid),
        "consequences": inventory.invalid,
        "revisions": inventory.revisions,  # of every item, valid or not
    }
    # A table that stops every exchange is listed whole, and the command fails after it.
    blocking = ", ".join(map(escaped, inventory.blocking))
    blocked = (
        CommandError(
            f"policy table {deployment.table!r}: {blocking} make every exchange answer 503"
            " until each is fixed or deleted (tokex policy get/delete)",
            error=INVALID_POLICY,
            input=deployment.flag,
            details=listing,
        )
        if inventory.blocking
        else None
    )
    if args.json:
        if blocked is not None:
            raise blocked
        _print_json(listing)
        return 0
    _warn([f"invalid document {key}: {what}" for key, what in inventory.invalid.items()])
    if policies:
        _print_table(policies, inventory.revisions)
    else:
        print(f"no policies in table {deployment.table}")
    if blocked is not None:
        raise blocked
    return 0


def _print_table(policies: list[Policy], revisions: dict[str, int]) -> None:
    rows = [("ID", "EFFECT", "ENABLED", "REVISION", "PRINCIPALS", "AUDIENCES")]
    rows += [
        (
            p.id,
            p.effect,
            "yes" if p.enabled else "no",
            str(revisions.get(p.id, 0)),
            ",".join(_principal_cells(p)),
            ",".join(p.audiences),
        )
        for p in policies
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def run_delete(args: argparse.Namespace) -> int:
    _check_key(args.policy_id)
    _check_revision(args.if_revision)
    deployment = resolve_deployment(args)
    with policy_table(deployment) as store:
        if args.if_revision is None:
            existed = store.delete(args.policy_id)
        else:
            existed = store.delete(args.policy_id, if_revision=args.if_revision)
    if not existed:
        raise _absent(args.policy_id, deployment)
    if args.json:
        print(json.dumps({"id": args.policy_id, "deleted": True}))
    else:
        print(escaped(args.policy_id))
    return 0


def run_explain(args: argparse.Namespace) -> int:
    return explain_command(args)


def _absent(policy_id: str, deployment: Deployment) -> CommandError:
    return CommandError(
        f"no policy {policy_id!r} in table {deployment.table} (`tokex policy list` shows the ids)",
        error=NOT_FOUND,
        input=policy_id,
    )


def _principal_cells(policy: Policy) -> list[str]:
    """The principal patterns, then the EKS selectors as one `eks:` pattern (`|`: or)."""
    cells = list(policy.principals)
    if policy.eks is not None:
        parts = (policy.eks.clusters, policy.eks.namespaces, policy.eks.service_accounts)
        cells.append(":".join(("eks", *("|".join(part) for part in parts))))
    return cells


def policy_warnings(policy: Policy) -> list[str]:
    """Valid, but probably not what the author meant."""
    warnings = []
    if not policy.enabled:
        warnings.append("enabled is false: the exchange ignores this policy")
    if policy.workload is not None and policy.workload.request_tags:
        warnings.append(
            "workload.request_tags are chosen by the caller when it asks for its token: "
            "they select among its tokens, they prove nothing about who it is"
        )
    if policy.workload is not None and policy.workload.principal_tags:
        warnings.append(
            "workload.principal_tags are aws:PrincipalTag: when the session was tagged "
            "(sts:TagSession), its session tags replace the role's: rely on a key only if "
            "the role's trust policy lets no one pass it as a session tag"
        )
    oif_only = [
        f"workload.{name}" for name in (policy.workload.selectors() if policy.workload else {})
    ]
    oif_only += [
        f"conditions.{name}"
        for name in (policy.conditions.oif_conditions() if policy.conditions else [])
    ]
    others = [kind for kind in policy.evidence_kinds if kind != AWS_OIF]
    if oif_only and others:
        warnings.append(
            f"{', '.join(oif_only)}: only aws-oif evidence carries them, so this policy never "
            f"applies to {' or '.join(others)} callers"
        )
    # The other way round: what only a signed request (through STS) carries.
    sigv4_only = ["principal_ids"] if policy.principal_ids else []
    sigv4_only += ["instance"] if policy.instance is not None else []
    not_sigv4 = [kind for kind in policy.evidence_kinds if kind != SIGV4]
    if sigv4_only and not_sigv4:
        warnings.append(
            f"{', '.join(sigv4_only)}: only sigv4 evidence carries them, so this policy never "
            f"applies to {' or '.join(not_sigv4)} callers"
        )
    return warnings


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"tokex policy: warning: {escaped(warning)}", file=sys.stderr)


def _print_json(value: object) -> None:
    print(printable_json(value, indent=2))
