"""`tokex local`: the whole system on this machine, in the foreground."""

from __future__ import annotations

import argparse
import math
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from tokex import identifiers
from tokex.cli.errors import FAILED, UsageError
from tokex.cli.main import CommandError

# `--replication-delay`'s default, for --help only, which loads no runner
# (tokex/local/runner.py DEFAULT_REPLICATION_DELAY_SECONDS; tests/system/test_local_regions.py
# checks they agree), and its largest value: a test of "before replication" pauses the
# replication instead of waiting it out.
DEFAULT_REPLICATION_DELAY = 1.0
MAX_REPLICATION_DELAY = 3600.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "local",
        help="run the whole system on this machine (emulated AWS, SigV4 checks on)",
        description="Runs tokex on loopback with an embedded AWS emulation. Ctrl-C stops it.",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=8787,
        help="HTTP port on 127.0.0.1, 0-65535 (0: any free port; default 8787)",
    )
    parser.add_argument(
        "--state-dir",
        type=_state_dir,
        default=Path(".tokex-local"),
        help="where workload.env and the other state files go (default .tokex-local, under"
        " the working directory)",
    )
    parser.add_argument(
        "--signing-key-spec",
        choices=("RSA_2048", "ECC_NIST_P256"),
        default="RSA_2048",
        help="KMS key spec of the signing key (RS256 or ES256 tokens)",
    )
    parser.add_argument(
        "--regions",
        type=_regions,
        metavar="REGION[,REGION...]",
        help="the Regions to run, home first, e.g. us-east-1,eu-west-1: each gets its own "
        "tables, signing key replica and functions at /regions/REGION/token and "
        "/regions/REGION/introspect; /token is the home Region's (default: us-east-1 only)",
    )
    parser.add_argument(
        "--replication-delay",
        type=_delay,
        metavar="SECONDS",
        help="with several --regions: how long a write waits before it reaches the other "
        f"Regions (default {DEFAULT_REPLICATION_DELAY:g})",
    )
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    """A TCP port, checked by the parser: out of range is a usage error (exit 2)."""
    if not text.isascii() or not text.isdigit():  # int() would take " 80", "8_0"
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 0-65535")
    return port


def _state_dir(text: str) -> Path:
    """--state-dir: an empty value (an unset variable in a script) would be the working
    directory, a checkout's perhaps, filled with demo credentials: a usage error."""
    if not text:
        raise argparse.ArgumentTypeError("must name a directory (it was empty)")
    return Path(text)


def _regions_banner(regions: tuple[str, ...], issuer: str, delay: float) -> str:
    """The banner's lines for several Regions (none for one)."""
    if len(regions) < 2:
        return ""
    home, *others = regions
    return (
        f"  Regions         {home} (home: /token, /introspect), {', '.join(others)}\n"
        f"                  {issuer}/regions/REGION/token and .../introspect each\n"
        f"  replication     policy and state tables, every way, after {delay:g} s\n"
    )


def _regions(text: str) -> tuple[str, ...]:
    """Region names, comma-separated, home first: a wrong list is a usage error (exit 2)."""
    from tokex.evidence.sts_endpoints import PARTITION_REGIONS

    regions = tuple(part.strip() for part in text.split(","))
    for region in regions:
        if not identifiers.is_region(region):
            raise argparse.ArgumentTypeError(
                f"{region!r} is not a Region name: pass Regions like us-east-1,eu-west-1"
            )
        if region not in PARTITION_REGIONS["aws"]:
            # The local exchange serves the commercial partition's STS, as a multi-Region
            # deployment does (one CloudFront distribution): found before anything starts.
            raise argparse.ArgumentTypeError(
                f"{region!r} is not a Region of the aws partition that tokex serves STS in"
            )
    if len(set(regions)) != len(regions):
        raise argparse.ArgumentTypeError(f"a Region is listed twice in {text!r}")
    return regions


def _delay(text: str) -> float:
    try:
        delay = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(delay) and 0 <= delay <= MAX_REPLICATION_DELAY):
        raise argparse.ArgumentTypeError(f"use 0-{MAX_REPLICATION_DELAY:g} seconds")
    return delay


# The oldest moto local mode runs on (pyproject's `local` extra says why).
MIN_MOTO = (5, 2, 5)


