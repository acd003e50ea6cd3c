"""The extension's life in a Lambda execution environment.

1. Read the configuration: `TOKEX_PROXY_ENDPOINT` and `TOKEX_PROXY_ROUTES` (JSON, as the
   CDK construct sets them), else the file `TOKEX_PROXY_CONFIG` (default
   /var/task/tokex-proxy.toml, the function's own package). Start the proxy on loopback.
2. Register with the Extensions API. A configuration the proxy refuses, or a listener it
   cannot bind, is reported as `init/error` and the extension exits 1: the function fails
   its Init, loudly, rather than run without the proxy its code expects.
3. Prefetch a token for each route, in parallel, for at most `PREFETCH_SECONDS` in all.
   A tokex outage never fails a cold start: a failure is logged and the token is fetched
   on first use instead (the proxy answers 503 until tokex is reachable).
4. Loop on `event/next`: INVOKE needs nothing (the proxy serves on its own threads);
   SHUTDOWN stops the proxy within the event's deadline, and the extension exits 0.

The proxy's secret (`X-Tokex-Proxy-Secret`) is the function's `AWS_SESSION_TOKEN`, which
the function's code has in its environment and no caller outside the execution
environment knows; AWS's Parameters and Secrets extension authenticates its callers the
same way (its `X-Aws-Parameters-Secrets-Token` header).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from tokex.extension.api import SHUTDOWN, ExtensionsApi, ExtensionsApiError
from tokex.proxy.config import DEFAULT_LISTENER, ProxyConfig, ProxyConfigError, Route
from tokex.proxy.log import JsonLog
from tokex.proxy.server import ListenFailed, ProxyServer
from tokex.proxy.tokens import RouteTokens, TokenSource, TokenUnavailable
from tokex.strict_json import StrictJsonError, loads_strict

# The function's package, where Lambda puts it. Not $LAMBDA_TASK_ROOT: an extension never
# sees it ("Extensions can access the function's environment variables, except for the
# following variables that are specific to the runtime process: ... LAMBDA_TASK_ROOT",
# the Extensions API reference).
TASK_ROOT = Path("/var/task")
CONFIG_VARIABLE = "TOKEX_PROXY_CONFIG"
DEFAULT_CONFIG = str(TASK_ROOT / "tokex-proxy.toml")
ENDPOINT_VARIABLE = "TOKEX_PROXY_ENDPOINT"
ROUTES_VARIABLE = "TOKEX_PROXY_ROUTES"
LISTEN_VARIABLE = "TOKEX_PROXY_LISTEN"
# Set by the CDK construct for the function's own code, never read here: the proxy's base
# URL (`http://` and its listener), so code does not spell the port.
URL_VARIABLE = "TOKEX_PROXY_URL"
# A port no AWS extension documents, since a function may use theirs too: 2772 is the AWS
# AppConfig Agent Lambda extension's default, 2773 the AWS Parameters and Secrets Lambda
# extension's (the Runtime and Extensions APIs are at AWS_LAMBDA_RUNTIME_API, not here).
DEFAULT_LISTEN = "127.0.0.1:2780"
SECRET_VARIABLE = "AWS_SESSION_TOKEN"
# The whole prefetch, all routes together: part of every cold start's Init phase.
PREFETCH_SECONDS = 1.5
# One exchange's budget, failover included: a request with no valid token waits for it,
# so it stays under Lambda's default function timeout (3 s) rather than the client's 10 s;
# a warm exchange takes two round trips. TOKEX_PROXY_EXCHANGE_TIMEOUT sets it (0.5-10 s).
EXCHANGE_TIMEOUT_VARIABLE = "TOKEX_PROXY_EXCHANGE_TIMEOUT"
EXCHANGE_TIMEOUT_SECONDS = 2.5
DECIMAL_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Lambda allows any string; AWS recommends Category.Reason (Extensions API reference).
CONFIG_INVALID = "Extension.ConfigInvalid"
LISTEN_FAILED = "Extension.ListenFailed"
# After registering: the Extensions API answered what the extension cannot use (or went
# away), or the extension failed in a way no check foresaw.
API_FAILED = "Extension.ApiFailed"
CRASHED = "Extension.Crashed"
# A configuration error's key, as the variable that holds it (else a key in the routes).
_VARIABLE_OF = {"endpoint": ENDPOINT_VARIABLE, "listen": LISTEN_VARIABLE, "routes": ROUTES_VARIABLE}
# Kept from the SHUTDOWN deadline for the process to exit after the proxy stopped: Lambda
# kills it at the deadline, and the interpreter's exit (threads joined, the log flushed)
# runs on the function's share of a vCPU, a small one for small memory sizes.
EXIT_MARGIN_SECONDS = 0.5


class StartFailed(Exception):
    """The proxy cannot start: `error_type` for init/error, the message says why."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def load_config(environ: Mapping[str, str]) -> ProxyConfig:
    """The construct's variables when set, else the configuration file; never a mix, where
    one side would be ignored without a word."""
    if ROUTES_VARIABLE in environ or ENDPOINT_VARIABLE in environ:
        if CONFIG_VARIABLE in environ:
            raise ProxyConfigError(
                CONFIG_VARIABLE,
                f"set either it or {ENDPOINT_VARIABLE} and {ROUTES_VARIABLE}, not both",
            )
        return config_from_variables(environ)
    if LISTEN_VARIABLE in environ:
        raise ProxyConfigError(
            LISTEN_VARIABLE,
            f"goes with {ROUTES_VARIABLE}: a configuration file ({CONFIG_VARIABLE}, default"
            f" {DEFAULT_CONFIG}) names its own listen",
        )
    path = environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG
    if CONFIG_VARIABLE not in environ and not Path(path).exists():
        # The likeliest first mistake: the layer added without its variables.
        raise ProxyConfigError(
            ROUTES_VARIABLE,
            f"no configuration: set {ENDPOINT_VARIABLE} and {ROUTES_VARIABLE} (the CDK"
            f" construct does), or ship {DEFAULT_CONFIG} ({CONFIG_VARIABLE} names another)",
        )
    return _for_lambda(ProxyConfig.from_file(path, environ=environ))


