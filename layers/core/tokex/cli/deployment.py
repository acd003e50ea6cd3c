"""Which deployment an operator command talks to: its region, endpoint and policy table.

The table comes from `--table NAME`, or from `--stack NAME`: the `PolicyTableName` output
of the CloudFormation stack that `cdk deploy` created (cdk/tokex_stack.py), looked up in
the command's region. Other commands read other outputs the same way
(`resolve_deployment(args, output=STATE_TABLE_OUTPUT)`). A multi-Region deployment's
Regional stacks (cdk/regional_stacks.py) have the same outputs, naming the same global
tables: `--stack Tokex-<r> --region <r>` writes to Region r's replicas, as when home is down.
Credentials come from the default AWS credential chain, as for the AWS CLI.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokex.adapters.state_table.schema import TTL_ATTRIBUTE
from tokex.cli.errors import (
    AWS_ERROR,
    INVALID_INPUT,
    NOT_FOUND,
    USAGE,
    CommandError,
    UsageError,
)
from tokex.cli.inputs import require_http_url
from tokex.cli.region import aws_session, resolve_region
from tokex.client.endpoint import is_loopback, redacted, redacted_text
from tokex.policy.model import MAX_TTL_CAP_SECONDS, MIN_TTL_SECONDS

# cdk/tokex_stack.py (and cdk/regional_stacks.py) name their outputs: the policy table's
# and the state table's.
POLICY_TABLE_OUTPUT = "PolicyTableName"
STATE_TABLE_OUTPUT = "StateTableName"

# Every AWS client of the CLI (aws_client) is bounded: an endpoint that takes the
# connection and never answers (a suspended `tokex local`) failed a command only after
# botocore's defaults, 60 s per read, 4 attempts of each DynamoDB call and two calls,
# 8 minutes for `tokex policy list`. One Scan or Query page (1 MB at most) answers well
# within the read timeout.
CLI_CONNECT_TIMEOUT_SECONDS = 5
CLI_READ_TIMEOUT_SECONDS = 15
# Attempts of each call, botocore's standard retries: unless AWS_MAX_ATTEMPTS (or the
# profile's max_attempts) and AWS_RETRY_MODE (retry_mode) say otherwise.
CLI_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Deployment:
    table: str
    region: str | None = None
    endpoint_url: str | None = None
    stack: str | None = None
    # The --stack's DescribeStacks answer, read once for every output a command needs.
    described: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def client(self, service: str) -> Any:
        return aws_client(service, self.region, self.endpoint_url)

    @property
    def flag(self) -> str:
        """The flag that named this deployment, for errors that concern it."""
        return "--stack" if self.stack else "--table"

    def stack_output(self, output: str) -> str:
        """Another output of the --stack (a CommandError if it has none)."""
        return _output(self.described, str(self.stack), output)

    def stack_seconds(self, output: str) -> int:
        """An output of the --stack that is a number of seconds (its TTLs)."""
        text = self.stack_output(output)
        if not text.isdigit():
            raise CommandError(
                f"stack output {output} is not a number of seconds",
                error=INVALID_INPUT,
                input="--stack",
            )
        return int(text)


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
    group.add_argument(
        "--region",
        help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, then the profile's region, "
        "as for the AWS CLI)",
    )
    group.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="AWS endpoint override, e.g. the emulator of `tokex local`",
    )


def check_deployment(args: argparse.Namespace, output: str = POLICY_TABLE_OUTPUT) -> str:
    """The usage checks of --table/--stack, --region and --endpoint-url, made before any
    file is read or AWS is called (a UsageError, exit 2). Returns the region."""
    if not args.table and not args.stack:
        raise UsageError(
            f"name the deployment with --table NAME or --stack NAME (the stack's {output} "
            "output names the table)",
            error=USAGE,
            input="--table",
        )
    if args.endpoint_url is not None:
        require_http_url(args.endpoint_url, flag="--endpoint-url")
    return resolve_region(args.region)


def resolve_deployment(args: argparse.Namespace, output: str = POLICY_TABLE_OUTPUT) -> Deployment:
    """The table named by --table, or by the --stack's `output` (a CommandError if neither
    resolves)."""
    region = check_deployment(args, output)
    if args.table:
        deployment = Deployment(args.table, region, args.endpoint_url)
        check_table_kind(deployment, state=output == STATE_TABLE_OUTPUT)
        return deployment
    cloudformation = aws_client("cloudformation", region, args.endpoint_url)
    stack = describe_stack(cloudformation, args.stack)
    table = _output(stack, args.stack, output)
    return Deployment(table, region, args.endpoint_url, stack=args.stack, described=stack)


def check_table_kind(deployment: Deployment, *, state: bool) -> None:
    """Refuses the policy table for a state-table command, and the other way round.

    The two share one key schema, so a write to the wrong one succeeds: a revocation that
    revokes nothing, or an item the exchange's policy load then refuses (every exchange a
    503). The state table has a TTL on `expires_at`, the policy table none. A table whose
    TTL cannot be read (no `dynamodb:DescribeTimeToLive`, no such table) is left to the
    command's own call, which names the error as before; one that got no answer in time
    is not: that call would wait as long again."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        ReadTimeoutError,
    )

    client = deployment.client("dynamodb")
    try:
        described = client.describe_time_to_live(TableName=deployment.table)[
            "TimeToLiveDescription"
        ]
    except (ConnectTimeoutError, ReadTimeoutError) as exc:
        # In the words of the store's failures (`reason`: the operation and error code).
        message = (
            f"{'state' if state else 'policy'} table {deployment.table!r}: "
            f"dynamodb DescribeTimeToLive: {type(exc).__name__}"
        )
        if _is_local_emulator(client.meta.endpoint_url):
            message += f" ({LOCAL_EMULATOR_HINT})"
        raise CommandError(message, error=AWS_ERROR, input=deployment.flag) from None
    except (BotoCoreError, ClientError, KeyError):
        return
    is_state = described.get("AttributeName") == TTL_ATTRIBUTE and described.get(
        "TimeToLiveStatus"
    ) in ("ENABLED", "ENABLING")
    if is_state == state:
        return
    wanted, found = ("state", "policy") if state else ("policy", "state")
    raise CommandError(
        f"table {deployment.table!r} is not the {wanted} table (it looks like the {found}"
        f" table: {'no ' if state else 'a '}TTL on {TTL_ATTRIBUTE}); check"
        f" --table, or name the stack with --stack",
        error=INVALID_INPUT,
        input="--table",
    )