def _emulator_missing() -> str | None:
    """What is wrong with the installed emulator, if anything: an extra left out (`pip
    install -e .`), moto without its server (a project's own test dependency), or one
    older than the `local` extra asks for (a pin of the project's)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        return "moto is not installed"
    version = importlib.metadata.version("moto")
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if numbers < MIN_MOTO:
        return f"moto {version} is older than {'.'.join(map(str, MIN_MOTO))}"
    server = [name for name in ("flask", "flask_cors") if importlib.util.find_spec(name) is None]
    if server:
        return f"moto is installed without its server ({', '.join(server)} missing)"
    return None


def run(args: argparse.Namespace) -> int:
    missing = _emulator_missing()
    if missing is not None:
        # Not a bug of tokex: said before anything is written.
        raise CommandError(
            f"the emulator of the `local` extra is not usable ({missing}): pip install"
            " 'tokex[local]' (the README's setup command, `.[dev]`, includes it)",
            error=FAILED,
        )
    from tokex.local import moto_fixes
    from tokex.local.front import PortUnavailable
    from tokex.local.provision import (
        DEMO_AUDIENCE,
        DEMO_INSTANCE_AUDIENCE,
        DEMO_INSTANCE_ID,
        DEMO_LAMBDA_AUDIENCE,
        DEMO_ROLE_ARN,
        DEMO_SCOPES,
        REGION,
    )
    from tokex.local.runner import (
        DEFAULT_REPLICATION_DELAY_SECONDS,
        StateDirectoryInUse,
        start_local,
    )
    from tokex.private_files import UnsafeDirectory

    try:
        moto_fixes.transaction_seconds_from_environment()
    except ValueError as err:
        raise UsageError(str(err), input=moto_fixes.TRANSACTION_SECONDS_ENV) from None
    regions = args.regions or (REGION,)
    if args.replication_delay is not None and len(regions) < 2:
        raise UsageError(
            "--replication-delay needs two or more --regions: one Region replicates nothing",
            input="--replication-delay",
        )
    delay = args.replication_delay
    if delay is None:
        delay = DEFAULT_REPLICATION_DELAY_SECONDS

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Before the start, which takes seconds: a SIGTERM then stops what has started and
    # says so (exit 130, "interrupted"), as Ctrl-C does, instead of killing the process
    # with no word and its servers' threads mid-way.
    signal.signal(signal.SIGTERM, terminate)
    try:
        system = start_local(
            port=args.port,
            state_dir=args.state_dir,
            signing_key_spec=args.signing_key_spec,
            regions=regions,
            replication_delay=delay,
        )
    except PortUnavailable as err:
        # Nothing was started or written: an instance already on that port is untouched.
        hint = "; stop what listens there or pass another --port" if err.in_use else ""
        raise CommandError(f"could not start: {err}{hint}", input="--port") from None
    except (UnsafeDirectory, StateDirectoryInUse) as err:
        raise CommandError(f"could not start: {err}", input="--state-dir") from None
    except OSError as err:
        where = str(err.filename) if err.filename is not None else None
        raise CommandError(f"could not start: {err}", input=where) from None
    # From here on, a signal (the first one may come as soon as the banner is read)
    # stops what started.
    try:
        issuer = system.issuer
        federation = system.federation
        assert federation is not None
        lambda_a, lambda_b = system.lambda_envs.values()
        regions_lines = _regions_banner(system.regions, issuer, delay)
        # Every path and value in the lines below goes through shlex.quote, so that the
        # commands run as printed (bash, dash, zsh) whatever --state-dir holds (a space,
        # a quote); a plain path or URL comes out unchanged.
        q = shlex.quote
        workload_env = q(str(system.workload_env))
        introspection_env = q(str(system.introspection_env))
        operator_env = q(str(system.state_dir / "operator.env"))
        eks_token = q(str(federation.eks_token.path))
        endpoint, audience = q(issuer), q(DEMO_AUDIENCE)
        print(
            f"""tokex local is running (Ctrl-C stops it)
  issuer          {issuer}
  token endpoint  {issuer}/token
  JWKS            {issuer}/.well-known/jwks.json
  discovery       {issuer}/.well-known/openid-configuration
  introspection   {issuer}/introspect  (demo client -> {introspection_env})
{regions_lines}  AWS emulator    {system.deployment.endpoint_url} (moto, SigV4 checks on)
  demo workload   {DEMO_ROLE_ARN}  -> {workload_env}
  demo policies   audience {DEMO_AUDIENCE}, scopes {" ".join(DEMO_SCOPES)}, max TTL 900 s
                  audience {DEMO_INSTANCE_AUDIENCE}, needs instance identity evidence
                  audience {DEMO_AUDIENCE} with aws-oif or eks evidence too
                  audience {DEMO_LAMBDA_AUDIENCE}, aws-oif evidence of tokex-demo-a only
  demo EC2 IMDS   {system.imds.url} (instance {DEMO_INSTANCE_ID}; local-only certificate)
  local STS       {federation.sts_url} (AWS_ENDPOINT_URL_STS; GetWebIdentityToken, rest -> moto)
  OIF issuer      {federation.oif_issuer.url} (local-only)
  EKS issuer      {federation.eks_issuer.url} (local-only; token -> {eks_token})
  demo Lambdas    tokex-demo-a -> {q(str(lambda_a))}, tokex-demo-b -> {q(str(lambda_b))}
  operator        {operator_env} (for tokex policy/clients/revoke)

Try it:
  . {workload_env}
  tokex token --endpoint {endpoint} --audience {audience} --scope demo:read
  tokex token --endpoint {endpoint} --audience {q(DEMO_INSTANCE_AUDIENCE)} --instance-identity auto
  tokex token --endpoint {endpoint} --audience {audience} --evidence aws-oif
  tokex token --endpoint {endpoint} --audience {audience} --evidence eks \\
    --token-file {eks_token}

Introspect a token (RFC 7662):
  . {workload_env}
  . {introspection_env}
  TOKEN=$(tokex token --audience {audience}) && \\
  printf 'user = "%s:%s"\\ndata = "token=%s"\\n' "$TOKEX_INTROSPECTION_CLIENT_ID" \\
    "$TOKEX_INTROSPECTION_CLIENT_SECRET" "$TOKEN" | curl -s -K - {q(issuer + "/introspect")}
""",
            flush=True,
        )
        system.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C or SIGTERM while stopping (about a second) does not cut the stop
        # short: it still ends with "tokex local stopped" and exit 0.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        system.stop()
        print("tokex local stopped", file=sys.stderr)
    return 0