def config_from_variables(environ: Mapping[str, str], *, check_files: bool = True) -> ProxyConfig:
    """`TOKEX_PROXY_ENDPOINT`, `TOKEX_PROXY_ROUTES` (a JSON list of routes) and
    `TOKEX_PROXY_LISTEN` (default 127.0.0.1:2780), checked as a configuration file is.
    `check_files=False`: all but the files the routes name, which the CDK construct
    cannot see at synth (ProxyConfig.from_document)."""
    text = environ.get(ROUTES_VARIABLE)
    if not text:
        raise ProxyConfigError(ROUTES_VARIABLE, "missing: the routes, a JSON list")
    try:
        # The variable's bytes: one that is not UTF-8 (a lone surrogate here) is no JSON.
        routes = loads_strict(text.encode("utf-8", "surrogateescape"))
    except StrictJsonError as err:
        raise ProxyConfigError(ROUTES_VARIABLE, str(err)) from None
    listen = environ.get(LISTEN_VARIABLE) or DEFAULT_LISTEN
    document: dict[str, Any] = {"listen": listen, "routes": routes}
    if environ.get(ENDPOINT_VARIABLE):
        document["endpoint"] = environ[ENDPOINT_VARIABLE]
    try:
        # The checks of a configuration file, on a document built from variables; relative
        # paths in a route (token_file, ca_file) are the function package's files.
        return _for_lambda(
            ProxyConfig.from_document(
                document, base_dir=TASK_ROOT, environ=environ, check_files=check_files
            )
        )
    except ProxyConfigError as err:
        message = err.message
        if err.not_loopback:
            # No variable allows it (a file in TOKEX_PROXY_CONFIG may), and the function
            # reaches its extension on loopback anyway.
            message = (
                f"{err.not_loopback} is not a loopback address: the function reaches its"
                f" extension on loopback, e.g. {DEFAULT_LISTEN}"
            )
        raise ProxyConfigError(
            _VARIABLE_OF.get(
                err.key, err.key if err.key.startswith("$") else f"{ROUTES_VARIABLE}: {err.key}"
            ),
            message,
            file_not_found=err.file_not_found,
        ) from None


