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
import http.client
import json
import os
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokex import bounded_http, deadline, identifiers
from tokex.cli.clients import check_client_id
from tokex.cli.deck_file import parse_document, read_existing, render, write_private

__all__ = ["parse_document", "read_jwks", "register", "render", "run"]
from tokex.cli.errors import (
    INVALID_INPUT,
    UNREACHABLE,
    USAGE,
    WRITE_FAILED,
    CommandError,
    UsageError,
)
from tokex.cli.inputs import file_status, require_file, require_http_url, whole_number
from tokex.settings import DEFAULT_TTL_CAP_SECONDS

ENTERPRISE = ("openid-connect", "oauth2-introspection")
MAX_JWKS_BYTES = 1 << 20
# The whole fetch, connection to last byte: a server that trickles its answer a byte at a
# time is cut off when they run out, not once per byte.
FETCH_TIMEOUT_SECONDS = 10
CLIENT_SECRET_ENV = "TOKEX_KONG_CLIENT_SECRET"
# oauth2-introspection's `ttl`: how long Kong keeps a verdict, past a token's expiry and
# any revocation (docs/kong.md "Kong Enterprise").
MAX_INTROSPECTION_TTL = 300
# Placement fields (tokex/kong.py) -> the flag that sets each, and how to fix it.
_PLACEMENT_FLAGS = {
    "service": "--service-name",
    "service_url": "--service-url",
    "routes": "--route",
    "audiences": "--audience",
    "global_scope": "--global",
    "placement": "--service-name",
}
_PLACEMENT_FIXES = {
    "service_url": ": give --service-name NAME too",
    "global_scope": ": --global goes alone, without --service-name or --route",
    "placement": ": pass --service-name NAME, --audience AUD --route NAME, or --global",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "kong-config",
        help="generate Kong (decK) configuration from the JWKS",
        description="Write a decK declarative file (_format_version 3.0) that makes Kong "
        "accept this deployment's tokens: the open-source jwt plugin with one credential per "
        "published key (and per audience with --audience), or Kong Enterprise's "
        "openid-connect / oauth2-introspection plugin with --enterprise.",
    )
    parser.add_argument(
        "--jwks",
        metavar="URL|FILE",
        help="the published JWKS: https://ISSUER/.well-known/jwks.json, or a file",
    )
    parser.add_argument("--issuer", help="issuer URL (default: from the --jwks URL)")
    parser.add_argument(
        "--max-ttl",
        type=whole_number,
        default=DEFAULT_TTL_CAP_SECONDS,
        metavar="SECONDS",
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
        "--audience; with oauth2-introspection, only with --global: every route then "
        "accepts every audience the client serves)",
    )
    parser.add_argument("--enterprise", choices=ENTERPRISE, help="a Kong Enterprise plugin")
    parser.add_argument("--client-id", help="oauth2-introspection: tokex client id")
    parser.add_argument(
        "--client-secret",
        help=f"oauth2-introspection: client secret (default: ${CLIENT_SECRET_ENV})",
    )
    parser.add_argument(
        "--introspection-ttl",
        type=whole_number,
        default=30,
        metavar="SECONDS",
        help="oauth2-introspection: how long Kong caches a verdict (default %(default)s)",
    )
    parser.add_argument(
        "--introspection-region",
        metavar="REGION",
        help="oauth2-introspection, multi-Region: ask this Region's endpoint, "
        "ISSUER/regions/REGION/introspect, one of the discovery document's tokex_regions "
        "(default: home's ISSUER/introspect, which stops while home is down)",
    )
    parser.add_argument(
        "--consumer-by",
        choices=("client_id", "username"),
        default="client_id",
        help="oauth2-introspection: how Kong maps a token to a consumer (default %(default)s)",
    )
    parser.add_argument(
        "--format", choices=("yaml", "json"), help="output format (default yaml; decK reads both)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="write JSON (as --format json); a failure is one JSON object on stdout",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write here, a regular file made mode 0600 (not a symlink; default: stdout)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokex import kong

    # The command line first (exit 2), before any file is read or the JWKS fetched.
    placement = _check(args)
    # Read in every mode: refused when this command did not write it (deck_file.py), before
    # `--output`, often the same file, is written.
    existing = read_existing(args.existing, quiet=args.json) if args.existing else None
    try:
        if args.enterprise is None:
            jwks = read_jwks(args.jwks)
            try:
                document = kong.jwt_config(jwks, placement, max_ttl=args.max_ttl, existing=existing)
            except kong.KongConfigError as err:  # the keys: the placement was checked
                raise CommandError(
                    f"--jwks {args.jwks}: {err}", error=INVALID_INPUT, input=args.jwks
                ) from None
        elif args.enterprise == "openid-connect":
            document = kong.openid_connect_config(_issuer(args), placement)
        else:
            document = kong.introspection_config(
                _issuer(args),
                placement,
                client_id=args.client_id,
                client_secret=_client_secret(args),
                ttl=args.introspection_ttl,
                consumer_by=args.consumer_by,
                region=args.introspection_region,
            )
            if not args.json:  # with --json, stdout's JSON is all there is
                note = "tokex kong-config: Kong will accept tokens of the audiences registered"
                print(f"{note} on client {args.client_id} (`tokex clients list`)", file=sys.stderr)
    except kong.KongConfigError as err:
        raise CommandError(str(err), error=INVALID_INPUT, input="--enterprise") from None
    fmt = "json" if args.json else args.format or "yaml"
    text = render(document, fmt, source=args.jwks or _issuer(args))
    if args.output:
        try:
            write_private(Path(args.output), text)
        except OSError as err:
            raise CommandError(
                f"cannot write {args.output}: {err.strerror or err}",
                error=WRITE_FAILED,
                input=args.output,
            ) from None
    else:
        sys.stdout.write(text)
    return 0


def _check(args: argparse.Namespace) -> Any:
    """Every usage error (UsageError, exit 2); the placement the flags describe."""
    from tokex.kong import MAX_EXPIRATION_LIMIT

    placement = _placement(args)
    if args.output is not None:
        _check_output(args.output)
    if args.json and args.format == "yaml":
        raise UsageError("--json writes JSON: drop --format yaml", input="--format")
    if not 0 < args.max_ttl <= MAX_EXPIRATION_LIMIT:
        raise UsageError(
            f"--max-ttl {args.max_ttl}: must be 1..{MAX_EXPIRATION_LIMIT} seconds, the "
            "deployment's TTL cap (Kong's maximum_expiration)",
            input="--max-ttl",
        )
    if not 1 <= args.introspection_ttl <= MAX_INTROSPECTION_TTL:
        # Kong keeps a verdict for `ttl` whatever the token's `exp` (and 0 is for ever):
        # an expired or revoked token is accepted that much longer.
        raise UsageError(
            f"--introspection-ttl {args.introspection_ttl}: must be 1..{MAX_INTROSPECTION_TTL}"
            " seconds (Kong keeps a verdict that long, past the token's expiry and any"
            " revocation; 0 would be for ever)",
            input="--introspection-ttl",
        )
    if args.enterprise is None:
        _check_jwks(args.jwks)
    else:
        _issuer(args)
    if args.introspection_region is not None:
        if args.enterprise != "oauth2-introspection":
            raise UsageError(
                "--introspection-region goes with --enterprise oauth2-introspection: the"
                " other plugins read the published keys, which every Region shares",
                input="--introspection-region",
            )
        if not identifiers.is_region(args.introspection_region):
            raise UsageError(
                f"--introspection-region {args.introspection_region!r} is not a Region name"
                " (e.g. eu-west-1)",
                input="--introspection-region",
            )
    if args.enterprise == "oauth2-introspection":
        if not args.client_id:
            raise UsageError(
                "oauth2-introspection needs --client-id ID, from `tokex clients add`",
                error=USAGE,
                input="--client-id",
            )
        check_client_id(args.client_id, flag="--client-id")
        _client_secret(args)
    if args.service_url is not None:
        require_http_url(args.service_url, flag="--service-url")
    if args.existing is not None:  # missing: a first run
        found = file_status(args.existing, label="--existing")
        if found is not None and stat.S_ISDIR(found.st_mode):
            existing = args.existing
            raise UsageError(f"--existing {existing} is a directory, not a file", input=existing)
    return placement


def _check_output(path: str) -> None:
    found = (
        file_status(path, label="--output", follow_symlinks=False, writing=True) if path else None
    )
    if not path or (found is not None and stat.S_ISDIR(found.st_mode)):
        raise UsageError(
            f"--output {path!r}: name a file to write (not a directory)", input="--output"
        )
    if found is not None and not stat.S_ISREG(found.st_mode):
        # The file may hold a client secret: never written through a link someone planted,
        # and a device or a FIFO would not be a 0600 file. (`/dev/stdout` is a symlink.)
        raise UsageError(
            f"--output {path!r} is a symlink or a special file: name a regular file, "
            "or leave --output out to write to stdout",
            input="--output",
        )


def _check_jwks(source: str | None) -> None:
    if not source:
        raise UsageError(
            "give the JWKS: --jwks https://ISSUER/.well-known/jwks.json (or a file); "
            "--enterprise plugins need none",
            error=USAGE,
            input="--jwks",
        )
    if source.startswith(("https://", "http://")):
        require_http_url(source, flag="--jwks")
        _check_fetch_url(source, "--jwks")
    else:
        hint = " (a URL needs its https:// scheme)" if "/.well-known/" in source else ""
        require_file(source, label="--jwks", missing_hint=hint)


def _client_secret(args: argparse.Namespace) -> str:
    secret = args.client_secret or os.environ.get(CLIENT_SECRET_ENV, "")
    if not secret:
        raise UsageError(
            f"oauth2-introspection needs the client's secret: set {CLIENT_SECRET_ENV} (or pass "
            "--client-secret, which other users of this machine can see)",
            error=USAGE,
            input="--client-secret",
        )
    return secret


def _placement(args: argparse.Namespace) -> Any:
    from tokex.kong import KongConfigError, Placement, Route

    oauth2 = args.enterprise == "oauth2-introspection"
    # With oauth2-introspection tokex enforces the audiences registered on the client
    # (docs/kong.md "Kong Enterprise"): audiences given here could only disagree with them.
    if oauth2 and (args.audience or args.route):
        flag = "--audience" if args.audience else "--route"
        raise UsageError(
            f"{flag}: oauth2-introspection enforces the audiences registered on the "
            "introspection client, not audiences given here: register them with `tokex "
            "clients add|update --audience AUD` and drop --audience/--route",
            input=flag,
        )
    # The plugin never checks `aud` itself: on every route of this Kong, a client that
    # serves several APIs' audiences lets each route take the others' tokens.
    if oauth2 and args.global_scope and not args.any_audience:
        raise UsageError(
            "--global with oauth2-introspection: every route of this Kong would accept a "
            "token of any audience the client serves: put the plugin on each API's service "
            "(--service-name) with a client registered for that API's audience only, or "
            "add --any-audience to accept that",
            input="--global",
        )
    if oauth2 and args.any_audience and not args.global_scope:
        raise UsageError(
            "--any-audience: with oauth2-introspection it goes with --global only (a "
            "service's plugin accepts the audiences registered on its client)",
            input="--any-audience",
        )
    # Refuse to guess (docs/kong.md "The command"): a config that accepts every audience
    # of the issuer lets a token minted for one API call all of them. That must be asked
    # for by name.
    if not oauth2 and not args.audience and not args.any_audience:
        raise UsageError(
            "this configuration would accept tokens for any audience of the issuer: give "
            "--audience AUD --route NAME per API, or --any-audience to accept that",
            error=USAGE,
            input="--audience",
        )
    if args.route and len(args.route) != len(args.audience):
        raise UsageError(
            f"give one --audience before each --route ({len(args.audience)} --audience, "
            f"{len(args.route)} --route)",
            input="--route",
        )
    routes: dict[str, tuple[list[str], str | None]] = {}
    for spec, audience in zip(args.route, args.audience, strict=False):
        name, _, path = spec.partition("=")
        served, _ = routes.setdefault(name, ([], path or None))
        if audience not in served:
            served.append(audience)
    placement = Placement(
        service=args.service_name,
        service_url=args.service_url,
        routes=tuple(Route(name, tuple(aud), path) for name, (aud, path) in routes.items()),
        audiences=() if args.route else tuple(dict.fromkeys(args.audience)),
        global_scope=args.global_scope,
    )
    try:
        placement.check()
    except KongConfigError as err:
        flag = _PLACEMENT_FLAGS.get(err.field or "", "--service-name")
        fix = _PLACEMENT_FIXES.get(err.field or "", "")
        raise UsageError(f"{flag}: {err}{fix}", input=flag) from None
    return placement


def _issuer(args: argparse.Namespace) -> str:
    from tokex.tokens.jwks import JWKS_PATH

    if args.issuer:
        issuer, flag = str(args.issuer).rstrip("/"), "--issuer"
    elif (
        args.jwks
        and args.jwks.startswith(("https://", "http://"))
        and args.jwks.endswith(JWKS_PATH)
    ):
        issuer, flag = str(args.jwks)[: -len(JWKS_PATH)], "--jwks"
    else:
        raise UsageError(
            "--enterprise plugins need the issuer: pass --issuer URL (or a --jwks URL under "
            "the issuer)",
            error=USAGE,
            input="--issuer",
        )
    require_http_url(issuer, flag=flag)
    _check_fetch_url(issuer, flag)  # Kong fetches discovery, keys or verdicts from it
    from tokex.client.endpoint import check_endpoint
    from tokex.client.token_error import TokenError

    try:  # the base URL, as `tokex token --endpoint` takes it: Kong appends the paths
        check_endpoint(issuer)
    except TokenError as err:
        raise UsageError(f"{flag}: {err}", input=flag) from None
    return issuer


def read_jwks(source: str) -> dict[str, Any]:
    """The JWKS from an https URL (http only on loopback) or a file; a CommandError (exit 1)
    that names the source when it cannot be had."""
    if source.startswith(("https://", "http://")):
        _check_fetch_url(source, "--jwks")
        body = _fetch(source)
    else:
        try:
            with Path(source).open("rb") as handle:
                body = handle.read(MAX_JWKS_BYTES + 1)
        except OSError as err:
            raise CommandError(
                f"cannot read --jwks {source}: {err.strerror or err}",
                error=INVALID_INPUT,
                input=source,
            ) from None
    if len(body) > MAX_JWKS_BYTES:
        raise CommandError(
            f"--jwks {source} is larger than 1 MiB", error=INVALID_INPUT, input=source
        )
    try:
        document = json.loads(body)
    except ValueError as err:
        raise CommandError(
            f"--jwks {source} is not JSON ({err})", error=INVALID_INPUT, input=source
        ) from None
    except RecursionError:  # well-formed, but nested deeper than any JWKS
        raise CommandError(
            f"--jwks {source} is not a JWKS (nested too deeply)", error=INVALID_INPUT, input=source
        ) from None
    if not isinstance(document, dict):
        raise CommandError(
            f"--jwks {source} is not a JSON object", error=INVALID_INPUT, input=source
        )
    return document


def _fetch(url: str) -> bytes:
    from tokex.client.endpoint import redacted
    from tokex.printable import escaped

    shown = redacted(url)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        # The environment's proxies for https only: plain http (a loopback issuer) through
        # a proxy would let it answer with keys of its own.
        opener = bounded_http.urllib_opener(_NoDowngrade)
        with (
            deadline.request_deadline(FETCH_TIMEOUT_SECONDS),
            opener.open(request, timeout=FETCH_TIMEOUT_SECONDS) as response,
        ):
            return bytes(response.read(MAX_JWKS_BYTES + 1))
    except urllib.error.HTTPError as err:
        raise CommandError(
            f"cannot fetch the JWKS: {shown} answered HTTP {err.code} {err.reason} (is it the "
            "issuer's /.well-known/jwks.json?)",
            error=UNREACHABLE,
            input=shown,
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        why = getattr(reason, "strerror", None) or str(reason)
        if isinstance(reason, TimeoutError):  # a socket's timeout, or the whole fetch's
            why = f"no whole answer within {FETCH_TIMEOUT_SECONDS} seconds"
        raise CommandError(
            f"cannot fetch the JWKS from {shown}: {why} (is the issuer up, and the URL right?)",
            error=UNREACHABLE,
            input=shown,
        ) from None
    except (http.client.HTTPException, ValueError) as err:
        # An answer that is no HTTP (a bad status line, over 100 headers, cut off, a chunk
        # size that is no number) or a redirect to no URL at all (`http://[::1/x`). Its
        # text is the server's: escaped, it can neither drive a terminal nor break the line.
        why = escaped(f"{type(err).__name__}: {err}")
        raise CommandError(
            f"cannot fetch the JWKS from {shown}: a broken answer ({why}) (is it the issuer's "
            "/.well-known/jwks.json?)",
            error=UNREACHABLE,
            input=shown,
        ) from None


def _check_fetch_url(source: str, flag: str) -> None:
    from tokex.client.endpoint import redacted

    if problem := _fetch_url_problem(source):
        raise UsageError(f"{flag} {redacted(source)}: {problem}", input=flag)


def _fetch_url_problem(source: str) -> str | None:
    from tokex.client.endpoint import host_problem, is_loopback

    try:
        url = urlsplit(source)
        host = url.hostname or ""
    except ValueError as err:  # e.g. "Invalid IPv6 URL"
        return f"is not a valid URL: {err}"
    if "@" in url.netloc:  # http.client would read the password as a port
        return "has a user name or password in it: give the URL without them"
    if problem := host_problem(host):
        return f"its host {problem}"
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in url.path + url.query):
        # http.client sends the path as it is, ASCII only, and refuses a space in it.
        return (
            "has whitespace, control or non-ASCII characters: percent-encode them (%20 for a space)"
        )
    if url.scheme == "https" or (url.scheme == "http" and is_loopback(host)):
        return None
    # Keys fetched in clear text could be swapped in transit, and Kong would then trust a
    # forger's key. Only `tokex local` serves http, on loopback.
    return "use https (plain http only for a loopback issuer, as `tokex local`)"


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL `--jwks` itself could be: checked before the
    request is made, so nothing is ever sent in clear text. A refusal is the server's
    doing, not the command line's (exit 1)."""

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        problem = _fetch_url_problem(newurl)
        downgrade = urlsplit(req.full_url).scheme == "https" != urlsplit(newurl).scheme
        if problem is None and downgrade:
            problem = "is plain http: a redirect from https may not downgrade"
        if problem:
            from tokex.client.endpoint import redacted

            shown = redacted(req.full_url)
            raise CommandError(
                f"cannot fetch the JWKS: {shown} redirects to {redacted(newurl)}, which {problem}",
                error=UNREACHABLE,
                input=shown,
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)
