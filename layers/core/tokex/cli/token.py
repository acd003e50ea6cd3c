"""`tokex token`: the workload side. Prints an access token for an audience."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from tokex.cli.errors import UNREACHABLE, USAGE, CommandError, UsageError
from tokex.cli.region import configured_region
from tokex.cli.request_arguments import check_audience, requested_scopes

ENDPOINT_VARIABLE = "TOKEX_ENDPOINT"
# The region to sign for when none is configured: the workload then needs nothing but its
# credentials (the exchange accepts every region's STS unless its stsRegions says not).
FALLBACK_REGION = "us-east-1"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "token",
        help="exchange this workload's AWS identity for an access token",
        description="Signs sts:GetCallerIdentity with the default AWS credential chain and "
        "exchanges it at a tokex issuer. Prints the access token.",
    )
    parser.add_argument(
        "--endpoint",
        help=f"the tokex issuer's base URL, e.g. https://auth.example.com or "
        f"http://127.0.0.1:8787 (default: ${ENDPOINT_VARIABLE})",
    )
    parser.add_argument("--audience", required=True, help="the API the token is for")
    parser.add_argument("--scope", action="append", default=[], help="scope(s) to request")
    parser.add_argument(
        "--region",
        help="STS region to sign for (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's "
        f"region, else {FALLBACK_REGION})",
    )
    parser.add_argument("--issuer", help="issuer to bind to (default: from discovery)")
    parser.add_argument(
        "--instance-identity",
        choices=("auto", "on", "off"),
        default="off",
        help="send EC2 instance identity evidence read from IMDSv2",
    )
    parser.add_argument("--json", action="store_true", help="print the whole JSON response")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="say on stderr what evidence is sent"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokex.client.token_client import TokenError, check_endpoint, request_token

    # The command line first (exit 2), before any network call.
    given, source = args.endpoint, "--endpoint"
    if not given:
        given, source = os.environ.get(ENDPOINT_VARIABLE), ENDPOINT_VARIABLE
    if not given:
        raise UsageError(
            f"no endpoint: pass --endpoint URL (the issuer URL) or set {ENDPOINT_VARIABLE}",
            error=USAGE,
            input="--endpoint",
        )
    try:
        endpoint = check_endpoint(given)
    except TokenError as err:
        # The library says "endpoint 'URL' ..."; here the flag or variable is named.
        raise UsageError(f"{source} {str(err).removeprefix('endpoint ')}", input=source) from None
    check_audience(args.audience)
    scopes = requested_scopes(args.scope) or ()
    region = configured_region(args.region) or FALLBACK_REGION
    try:
        evidence = _instance_evidence(args)
        response = request_token(
            endpoint,
            args.audience,
            scopes=scopes,
            region=region,
            issuer=args.issuer,
            instance_evidence=evidence,
        )
    except TokenError as err:
        raise CommandError(str(err), error=err.error, input=err.url or "--endpoint") from None
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
            raise CommandError(
                f"--instance-identity on: {err} (off EC2, use --instance-identity auto or off)",
                error=UNREACHABLE,
                input="--instance-identity",
            ) from None
        if args.verbose:
            print(f"tokex token: no instance identity evidence ({err})", file=sys.stderr)
        return None
    if args.verbose:
        print("tokex token: sending instance identity evidence from IMDSv2", file=sys.stderr)
    return encode_instance_evidence(evidence)
