"""`tokex local`: the whole system on this machine, in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from tokex.cli.main import CommandError


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
        "--state-dir", type=Path, default=Path(".tokex-local"), help="where workload.env goes"
    )
    parser.add_argument(
        "--signing-key-spec",
        choices=("RSA_2048", "ECC_NIST_P256"),
        default="RSA_2048",
        help="KMS key spec of the signing key (RS256 or ES256 tokens)",
    )
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    """A TCP port, checked by the parser: out of range is a usage error (exit 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 0-65535")
    return port


def run(args: argparse.Namespace) -> int:
    from tokex.local.front import PortUnavailable
    from tokex.local.provision import (
        DEMO_AUDIENCE,
        DEMO_INSTANCE_AUDIENCE,
        DEMO_INSTANCE_ID,
        DEMO_LAMBDA_AUDIENCE,
        DEMO_ROLE_ARN,
        DEMO_SCOPES,
    )
    from tokex.local.runner import start_local

    try:
        system = start_local(
            port=args.port, state_dir=args.state_dir, signing_key_spec=args.signing_key_spec
        )
    except PortUnavailable as err:
        # Nothing was started or written: an instance already on that port is untouched.
        hint = "; stop what listens there or pass another --port" if err.in_use else ""
        raise CommandError(f"could not start: {err}{hint}", input="--port") from None
    except OSError as err:
        where = str(err.filename) if err.filename is not None else None
        raise CommandError(f"could not start: {err}", input=where) from None

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    issuer = system.issuer
    federation = system.federation
    assert federation is not None
    lambda_a, lambda_b = system.lambda_envs.values()
    print(
        f"""tokex local is running (Ctrl-C stops it)
  issuer          {issuer}
  token endpoint  {issuer}/token
  JWKS            {issuer}/.well-known/jwks.json
  discovery       {issuer}/.well-known/openid-configuration
  introspection   {issuer}/introspect  (demo client -> {system.introspection_env})
  AWS emulator    {system.deployment.endpoint_url} (moto, SigV4 checks on)
  demo workload   {DEMO_ROLE_ARN}  -> {system.workload_env}
  demo policies   audience {DEMO_AUDIENCE}, scopes {" ".join(DEMO_SCOPES)}, max TTL 900 s
                  audience {DEMO_INSTANCE_AUDIENCE}, needs instance identity evidence
                  audience {DEMO_AUDIENCE} with aws-oif or eks evidence too
                  audience {DEMO_LAMBDA_AUDIENCE}, aws-oif evidence of tokex-demo-a only
  demo EC2 IMDS   {system.imds.url} (instance {DEMO_INSTANCE_ID}; local-only certificate)
  local STS       {federation.sts_url} (AWS_ENDPOINT_URL_STS; GetWebIdentityToken, rest -> moto)
  OIF issuer      {federation.oif_issuer.url} (local-only)
  EKS issuer      {federation.eks_issuer.url} (local-only; token -> {federation.eks_token.path})
  demo Lambdas    tokex-demo-a -> {lambda_a}, tokex-demo-b -> {lambda_b}
  operator        {system.state_dir / "operator.env"} (for tokex policy/clients/revoke)

Try it:
  . {system.workload_env}
  tokex token --endpoint {issuer} --audience {DEMO_AUDIENCE} --scope demo:read
  tokex token --endpoint {issuer} --audience {DEMO_INSTANCE_AUDIENCE} --instance-identity auto
  tokex token --endpoint {issuer} --audience {DEMO_AUDIENCE} --evidence aws-oif
  tokex token --endpoint {issuer} --audience {DEMO_AUDIENCE} --evidence eks \\
    --token-file {federation.eks_token.path}

Introspect a token (RFC 7662):
  . {system.introspection_env}
  curl -s -u "$TOKEX_INTROSPECTION_CLIENT_ID:$TOKEX_INTROSPECTION_CLIENT_SECRET" \\
    -d "token=$(tokex token --audience {DEMO_AUDIENCE})" {issuer}/introspect
""",
        flush=True,
    )
    try:
        system.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        system.stop()
        print("tokex local stopped", file=sys.stderr)
    return 0