def _for_lambda(config: ProxyConfig) -> ProxyConfig:
    """`config`, unless it asks for what the extension cannot do (from the variables or a
    file alike): refused, not ignored."""
    for name, address in config.listeners.items():
        if address.port == 0:
            # The function sends its requests to a port it is told: one the system
            # picks is known to the extension alone.
            raise ProxyConfigError(name, "name a port: the function cannot learn one picked for it")
    if config.secret_file is not None:
        raise ProxyConfigError(
            "secret_file",
            f"not used in Lambda: the secret of /.tokex/token is the function's {SECRET_VARIABLE}"
            " (in X-Tokex-Proxy-Secret), and no file is written; remove the key",
        )
    return config


def start_proxy(
    environ: Mapping[str, str], log: JsonLog
) -> tuple[ProxyServer, RouteTokens, ProxyConfig]:
    """The configured proxy, listening; StartFailed if it cannot be."""
    try:
        config = load_config(environ)
    except ProxyConfigError as err:
        raise StartFailed(CONFIG_INVALID, str(err)) from None
    secret = environ.get(SECRET_VARIABLE)
    if not secret:
        raise StartFailed(CONFIG_INVALID, f"{SECRET_VARIABLE} is not set: no proxy secret")
    tokens = RouteTokens(config, log=log, timeout=exchange_timeout(environ))
    server = ProxyServer(config, token_source=tokens, secret=secret, log=log)
    try:
        server.start()
    except OSError as err:
        message = f"cannot listen: {err}"
        if _default_listen_taken(environ, err):
            message += (
                f"; another extension may hold {DEFAULT_LISTEN}, the default:"
                f" {LISTEN_VARIABLE} chooses another"
            )
        raise StartFailed(LISTEN_FAILED, message) from None
    return server, tokens, config


def _default_listen_taken(environ: Mapping[str, str], err: OSError) -> bool:
    """The address in use is DEFAULT_LISTEN, which no setting named: a port the function's
    other extensions may hold too. (A configuration file names its own listen, never the
    default.)"""
    return (
        err.errno == errno.EADDRINUSE
        and ROUTES_VARIABLE in environ
        and not environ.get(LISTEN_VARIABLE)
        and isinstance(err, ListenFailed)
        and err.listener == DEFAULT_LISTENER
    )


def exchange_timeout(environ: Mapping[str, str]) -> float:
    """TOKEX_PROXY_EXCHANGE_TIMEOUT (seconds), else EXCHANGE_TIMEOUT_SECONDS."""
    raw = environ.get(EXCHANGE_TIMEOUT_VARIABLE)
    if not raw:
        return EXCHANGE_TIMEOUT_SECONDS
    # A plain decimal: float() would also take " 1", "1_0" (ten) or other scripts' digits.
    seconds = float(raw) if DECIMAL_SECONDS.fullmatch(raw) else float("nan")
    if not 0.5 <= seconds <= 10:  # NaN too
        raise StartFailed(
            CONFIG_INVALID, f"{EXCHANGE_TIMEOUT_VARIABLE} must be 0.5 to 10 seconds, not {raw!r}"
        )
    return seconds


