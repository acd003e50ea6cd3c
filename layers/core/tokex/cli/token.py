"""`tokex token`: the workload side. Prints an access token for an audience."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from tokex.cli.main import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "token",
        help="exchange this workload's AWS identity for an access token",
        description="Signs sts:GetCallerIdentity with the default AWS credential chain and "
        "exchanges it at a tokex endpoint. Prints the access token.",
    )
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("TOKEX_ENDPOINT"),
        help="tokex base URL (default: $TOKEX_ENDPOINT)",
    )
    parser.add_argument("--audience", required=True, help="the API the token is for")
    parser.add_argument("--scope", action="append", default=[], help="scope(s) to request")
    parser.add_argument("--region", help="STS region to sign for (default: the SDK's region)")
    parser.add_argument("--issuer", help="issuer to bind to (default: from discovery)")
    parser.add_argument(
        "--instance-identity",
        choices=("auto", "on", "off"),
        default="off",
        help="send EC2 instance identity evidence read from IMDSv2",
    )
    parser.add_argument("--json", action="store_true", help="print the whole JSON response")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokex.client.token_client import TokenError, request_token

    if not args.endpoint:
        raise CommandError("--endpoint is required (or set TOKEX_ENDPOINT)", exit_code=2)
    scopes = [s for value in args.scope for s in value.split()]
    try:
        evidence = _instance_evidence(args)
        response = request_token(
            args.endpoint,
            args.audience,
            scopes=scopes,
            region=args.region,
            issuer=args.issuer,
            instance_evidence=evidence,
        )
    except TokenError as err:
        raise CommandError(str(err)) from None
    print(json.dumps(response, indent=2) if args.json else response["access_token"])
    return 0


def _instance_evidence(args: argparse.Namespace) -> str | None:
    """IMDS evidence per --instance-identity: `auto` proceeds without it off EC2, `on`
    requires it."""
    if args.instance_identity == "off":
        return None
    from tokex.client.imds import ImdsUnavailable, encode_instance_evidence, read_instance_identity

    try:
        evidence = read_instance_identity()
    except ImdsUnavailable as err:
        if args.instance_identity == "on":
            raise CommandError(f"--instance-identity on: {err}") from None
        if args.verbose:
            print(f"tokex token: no instance identity evidence ({err})", file=sys.stderr)
        return None
    if args.verbose:
        print("tokex token: sending instance identity evidence from IMDSv2", file=sys.stderr)
    return encode_instance_evidence(evidence)
