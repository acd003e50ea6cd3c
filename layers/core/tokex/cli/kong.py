"""`tokex kong-config`: a decK declarative file for Kong from the published JWKS.

    tokex kong-config --jwks https://auth.example.com/.well-known/jwks.json \\
        --audience orders-api --route orders --service-name orders \\
        --service-url http://orders.internal:8080 --existing kong.yaml --output kong.yaml

Re-run it after every change of the JWKS (docs/kong.md "Rotation"); `--existing` keeps the
dummy secrets of unchanged credentials so `deck diff` shows only real changes; a missing
`--existing` file is a first run, so the same command line serves every run.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokex.cli.main import CommandError
from tokex.settings import DEFAULT_TTL_CAP_SECONDS

ENTERPRISE = ("openid-connect", "oauth2-introspection")
MAX_JWKS_BYTES = 1 << 20
FETCH_TIMEOUT_SECONDS = 10
CLIENT_SECRET_ENV = "TOKEX_KONG_CLIENT_SECRET"
_LOOPBACK_NAMES = {"localhost"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "kong-config",
        help="generate Kong (decK) configuration from the JWKS",
        description="Write a decK declarative file (_format_version 3.0) that makes Kong "
        "accept this deployment's tokens: the open-source jwt plugin with one credential per "
        "published key (and per audience with --audience), or Kong Enterprise's "
        "openid-connect / oauth2-introspection plugin with --enterprise.",
    )
    parser.add_argument("--jwks", metavar="URL|FILE", help="the published JWKS")
    parser.add_argument("--issuer", help="issuer URL (default: from the --jwks URL)")
    parser.add_argument(
        "--max-ttl",
        type=int,
        default=DEFAULT_TTL_CAP_SECONDS,
        help="the deployment's TTL cap: jwt maximum_expiration (default %(default)s)",
    )
    parser.add_argument(
        "--existing",
        metavar="FILE",
        help="previous output: keep its secrets (a missing FILE: first run)",
    )
    parser.add_argument(
        "--audience", action="append", default=[], help="audience served by the next --route"
    )
    parser.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="NAME[=PATH]",
        help="Kong route for the matching --audience (PATH when the service is emitted)",
    )
    parser.add_argument("--service-name", help="Kong service the plugins go on")
    parser.add_argument("--service-url", help="emit the service too, with this upstream URL")
    parser.add_argument(
        "--global",
        dest="global_scope",
        action="store_true",
        help="global plugins: every route of this Kong",
    )
    parser.add_argument(
        "--any-audience",
        action="store_true",
        help="accept this issuer's tokens whatever their audience (required without "
        "--audience, and with oauth2-introspection, which cannot check audiences)",
    )
    parser.add_argument("--enterprise", choices=ENTERPRISE, help="a Kong Enterprise plugin")
    parser.add_argument("--client-id", help="oauth2-introspection: tokex client id")
    parser.add_argument(
        "--client-secret",
        help=f"oauth2-introspection: client secret (default: ${CLIENT_SECRET_ENV})",
    )
    parser.add_argument("--introspection-ttl", type=int, default=30, help="verdict cache seconds")
    parser.add_argument("--consumer-by", choices=("client_id", "username"), default="client_id")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")
    parser.add_argument("--output", metavar="FILE", help="write here (default: stdout)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokex import kong

    try:
        placement = _placement(args)
        if args.enterprise is None:
            if not args.jwks:
                raise CommandError("--jwks is required", exit_code=2)
            existing = read_existing(args.existing) if args.existing else None
            document = kong.jwt_config(
                read_jwks(args.jwks), placement, max_ttl=args.max_ttl, existing=existing
            )
        elif args.enterprise == "openid-connect":
            document = kong.openid_connect_config(_issuer(args), placement)
        else:
            secret = args.client_secret or os.environ.get(CLIENT_SECRET_ENV, "")
            document = kong.introspection_config(
                _issuer(args),
                placement,
                client_id=args.client_id or "",
                client_secret=secret,
                ttl=args.introspection_ttl,
                consumer_by=args.consumer_by,
            )
    except (kong.KongConfigError, OSError, ValueError) as err:
        raise CommandError(str(err)) from None
    text = render(document, args.format, source=args.jwks or _issuer(args))
    if args.output:
        try:
            write_private(Path(args.output), text)
        except OSError as err:
            raise CommandError(f"cannot write {args.output}: {err.strerror or err}") from None
    else:
        sys.stdout.write(text)
    return 0


def _placement(args: argparse.Namespace) -> Any:
    from tokex.kong import Placement, Route

    # Refuse to guess (style.md): a config that accepts every audience of the issuer lets
    # a token minted for one API call all of them. That must be asked for by name.
    audience_blind = not args.audience or args.enterprise == "oauth2-introspection"
    if audience_blind and not args.any_audience:
        raise CommandError(
            "this configuration would accept tokens for any audience of the issuer: give "
            "--audience AUD --route NAME per API, or --any-audience to accept that"
            + (" (oauth2-introspection never checks aud)" if args.audience else ""),
            exit_code=2,
        )

    if args.route and len(args.route) != len(args.audience):
        raise CommandError("give one --audience before each --route", exit_code=2)
    routes: dict[str, tuple[list[str], str | None]] = {}
    for spec, audience in zip(args.route, args.audience, strict=False):
        name, _, path = spec.partition("=")
        served, _ = routes.setdefault(name, ([], path or None))
        if audience not in served:
            served.append(audience)
    return Placement(
        service=args.service_name,
        service_url=args.service_url,
        routes=tuple(Route(name, tuple(aud), path) for name, (aud, path) in routes.items()),
        audiences=() if args.route else tuple(dict.fromkeys(args.audience)),
        global_scope=args.global_scope,
    )


def _issuer(args: argparse.Namespace) -> str:
    from tokex.tokens.jwks import JWKS_PATH

    if args.issuer:
        issuer = str(args.issuer).rstrip("/")
    elif (
        args.jwks
        and args.jwks.startswith(("https://", "http://"))
        and args.jwks.endswith(JWKS_PATH)
    ):
        issuer = str(args.jwks)[: -len(JWKS_PATH)]
    else:
        raise CommandError("--issuer is required (or a --jwks URL under the issuer)", exit_code=2)
    try:
        _check_fetch_url(issuer)  # Kong fetches discovery, keys or verdicts from it
    except ValueError:
        raise CommandError("the issuer must be https (http only on loopback)") from None
    return issuer


def read_jwks(source: str) -> dict[str, Any]:
    """The JWKS from an https URL (http only on loopback) or a file."""
    if source.startswith(("https://", "http://")):
        _check_fetch_url(source)
        request = urllib.request.Request(source, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310
            _check_fetch_url(response.geturl())  # a redirect must not downgrade either
            body = response.read(MAX_JWKS_BYTES + 1)
    else:
        body = Path(source).read_bytes()
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("the JWKS is larger than 1 MiB")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("the JWKS is not a JSON object")
    return document


def _check_fetch_url(source: str) -> None:
    url = urlsplit(source)
    if url.scheme == "https" or (url.scheme == "http" and _is_loopback(url.hostname or "")):
        return
    # Keys fetched in clear text could be swapped in transit, and Kong would then trust a
    # forger's key. Only `tokex local` serves http, on loopback.
    raise ValueError("fetch the JWKS over https (http only for a loopback issuer)")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def render(document: dict[str, Any], fmt: str, *, source: str) -> str:
    """YAML (PyYAML when installed; JSON is YAML too) or JSON text for decK."""
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    header = f"# Generated by `tokex kong-config` from {source}: re-run it, do not edit.\n"
    try:
        import yaml
    except ImportError:
        return header + json.dumps(document, indent=2) + "\n"

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # decK files without YAML anchors, whatever objects are shared

    def string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None  # PEM keys as readable literal blocks
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    def sequence(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
        flow = all(isinstance(item, str | int) for item in value)  # [exp, nbf] on one line
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

    Dumper.add_representer(str, string)
    Dumper.add_representer(list, sequence)
    return header + yaml.dump(
        document, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=4096
    )


def read_existing(path: str) -> dict[str, Any] | None:
    """The previous output, or None on a first run (the file does not exist yet), so the
    same command line serves the first run and every later one."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        print(f"tokex kong-config: {path} does not exist yet: no earlier file", file=sys.stderr)
        return None
    return parse_document(text)


def parse_document(text: str) -> dict[str, Any]:
    """A decK file written by `render` (JSON, or YAML when PyYAML is installed)."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    try:
        document = json.loads(body)
    except ValueError:
        try:
            import yaml
        except ImportError:
            raise ValueError("reading a YAML --existing file needs PyYAML") from None
        document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError("the --existing file is not a decK document")
    return document


def write_private(path: Path, text: str) -> None:
    """Atomic write, mode 0600: the file may hold an introspection client secret. Missing
    parent directories are created with mode 0700."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
