"""Which deployment an operator command talks to: its region, endpoint and policy table.

The table comes from `--table NAME`, or from `--stack NAME`: the `PolicyTableName` output
of the CloudFormation stack that `cdk deploy` created (cdk/tokex_stack.py). Other commands
read other outputs the same way (`stack_output(..., output="StateTableName")`).
Credentials come from the default AWS credential chain, as for the AWS CLI.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from tokex.cli.main import CommandError

# cdk/tokex_stack.py names its outputs; this one is the policy table.
POLICY_TABLE_OUTPUT = "PolicyTableName"


@dataclass(frozen=True)
class Deployment:
    table: str
    region: str | None = None
    endpoint_url: str | None = None
    stack: str | None = None

    def client(self, service: str) -> Any:
        return aws_client(service, self.region, self.endpoint_url)


def add_deployment_arguments(
    parser: argparse.ArgumentParser, *, table: str = "policy", output: str = POLICY_TABLE_OUTPUT
) -> None:
    """--table/--stack, --region, --endpoint-url for a command on one of tokex's tables."""
    group = parser.add_argument_group("deployment")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--table", metavar="NAME", help=f"the {table} table")
    where.add_argument(
        "--stack",
        metavar="NAME",
        help=f"the tokex CloudFormation stack (its {output} output names the table)",
    )
    group.add_argument("--region", help="AWS region (default: the SDK's region)")
    group.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="AWS endpoint override, e.g. the emulator of `tokex local`",
    )


def resolve_deployment(args: argparse.Namespace, output: str = POLICY_TABLE_OUTPUT) -> Deployment:
    """The table named by --table, or by the --stack's `output` (a CommandError if neither
    resolves)."""
    if args.table:
        return Deployment(args.table, args.region, args.endpoint_url)
    if not args.stack:
        raise CommandError("name the deployment with --table NAME or --stack NAME", exit_code=2)
    cloudformation = aws_client("cloudformation", args.region, args.endpoint_url)
    table = stack_output(cloudformation, args.stack, output=output)
    return Deployment(table, args.region, args.endpoint_url, stack=args.stack)


def policy_table_from_stack(
    cloudformation: Any, stack_name: str, output: str = POLICY_TABLE_OUTPUT
) -> str:
    """The `PolicyTableName` output of a stack (or the one named by `output`)."""
    return stack_output(cloudformation, stack_name, output=output)


def stack_output(cloudformation: Any, stack_name: str, output: str = POLICY_TABLE_OUTPUT) -> str:
    """One output of a tokex stack (DescribeStacks); a CommandError that says why not."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
            raise CommandError(
                f"cannot describe stack {stack_name!r}: "
                f"stack {stack_name!r} not found in region {_region(cloudformation)}"
            ) from None
        raise CommandError(
            f"cannot describe stack {stack_name!r}: {describe_aws_error(exc)}"
        ) from None
    except BotoCoreError as exc:
        raise CommandError(
            f"cannot describe stack {stack_name!r}: {describe_aws_error(exc)}"
        ) from None
    outputs = {o.get("OutputKey"): o.get("OutputValue") for o in stacks[0].get("Outputs", [])}
    value = outputs.get(output)
    if not value:
        status = stacks[0].get("StackStatus", "unknown status")
        raise CommandError(
            f"stack {stack_name!r} ({status}) has no {output} output: is it a tokex stack "
            "of this version, and has it finished deploying?"
        )
    return str(value)


def aws_client(service: str, region: str | None, endpoint_url: str | None) -> Any:
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.session.Session(region_name=region).client(service, endpoint_url=endpoint_url)
    except BotoCoreError as exc:  # e.g. no region configured, a broken profile
        raise CommandError(describe_aws_error(exc)) from None


def describe_aws_error(exc: Exception) -> str:
    """One line for an operator: the error code and message, or what botocore said."""
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    if isinstance(exc, NoRegionError):
        return "no AWS region configured: pass --region or set AWS_REGION"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (the default credential chain came up empty)"
    return str(exc) or type(exc).__name__


def _region(client: Any) -> str:
    return str(getattr(getattr(client, "meta", None), "region_name", None) or "(default)")
