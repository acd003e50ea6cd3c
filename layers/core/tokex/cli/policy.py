"""`tokex policy`: manage a deployment's policies, and explain its decisions.

`put`, `get`, `list` and `delete` work on the policy table (policy/store.py, the same
module the exchange reads with); `validate` is offline; `explain` runs the exchange's own
evaluation (policy/evaluate.py `explain`, which `evaluate` is built on) for a principal and
audience without issuing anything. Exit codes: 0 done, 1 AWS or runtime failure, 2 usage
error or invalid policy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokex.cli.deployment import Deployment, add_deployment_arguments, resolve_deployment
from tokex.cli.main import CommandError
from tokex.policy.model import MAX_TTL_CAP_SECONDS, MIN_TTL_SECONDS, Policy, PolicyValidationError
from tokex.settings import DEFAULT_TTL_CAP_SECONDS
from tokex.strict_json import StrictJsonError, loads_strict

# DynamoDB's item size limit: no valid policy document is larger.
MAX_DOCUMENT_FILE_BYTES = 400 * 1024
# Store failures (their `reason` carries the operation and error code) -> what to check.
_HINTS = {
    "ResourceNotFoundException": "no such table in this region?",
    "AccessDenied": "do these credentials allow it?",
    "NoCredentialsError": "no AWS credentials found",
    "UnrecognizedClientException": "credentials not valid for this endpoint",
    "InvalidSignatureException": "credentials not valid for this endpoint",
    "EndpointConnectionError": "endpoint unreachable",
}


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
    get = _command(commands, "get", run_get, "print a stored policy document")
    get.add_argument("policy_id", metavar="ID")
    _command(commands, "list", run_list, "list the stored policies")
    delete = _command(commands, "delete", run_delete, "delete a policy (exit 1 if absent)")
    delete.add_argument("policy_id", metavar="ID")
    validate = _command(
        commands, "validate", run_validate, "check a policy document offline", deployment=False
    )
    validate.add_argument("file", metavar="FILE", help="the policy document (JSON), - for stdin")
    _ttl_cap_argument(validate)

    explain = _command(
        commands,
        "explain",
        run_explain,
        "show which policy would decide an exchange, and why (issues nothing)",
    )
    # Imported here: policy_explain imports this module.
    from tokex.cli.policy_explain import add_explain_arguments

    add_explain_arguments(explain)
    explain.add_argument(
        "--ttl-cap",
        type=int,
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
        type=int,
        default=DEFAULT_TTL_CAP_SECONDS,
        metavar="S",
        help=f"the deployment's TTL cap (default {DEFAULT_TTL_CAP_SECONDS})",
    )


def run_validate(args: argparse.Namespace) -> int:
    _check_ttl_cap(args.ttl_cap)
    try:
        policy = load_policy_file(args.file, ttl_cap=args.ttl_cap)
    except PolicyValidationError as exc:
        if not args.json:
            raise CommandError(f"invalid policy {args.file}: {exc}", exit_code=2) from None
        _print_json({"valid": False, "field": exc.field, "message": exc.message})
        return 2
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
    _check_ttl_cap(args.ttl_cap)
    try:
        policy = load_policy_file(args.file, ttl_cap=args.ttl_cap)
    except PolicyValidationError as exc:
        raise CommandError(f"invalid policy {args.file}: {exc}", exit_code=2) from None
    _warn(policy_warnings(policy))
    deployment = resolve_deployment(args)
    with policy_table(deployment) as store:
        store.put(policy)
    print(json.dumps({"id": policy.id}) if args.json else policy.id)
    return 0


def run_get(args: argparse.Namespace) -> int:
    deployment = resolve_deployment(args)
    with policy_table(deployment) as store:
        try:
            policy = store.get(args.policy_id)
        except PolicyValidationError as exc:
            raise CommandError(
                f"stored policy {args.policy_id!r} is invalid ({exc}); the exchange skips it"
            ) from None
    if policy is None:
        raise CommandError(f"no policy {args.policy_id!r} in table {deployment.table}")
    _print_json(policy.to_document())
    return 0


def run_list(args: argparse.Namespace) -> int:
    deployment = resolve_deployment(args)
    with policy_table(deployment) as store:
        policies, invalid = store.load_all()
    if args.json:
        documents = [p.to_document() for p in policies]
        _print_json({"table": deployment.table, "policies": documents, "invalid": invalid})
        return 0
    if invalid:
        _warn([f"invalid documents, skipped by the exchange: {', '.join(invalid)}"])
    if not policies:
        print(f"no policies in table {deployment.table}")
        return 0
    rows = [("ID", "EFFECT", "ENABLED", "PRINCIPALS", "AUDIENCES")]
    rows += [
        (
            p.id,
            p.effect,
            "yes" if p.enabled else "no",
            ",".join(p.principals),
            ",".join(p.audiences),
        )
        for p in policies
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    return 0


def run_delete(args: argparse.Namespace) -> int:
    deployment = resolve_deployment(args)
    with policy_table(deployment) as store:
        existed = store.delete(args.policy_id)
    if not existed:
        raise CommandError(f"no policy {args.policy_id!r} in table {deployment.table}")
    print(json.dumps({"id": args.policy_id, "deleted": True}) if args.json else args.policy_id)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from tokex.cli.policy_explain import explain_command

    return explain_command(args)


@contextlib.contextmanager
def policy_table(deployment: Deployment) -> Iterator[Any]:
    """A PolicyStore on the deployment's table; store failures become CommandErrors."""
    from tokex.errors import TemporarilyUnavailable
    from tokex.policy.store import PolicyStore

    try:
        yield PolicyStore(deployment.client("dynamodb"), deployment.table)
    except TemporarilyUnavailable as exc:
        # The store's `reason` names the operation and the AWS error code (never data).
        hint = next((h for code, h in _HINTS.items() if code in exc.reason), None)
        message = f"policy table {deployment.table!r}: {exc.reason}"
        raise CommandError(f"{message} ({hint})" if hint else message) from None


def load_policy_file(path: str, *, ttl_cap: int) -> Policy:
    """Read and validate one policy document; PolicyValidationError names field and why."""
    text = read_text(path, "policy document", MAX_DOCUMENT_FILE_BYTES)
    try:
        document = loads_strict(text)
    except StrictJsonError as exc:
        raise PolicyValidationError("document", str(exc)) from None
    return Policy.from_document(document, ttl_cap=ttl_cap)


def policy_warnings(policy: Policy) -> list[str]:
    """Valid, but probably not what the author meant."""
    warnings = []
    if not policy.enabled:
        warnings.append("enabled is false: the exchange ignores this policy")
    return warnings


def read_text(path: str, label: str, limit: int) -> str:
    """A UTF-8 file (or stdin for `-`), exact text, at most `limit` bytes."""
    try:
        raw = sys.stdin.buffer.read(limit + 1) if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {label} {path}: {exc.strerror}", exit_code=2) from None
    if len(raw) > limit:
        raise CommandError(f"{label} {path} is larger than {limit} bytes", exit_code=2)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"{label} {path} is not UTF-8 text", exit_code=2) from None


def _check_ttl_cap(ttl_cap: int) -> None:
    if not MIN_TTL_SECONDS <= ttl_cap <= MAX_TTL_CAP_SECONDS:
        raise CommandError(
            f"--ttl-cap must be {MIN_TTL_SECONDS}..{MAX_TTL_CAP_SECONDS}", exit_code=2
        )


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"tokex policy: warning: {warning}", file=sys.stderr)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
