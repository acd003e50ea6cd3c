"""The state table for CLI commands (`tokex clients`, `tokex revoke`): --table/--stack,
the DynamoDB client, and store failures as CommandErrors."""

from __future__ import annotations

import argparse
from typing import Any

from tokex.cli.deployment import (
    STATE_TABLE_OUTPUT,
    add_deployment_arguments,
    aws_hint,
    resolve_deployment,
)
from tokex.cli.errors import AWS_ERROR, CommandError


def state_table_parent() -> argparse.ArgumentParser:
    """--table/--stack, --region, --endpoint-url and --json, for commands on the state table."""
    parent = argparse.ArgumentParser(add_help=False)
    add_deployment_arguments(parent, table="state", output=STATE_TABLE_OUTPUT)
    parent.add_argument("--json", action="store_true", help="machine-readable output")
    return parent


def resolve_state_table(args: argparse.Namespace) -> tuple[Any, str]:
    """(DynamoDB client, state table name) from --table or --stack."""
    deployment = resolve_deployment(args, output=STATE_TABLE_OUTPUT)
    return deployment.client("dynamodb"), deployment.table


def store_error(exc: Exception, args: argparse.Namespace) -> CommandError:
    """An operator sees why (the AWS error code), not just "unavailable"; and a wrong
    table or credentials are named as such, not as something to retry."""
    reason = str(getattr(exc, "reason", type(exc).__name__))
    where = "--stack" if args.stack else "--table"
    hint = aws_hint(reason)
    if hint is not None:
        table = args.table or f"of stack {args.stack}"
        return CommandError(f"state table {table}: {reason} ({hint})", error=AWS_ERROR, input=where)
    return CommandError(f"state table: {exc} ({reason})", error=AWS_ERROR, input=where)
