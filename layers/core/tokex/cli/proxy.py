"""`tokex proxy`: the workload's outbound API calls with its token attached on the way out
(docs/injection.md). Configured by a file (`--config`), or one route by flags.

Prints one line once every listener is up: the addresses, and the file holding the secret
of `/.tokex/token`. Serves until SIGINT or SIGTERM, then shuts down gracefully (the
requests in flight finish, for up to GRACE_SECONDS) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokex.cli.errors import (
    FAILED,
    FILE_NOT_FOUND,
    INVALID_VALUE,
    USAGE,
    WRITE_FAILED,
    CommandError,
    UsageError,
)
from tokex.cli.request_arguments import requested_scopes
from tokex.cli.token import ENDPOINT_VARIABLE, EVIDENCE_CHOICES

if TYPE_CHECKING:
    from tokex.proxy.config import ProxyConfig
    from tokex.proxy.server import ProxyServer

GRACE_SECONDS = 10.0
# The flags of the command line's one route: none of them goes with --config.
ROUTE_FLAGS = (
    "endpoint",
    "listen",
    "upstream",
    "audience",
    "scope",
    "evidence",
    "ca_file",
    "token_file",
    "secret_file",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="a local reverse proxy that attaches this workload's tokens to its API calls",
        description="Forwards the application's requests to the configured upstreams with "
        "`Authorization: Bearer <token>` for each route's audience (any Authorization the "
        "application sent is dropped), and serves the token itself at /.tokex/token to a "
        "caller with the proxy's secret. Loopback only unless allowed. See docs/injection.md.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the configuration: a .toml or .json file of listeners and routes "
        "(docs/injection.md); or give one route with the flags below",
    )
    parser.add_argument(
        "--endpoint",
        help=f"the tokex issuer's base URL (default: ${ENDPOINT_VARIABLE})",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where the application sends its requests, e.g. 127.0.0.1:8080 (loopback only "
        "unless --allow-non-loopback; port 0: any free port)",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="the API's base URL, https (http only to a loopback host); every path is "
        "forwarded unchanged below it",
    )
    parser.add_argument("--audience", help="the audience of the tokens attached")
    parser.add_argument(
        "--scope", action="append", default=[], help="a scope to ask for (may repeat)"
    )
    parser.add_argument(
        "--evidence",
        choices=EVIDENCE_CHOICES,
        help="what proves who this workload is, as for `tokex token` (default: sigv4)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help="CA certificates that replace the system's trust for the upstream (as curl --cacert)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="with --evidence eks: the projected service-account token (default: "
        "/var/run/secrets/tokex/serviceaccount/token)",
    )
    parser.add_argument(
        "--secret-file",
        metavar="FILE",
        help="where to write the secret for /.tokex/token, mode 0600 (default: a new "
        "private directory in $XDG_RUNTIME_DIR or the temporary directory)",
    )
    parser.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="allow listening on an address other hosts can reach (whoever reaches the "
        "proxy can use its tokens)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the start line (or a failure) as JSON"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokex.proxy.secret import UnsafeSecretFile
    from tokex.proxy.server import ListenFailed, ProxyServer

    config = _config(args)
    server = ProxyServer(config)
    stop = threading.Event()
    previous = _on_signals(stop.set)
    try:
        try:
            server.start()
        except ListenFailed as err:
            where = args.config or "--listen"  # the file, or the flag, that named it
            raise CommandError(
                f"cannot listen: {err.strerror}", error=FAILED, input=where
            ) from None
        except UnsafeSecretFile as err:
            flag = "secret_file" if args.config else "--secret-file"
            raise UsageError(f"{flag}: {err}", input=args.config or flag) from None
        except OSError as err:  # named as given: not the temporary file it was written to
            where = str(config.secret_file) if config.secret_file else "(a new directory)"
            raise CommandError(
                f"cannot write the secret file {where}: {err.strerror or err}",
                error=WRITE_FAILED,
                input=where,
            ) from None
        _announce(server, as_json=args.json)
        while not stop.wait(0.5):
            pass
        server.shutdown(GRACE_SECONDS)
        return 0
    finally:
        server.shutdown(0)  # a no-op once shut down; frees the ports on a failure
        _restore(previous)


def _config(args: argparse.Namespace) -> ProxyConfig:
    """The configuration (exit 2 for anything wrong with it), before anything is bound."""
    from tokex.proxy.config import ProxyConfig, ProxyConfigError

    given = [name for name in ROUTE_FLAGS if getattr(args, name) not in (None, [])]
    try:
        if args.config:
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise UsageError(
                    f"{flag} goes with the command line's one route, not with --config (the "
                    "file says it)",
                    error=USAGE,
                    input=flag,
                )
            return ProxyConfig.from_file(args.config, allow_non_loopback=args.allow_non_loopback)
        for flag in ("listen", "upstream", "audience"):
            if getattr(args, flag) is None:
                raise UsageError(
                    f"give --config FILE, or one route: --listen, --upstream and --audience "
                    f"(--{flag} is missing)",
                    error=USAGE,
                    input=f"--{flag}",
                )
        return ProxyConfig.from_args(
            endpoint=args.endpoint,
            listen=args.listen,
            upstream=args.upstream,
            audience=args.audience,
            scopes=requested_scopes(args.scope) or (),
            evidence=args.evidence,
            ca_file=args.ca_file,
            token_file=args.token_file,
            secret_file=args.secret_file,
            allow_non_loopback=args.allow_non_loopback,
        )
    except ProxyConfigError as err:
        text = str(err)
        if args.config:  # the file's own fault names it; a key's is in the file
            whole_file = err.key == str(Path(args.config))
            text = f"--config {text}" if whole_file else f"--config {args.config}: {text}"
        raise UsageError(
            text,
            input=args.config or err.key,
            error=FILE_NOT_FOUND if err.file_not_found else INVALID_VALUE,
        ) from None


def _announce(server: ProxyServer, *, as_json: bool) -> None:
    listening = {
        name: f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        for name, (host, port) in server.addresses.items()
    }
    secret_file = str(server.secret_file) if server.secret_file else None
    if as_json:
        print(json.dumps({"listening": listening, "secret_file": secret_file}), flush=True)
        return
    where = ", ".join(f"{url} ({name})" for name, url in listening.items())
    print(f"tokex proxy: listening on {where}; secret in {secret_file}", flush=True)


def _on_signals(stop: Any) -> dict[int, Any]:
    """SIGINT and SIGTERM ask for a graceful shutdown (in the main thread only: a signal
    handler cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        previous[number] = signal.signal(number, lambda *_: stop())
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)