def prefetch(tokens: TokenSource, routes: tuple[Route, ...], budget: float, log: JsonLog) -> None:
    """A token for each distinct (audience, scopes, evidence), in parallel, waiting
    `budget` seconds at most in all. Each outcome is logged; none is raised. A fetch still
    running at the end goes on in its thread and fills the cache when it finishes."""
    distinct = {(r.evidence, r.token_file, r.audience, tuple(sorted(r.scopes))): r for r in routes}
    outcomes: dict[str, str] = {}

    def fetch(route: Route) -> None:
        try:
            tokens.token(route)
            outcomes[route.name] = "ok"
        except TokenUnavailable as err:
            outcomes[route.name] = f"{err.status} {err.error}"
        except Exception as err:  # a prefetch never fails the cold start
            outcomes[route.name] = f"{type(err).__name__}: {err}"

    started = time.monotonic()
    threads = [
        threading.Thread(target=fetch, args=(r,), name=f"prefetch {r.name}", daemon=True)
        for r in distinct.values()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, started + budget - time.monotonic()))
    for route in distinct.values():
        log.write(
            "extension_prefetch",
            route=route.name,
            audience=route.audience,
            outcome=outcomes.get(route.name, f"not done in {budget} s"),
        )


class _Terminated(Exception):
    """SIGTERM or SIGINT: stop as on SHUTDOWN (Lambda itself sends the event instead)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(signal.Signals(signum).name)


def main(environ: Mapping[str, str] | None = None, *, started: float | None = None) -> int:
    """`started`: `time.monotonic()` at the process's first line of Python, from which
    `init_ms` counts (else now)."""
    environ = os.environ if environ is None else environ
    started = time.monotonic() if started is None else started
    log = JsonLog()
    runtime_api = environ.get("AWS_LAMBDA_RUNTIME_API")
    if not runtime_api:
        log.write("extension_failed", error="AWS_LAMBDA_RUNTIME_API is not set: not in Lambda")
        return 1
    previous = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGINT)}
    api: ExtensionsApi | None = None
    try:
        api = ExtensionsApi(runtime_api)
        return _run(api, environ, log, started)
    except ExtensionsApiError as err:
        log.write("extension_failed", error_type=API_FAILED, error=str(err))
        _report_exit(api, API_FAILED, str(err))
        return 1
    except Exception as err:  # a bug: logged whole, reported by type, and exit 1
        log.write(
            "extension_failed",
            error_type=CRASHED,
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc(),
        )
        _report_exit(api, CRASHED, type(err).__name__)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _report_exit(api: ExtensionsApi | None, error_type: str, message: str) -> None:
    """`exit/error`, so that Lambda records why the extension stopped; best effort (the
    API may be what failed), and only once registered (before, there is no identifier)."""
    if api is None or api.identifier is None:
        return
    with contextlib.suppress(ExtensionsApiError):
        api.exit_error(error_type, message)


def _run(api: ExtensionsApi, environ: Mapping[str, str], log: JsonLog, started: float) -> int:
    server: ProxyServer | None = None
    try:
        # Listening before registering: the runtime starts once every extension has
        # registered, and the function's init code may call the proxy at once.
        try:
            server, tokens, config = start_proxy(environ, log)
            failure = None
        except StartFailed as err:
            failure = err
        except Exception as err:  # a bug: still reported to Lambda, which needs a register
            log.write("extension_failed", error_type=CRASHED, traceback=traceback.format_exc())
            failure = StartFailed(CRASHED, f"{type(err).__name__}: the proxy did not start")
        api.register()
        if failure is not None:
            log.write("extension_failed", error_type=failure.error_type, error=str(failure))
            api.init_error(failure.error_type, str(failure))
            return 1
        assert server is not None  # serving on its own threads since start()
        prefetch(tokens, config.routes, PREFETCH_SECONDS, log)
        log.write("extension_initialized", init_ms=round((time.monotonic() - started) * 1000))
        while True:
            event = api.next_event()
            if event.event_type == SHUTDOWN:
                server.shutdown(max(0.0, event.seconds_left() - EXIT_MARGIN_SECONDS))
                log.write("extension_stopped", reason=event.shutdown_reason)
                return 0
    except _Terminated as err:
        log.write("extension_stopped", reason=str(err))
        return 0
    finally:
        if server is not None:
            server.shutdown(1.0)  # a no-op after the SHUTDOWN event's
