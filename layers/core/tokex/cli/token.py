"""`tokex token`: the workload side. Prints an access token for an audience."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokex.cli.errors import UNREACHABLE, USAGE, WRITE_FAILED, CommandError, UsageError
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
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="reuse a token kept in DIR while it has more than 20%% of its lifetime left, and "
        "keep new ones there (files of mode 0600 per endpoint, audience, scopes and AWS "
        "access key; DIR is made 0700 and refused if others may write to it). Default: no "
        "cache, nothing written",
    )
    parser.add_argument("--json", action="store_true", help="print the whole JSON response")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="say on stderr what evidence is sent"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokex.client.token_client import TokenError, check_endpoint

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
    cache_dir = _cache_dir(args.cache_dir) if args.cache_dir else None
    try:
        response = _token_response(args, endpoint, scopes, region, cache_dir)
    except TokenError as err:
        raise CommandError(str(err), error=err.error, input=err.url or "--endpoint") from None
    print(json.dumps(response, indent=2) if args.json else response["access_token"])
    return 0


def _token_response(
    args: argparse.Namespace,
    endpoint: str,
    scopes: Sequence[str],
    region: str,
    cache_dir: Path | None,
) -> dict[str, Any]:
    """From the cache directory when it holds a fresh token for this request, else from
    the token endpoint (kept in the cache directory when there is one)."""
    import boto3

    from tokex.client import disk_cache
    from tokex.client.token_client import aws_credentials, request_token

    session = boto3.session.Session()
    cache_file = None
    if cache_dir is not None:
        name = disk_cache.cache_file_name(
            endpoint=endpoint,
            issuer=args.issuer,
            audience=args.audience,
            scopes=scopes,
            instance_identity=args.instance_identity,
            access_key_id=aws_credentials(session).access_key,
        )
        cache_file = cache_dir / name
        cached = disk_cache.read_cached(cache_file)
        if cached is not None:
            if args.verbose:
                print(f"tokex token: cached token from {cache_file}", file=sys.stderr)
            return cached
    response = request_token(
        endpoint,
        args.audience,
        scopes=scopes,
        region=region,
        issuer=args.issuer,
        instance_evidence=_instance_evidence(args),
        session=session,
    )
    if cache_file is not None:
        try:
            disk_cache.write_cached(cache_file, response)
        except OSError as err:  # the token is good: print it, say why it was not kept
            print(f"tokex token: --cache-dir: not cached: {err}", file=sys.stderr)
    return response


def _cache_dir(path: Path) -> Path:
    from tokex.client.disk_cache import UnsafeCacheDir, open_cache_dir

    try:
        return open_cache_dir(path)
    except UnsafeCacheDir as err:
        raise UsageError(f"--cache-dir {err}", input="--cache-dir") from None
    except OSError as err:
        raise CommandError(
            f"--cache-dir {path}: cannot create it: {err.strerror or err}",
            error=WRITE_FAILED,
            input="--cache-dir",
        ) from None


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