def check_ttl_seconds(value: int, flag: str) -> None:
    """A TTL flag (--ttl-cap, --default-ttl) in the range every deployment accepts."""
    if not MIN_TTL_SECONDS <= value <= MAX_TTL_CAP_SECONDS:
        raise UsageError(
            f"{flag} {value}: must be {MIN_TTL_SECONDS}..{MAX_TTL_CAP_SECONDS} seconds",
            input=flag,
        )


def describe_stack(cloudformation: Any, stack_name: str) -> Mapping[str, Any]:
    """A tokex stack (DescribeStacks); a CommandError that says why not."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
            raise CommandError(
                f"cannot describe stack {stack_name!r}: "
                f"stack {stack_name!r} not found in region {_region(cloudformation)} "
                "(check --stack and --region)",
                error=NOT_FOUND,
                input="--stack",
            ) from None
        raise CommandError(
            f"cannot describe stack {stack_name!r}: {describe_aws_error(exc)}",
            error=AWS_ERROR,
            input="--stack",
        ) from None
    except BotoCoreError as exc:
        raise CommandError(
            f"cannot describe stack {stack_name!r}: {describe_aws_error(exc)}",
            error=AWS_ERROR,
            input="--stack",
        ) from None
    return dict(stacks[0])


def _output(stack: Mapping[str, Any], stack_name: str, output: str) -> str:
    outputs = {o.get("OutputKey"): o.get("OutputValue") for o in stack.get("Outputs", [])}
    value = outputs.get(output)
    if not value:
        status = stack.get("StackStatus", "unknown status")
        raise CommandError(
            f"stack {stack_name!r} ({status}) has no {output} output: is it a tokex stack "
            "of this version, and has it finished deploying?",
            error=NOT_FOUND,
            input="--stack",
        )
    return str(value)


def aws_client(service: str, region: str | None, endpoint_url: str | None) -> Any:
    from botocore.exceptions import BotoCoreError

    session = aws_session(region)
    try:
        return session.client(service, endpoint_url=endpoint_url, config=_cli_config(session))
    except BotoCoreError as exc:  # e.g. a broken profile
        raise CommandError(describe_aws_error(exc), error=AWS_ERROR, input="--region") from None
    except ValueError as exc:  # botocore's own refusal of a value
        why = redacted_text(str(exc))  # it quotes the URL, a password in it too
        if endpoint_url is not None and "endpoint" in why.lower():
            # e.g. a host name with `_`: found before any call, as a usage error is
            raise UsageError(
                f"--endpoint-url {redacted(endpoint_url)!r}: {why}", input="--endpoint-url"
            ) from None
        raise CommandError(
            f"the AWS configuration cannot be used: {why}", error=AWS_ERROR, input=None
        ) from None


def _cli_config(session: Any) -> Any:
    """The bounded botocore config of the CLI's clients (CLI_*; a value of AWS_MAX_ATTEMPTS
    or AWS_RETRY_MODE the SDK cannot use is its ValueError, as without this config)."""
    from botocore.config import Config

    settings = session._session  # botocore's, which reads the environment and the profile
    retries: dict[str, Any] = {}
    if settings.get_config_variable("max_attempts") is None:
        retries["total_max_attempts"] = CLI_MAX_ATTEMPTS
    if settings.get_config_variable("retry_mode") is None:
        retries["mode"] = "standard"
    return Config(
        connect_timeout=CLI_CONNECT_TIMEOUT_SECONDS,
        read_timeout=CLI_READ_TIMEOUT_SECONDS,
        retries=retries or None,
    )


# Store failures (their `reason` carries the operation and error code) -> what to check:
# a mistake of the command line or the credentials, not an outage to wait out.
AWS_HINTS = {
    "ResourceNotFoundException": "no such table in this region?",
    "AccessDenied": "do these credentials allow it?",
    "NoCredentialsError": "no AWS credentials found",
    "UnrecognizedClientException": "credentials not valid for this endpoint",
    "InvalidSignatureException": "credentials not valid for this endpoint",
    "EndpointConnectionError": "endpoint unreachable",
}


# botocore's errors for an endpoint that took no connection or gave no answer in time.
NO_ANSWER = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError")
# ...from `tokex local`'s emulator: stopped, suspended, or started again (on a new port).
LOCAL_EMULATOR_HINT = "is `tokex local` running? source the operator.env of its current run"


def aws_hint(reason: str) -> str | None:
    """What to check for a store failure whose `reason` names one of AWS_HINTS' codes, and
    whether `tokex local` runs when its emulator (operator.env's AWS_ENDPOINT_URL) did
    not answer."""
    hint = next((hint for code, hint in AWS_HINTS.items() if code in reason), None)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("AWS_ENDPOINT_URL")
    if any(code in reason for code in NO_ANSWER) and _is_local_emulator(endpoint):
        return f"{hint}; {LOCAL_EMULATOR_HINT}" if hint else LOCAL_EMULATOR_HINT
    return hint


def _is_local_emulator(endpoint_url: str | None) -> bool:
    """A plain http endpoint on this machine: `tokex local`'s emulator (as `tokex token`
    tells its endpoint, cli/token.py)."""
    try:
        parts = urllib.parse.urlsplit(endpoint_url or "")
        return parts.scheme == "http" and is_loopback(parts.hostname or "")
    except ValueError:  # no URL (`http://[::1`): nothing of `tokex local`'s
        return False


def describe_aws_error(exc: Exception) -> str:
    """One line for an operator: the error code and message, or what botocore said (the
    endpoint URL it quotes without its user name and password: --endpoint-url,
    AWS_ENDPOINT_URL)."""
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        described = f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    elif isinstance(exc, NoRegionError):
        described = "no AWS region configured: pass --region REGION or set AWS_REGION"
    elif isinstance(exc, NoCredentialsError):
        described = "no AWS credentials found (the default credential chain came up empty)"
    else:
        described = str(exc) or type(exc).__name__
    return redacted_text(described)


def _region(client: Any) -> str:
    return str(getattr(getattr(client, "meta", None), "region_name", None) or "(default)")
