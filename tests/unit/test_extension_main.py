"""tokex.extension.main: the configuration from the construct's variables, the bounded
prefetch, and init/error for a configuration the proxy refuses (the whole life of the
process is tests/system/test_extension.py)."""

from __future__ import annotations

import errno
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ports
from tests.support.lambda_extensions_api import ExtensionsApiEmulator
from tokex.extension import main as extension
from tokex.proxy.config import ProxyConfigError, Route
from tokex.proxy.log import JsonLog
from tokex.proxy.tokens import TokenUnavailable

ROUTE = {"prefix": "/", "upstream": "https://orders.example.com", "audience": "orders"}


def variables(**overrides: str) -> dict[str, str]:
    return {
        "TOKEX_PROXY_ENDPOINT": "https://auth.example.com",
        "TOKEX_PROXY_ROUTES": json.dumps([ROUTE]),
        **overrides,
    }


def test_the_variables_make_a_configuration_on_port_2780() -> None:
    """Not 2772 (the AWS AppConfig Agent Lambda extension's default) nor 2773 (the AWS
    Parameters and Secrets Lambda extension's): a function may have those too."""
    config = extension.load_config(variables())
    assert config.endpoint == "https://auth.example.com"
    assert [str(a) for a in config.listeners.values()] == ["127.0.0.1:2780"]
    [route] = config.routes
    assert (route.audience, route.upstream, route.prefix) == (
        "orders",
        "https://orders.example.com",
        "/",
    )


def test_the_listener_can_be_moved() -> None:
    config = extension.load_config(variables(TOKEX_PROXY_LISTEN="127.0.0.1:2999"))
    assert [str(a) for a in config.listeners.values()] == ["127.0.0.1:2999"]


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        ({"TOKEX_PROXY_ROUTES": ""}, "TOKEX_PROXY_ROUTES", "missing"),
        ({"TOKEX_PROXY_ROUTES": "[{"}, "TOKEX_PROXY_ROUTES", "not valid JSON"),
        (
            {"TOKEX_PROXY_ROUTES": '[{"audience": "a", "audience": "b"}]'},
            "TOKEX_PROXY_ROUTES",
            'repeats the key "audience"',
        ),
        ({"TOKEX_PROXY_ROUTES": "{}"}, "TOKEX_PROXY_ROUTES", "non-empty list"),
        # Bytes that are not UTF-8 (a lone surrogate in os.environ): was Extension.Crashed.
        ({"TOKEX_PROXY_ROUTES": '[{"prefix": "/\udcff"}]'}, "TOKEX_PROXY_ROUTES", "not valid"),
        (
            {"TOKEX_PROXY_ROUTES": json.dumps([{**ROUTE, "upstream": "http://orders"}])},
            "TOKEX_PROXY_ROUTES: routes[0].upstream",
            "plain http",
        ),
        ({"TOKEX_PROXY_ENDPOINT": "http://auth.example.com"}, "TOKEX_PROXY_ENDPOINT", "http"),
        ({"TOKEX_PROXY_LISTEN": "0.0.0.0:2780"}, "TOKEX_PROXY_LISTEN", "not a loopback"),
        # A password in a refused URL is not repeated (init/error lands in the logs).
        (
            {"TOKEX_PROXY_ENDPOINT": "https://user:p4ss@auth.example.com"},
            "TOKEX_PROXY_ENDPOINT",
            "'https://***@auth.example.com' must be a plain base URL",
        ),
        (
            {"TOKEX_PROXY_ROUTES": json.dumps([{**ROUTE, "upstream": "https://u:p4ss@orders"}])},
            "TOKEX_PROXY_ROUTES: routes[0].upstream",
            "'https://***@orders' must be a base URL",
        ),
        # Both ways of configuring it at once: one side would be ignored without a word.
        ({"TOKEX_PROXY_CONFIG": "/var/task/p.toml"}, "TOKEX_PROXY_CONFIG", "not both"),
    ],
)
def test_a_refused_variable_is_named(overrides: dict[str, str], key: str, message: str) -> None:
    with pytest.raises(ProxyConfigError) as refused:
        extension.load_config(variables(**overrides))
    assert refused.value.key == key
    assert message in refused.value.message


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"TOKEX_PROXY_LISTEN": "0.0.0.0:2780"}, "TOKEX_PROXY_LISTEN"),
        (
            {
                "TOKEX_PROXY_ROUTES": json.dumps(
                    [
                        {
                            "upstream": ROUTE["upstream"],
                            "audience": "orders",
                            "listen": "10.0.0.5:9000",
                        }
                    ]
                )
            },
            "TOKEX_PROXY_ROUTES: routes[0].listen",
        ),
    ],
)
def test_a_listener_off_loopback_is_refused_without_a_setting_no_variable_has(
    overrides: dict[str, str], key: str
) -> None:
    """`tokex proxy`'s hint (allow_non_loopback, --allow-non-loopback) names a setting
    that no extension variable has: the extension's says where the function reaches it."""
    with pytest.raises(ProxyConfigError) as refused:
        extension.load_config(variables(**overrides))
    assert refused.value.key == key
    assert "is not a loopback address" in refused.value.message
    assert "the function reaches its extension on loopback" in refused.value.message
    assert "allow_non_loopback" not in refused.value.message


def test_the_construct_checks_all_but_the_files_it_cannot_see_yet() -> None:
    """check_files=False: the CDK construct's check at synth, where the function's
    package (a route's ca_file) does not exist yet; the extension's at Init has it."""
    routes = json.dumps([{**ROUTE, "ca_file": "certs/ca.pem"}])
    with pytest.raises(ProxyConfigError) as refused:
        extension.config_from_variables(variables(TOKEX_PROXY_ROUTES=routes))
    assert refused.value.key == "TOKEX_PROXY_ROUTES: routes[0].ca_file"
    assert refused.value.file_not_found
    config = extension.config_from_variables(
        variables(TOKEX_PROXY_ROUTES=routes), check_files=False
    )
    assert config.routes[0].ca_file == "/var/task/certs/ca.pem"
    plain = json.dumps([{**ROUTE, "ca_file": "certs/ca.pem", "upstream": "http://orders"}])
    with pytest.raises(ProxyConfigError, match="plain http"):
        extension.config_from_variables(variables(TOKEX_PROXY_ROUTES=plain), check_files=False)


def test_relative_paths_are_the_function_packages_whatever_lambda_task_root_says() -> None:
    """Lambda withholds LAMBDA_TASK_ROOT from extensions (Extensions API reference): a
    relative ca_file or token_file is under /var/task, where the function's package is,
    and a LAMBDA_TASK_ROOT in the environment (a test's, a local emulator's) changes
    nothing."""
    eks = {"evidence": "eks", "token_file": "token.jwt"}
    routes = json.dumps([{**ROUTE, "ca_file": "certs/ca.pem", **eks}])
    environ = variables(TOKEX_PROXY_ROUTES=routes, LAMBDA_TASK_ROOT="/elsewhere")
    [route] = extension.config_from_variables(environ, check_files=False).routes
    assert (route.ca_file, route.token_file) == ("/var/task/certs/ca.pem", "/var/task/token.jwt")


def test_without_the_variables_the_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "proxy.json"
    path.write_text(
        json.dumps({"endpoint": "https://auth.example.com", "listen": "127.0.0.1:2780",
                    "routes": [ROUTE]}),
        encoding="utf-8",
    )  # fmt: skip
    assert extension.load_config({"TOKEX_PROXY_CONFIG": str(path)}).routes[0].audience == "orders"
    with pytest.raises(ProxyConfigError) as missing:
        extension.load_config({"TOKEX_PROXY_CONFIG": str(tmp_path / "absent.toml")})
    assert missing.value.key == str(tmp_path / "absent.toml") and missing.value.file_not_found
    # Neither variables nor the default file: the likeliest first mistake, named as such.
    with pytest.raises(ProxyConfigError) as nothing:
        extension.load_config({})
    assert str(nothing.value) == (
        "TOKEX_PROXY_ROUTES: no configuration: set TOKEX_PROXY_ENDPOINT and TOKEX_PROXY_ROUTES"
        " (the CDK construct does), or ship /var/task/tokex-proxy.toml (TOKEX_PROXY_CONFIG"
        " names another)"
    )
    # The file names its own listen: the variable would be ignored, so it is refused.
    with pytest.raises(ProxyConfigError, match="TOKEX_PROXY_LISTEN: goes with TOKEX_PROXY"):
        extension.load_config({"TOKEX_PROXY_CONFIG": str(path), "TOKEX_PROXY_LISTEN": "x:1"})


# A held fetch answers after this long, far past the prefetch budgets of these tests.
HOLD_SECONDS = 10.0
# The outcome of a fetch that answers once every audience has been asked: at once if the
# fetches run in parallel, else only after HOLD_SECONDS.
WHEN_ALL_ASKED = "when all asked"


class FakeTokens:
    """A token source whose outcome per audience is a value, an exception, WHEN_ALL_ASKED,
    or (an Event) a hold: answered `late` after HOLD_SECONDS unless the Event is set first,
    as the test ends."""

    def __init__(self, outcomes: dict[str, Any]) -> None:
        self.outcomes = outcomes
        self.asked: list[str] = []
        self.lock = threading.Condition()

    def token(self, route: Route) -> str:
        with self.lock:
            self.asked.append(route.audience)
            self.lock.notify_all()
        outcome = self.outcomes[route.audience]
        if outcome == WHEN_ALL_ASKED:
            with self.lock:
                every = set(self.outcomes)
                if self.lock.wait_for(lambda: set(self.asked) == every, HOLD_SECONDS):
                    return "token"
            return "late"
        if isinstance(outcome, threading.Event):
            outcome.wait(HOLD_SECONDS)
            return "late"
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)


def routes_for(*audiences: str) -> tuple[Route, ...]:
    document = [{**ROUTE, "prefix": f"/{i}", "audience": a} for i, a in enumerate(audiences)]
    return extension.load_config(variables(TOKEX_PROXY_ROUTES=json.dumps(document))).routes


def prefetch_log(tokens: FakeTokens, routes: tuple[Route, ...], budget: float) -> list[dict]:
    stream = io.StringIO()
    extension.prefetch(tokens, routes, budget, JsonLog(stream))  # type: ignore[arg-type]
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_prefetch_is_parallel_bounded_and_never_raises() -> None:
    hung = threading.Event()
    tokens = FakeTokens(
        {
            "ok": "token",
            "refused": TokenUnavailable(403, "access_denied", "no policy", None),
            "down": TokenUnavailable(503, "temporarily_unavailable", "unreachable", 1),
            "bug": RuntimeError("boom"),
            "slow": WHEN_ALL_ASKED,  # done within the budget only if all run at once
            "hung": hung,  # answers after HOLD_SECONDS, ten times the budget
        }
    )
    started = time.monotonic()
    try:
        records = prefetch_log(tokens, routes_for(*tokens.outcomes), budget=1.0)
    finally:
        hung.set()  # the held fetch's thread ends with the test
    assert time.monotonic() - started >= 1.0  # waited the budget for the hung fetch
    # The budget ended the wait: one that waited for the hung fetch would have logged its
    # late answer as "ok"; fetches one after the other would have left "slow" not done.
    outcomes = {r["audience"]: r["outcome"] for r in records}
    assert outcomes == {
        "ok": "ok",
        "refused": "403 access_denied",
        "down": "503 temporarily_unavailable",
        "bug": "RuntimeError: boom",
        "slow": "ok",
        "hung": "not done in 1.0 s",
    }
    assert {r["event"] for r in records} == {"extension_prefetch"}
    assert "token" not in json.dumps(records).replace("not done", "")  # never the token


def test_prefetch_asks_once_per_distinct_token() -> None:
    tokens = FakeTokens({"orders": "token", "stock": "token"})
    prefetch_log(tokens, routes_for("orders", "orders", "stock"), budget=1.0)
    assert sorted(tokens.asked) == ["orders", "stock"]


def test_outside_lambda_it_exits_1_without_registering(capsys: pytest.CaptureFixture) -> None:
    assert extension.main({}) == 1
    assert "AWS_LAMBDA_RUNTIME_API is not set" in capsys.readouterr().err


@pytest.fixture
def free_port() -> int:
    return ports.free_port()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield taken.getsockname()[1]


@pytest.mark.parametrize(
    ("case", "error_type", "message"),
    [
        ("no routes", "Extension.ConfigInvalid", "TOKEX_PROXY_ROUTES: must be a non-empty list"),
        ("no session token", "Extension.ConfigInvalid", "AWS_SESSION_TOKEN is not set"),
        ("port taken", "Extension.ListenFailed", "cannot listen"),
    ],
)
def test_a_start_failure_is_reported_as_init_error(
    case: str, error_type: str, message: str, busy_port: int, capsys: pytest.CaptureFixture
) -> None:
    environ = {**variables(), "AWS_SESSION_TOKEN": "session-token"}
    if case == "no routes":
        environ["TOKEX_PROXY_ROUTES"] = "[]"
    elif case == "no session token":
        del environ["AWS_SESSION_TOKEN"]
    else:
        environ["TOKEX_PROXY_LISTEN"] = f"127.0.0.1:{busy_port}"
    with ExtensionsApiEmulator() as platform:
        assert extension.main({**environ, "AWS_LAMBDA_RUNTIME_API": platform.runtime_api}) == 1
        [report] = platform.calls_to("init/error")
        assert report.headers["lambda-extension-function-error-type"] == error_type
        assert message in report.body["errorMessage"]
        assert platform.calls_to("event/next") == []
        assert len(platform.calls_to("register")) == 1
    [failed] = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert (failed["event"], failed["error_type"]) == ("extension_failed", error_type)


@pytest.mark.parametrize("listen", ["default", "TOKEX_PROXY_LISTEN"])
def test_the_default_port_taken_says_another_extension_may_hold_it(
    listen: str, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default port in use is likely another extension's (a function has several):
    the init error says so, and which variable moves the proxy. A port the variable named
    is the user's choice, said as is. (The default is moved to the busy port here: the
    real one may be free or not on this machine.)"""
    address = f"127.0.0.1:{busy_port}"
    environ = {**variables(), "AWS_SESSION_TOKEN": "session-token"}
    if listen == "default":
        monkeypatch.setattr(extension, "DEFAULT_LISTEN", address)
    else:
        environ["TOKEX_PROXY_LISTEN"] = address
    with ExtensionsApiEmulator() as platform:
        assert extension.main({**environ, "AWS_LAMBDA_RUNTIME_API": platform.runtime_api}) == 1
        [report] = platform.calls_to("init/error")
    message = report.body["errorMessage"]
    assert message.startswith(f"cannot listen: [Errno {errno.EADDRINUSE}] listen {address}: ")
    hint = (
        f"; another extension may hold {address}, the default: TOKEX_PROXY_LISTEN chooses another"
    )
    assert message.endswith(hint) == (listen == "default"), message


def test_an_unusable_event_after_init_is_reported_as_exit_error(
    free_port: int, capsys: pytest.CaptureFixture
) -> None:
    """After registering, an answer the extension cannot use ends it with exit/error, so
    Lambda records why; before, it exited 1 and reported nothing."""
    environ = {
        **variables(TOKEX_PROXY_LISTEN=f"127.0.0.1:{free_port}"),
        "AWS_SESSION_TOKEN": "session-token",
    }
    with ExtensionsApiEmulator() as platform:
        environ["AWS_LAMBDA_RUNTIME_API"] = platform.runtime_api

        def send_the_event() -> None:  # the platform's side; main() needs the main thread
            platform.wait_until_waiting(timeout=10)
            platform._send("SHUTDOWN", {"eventType": "SHUTDOWN", "deadlineMs": 10**400})

        sender = threading.Thread(target=send_the_event, daemon=True)
        sender.start()
        assert extension.main(environ) == 1
        sender.join(10)
        [report] = platform.calls_to("exit/error")
        assert report.headers["lambda-extension-function-error-type"] == "Extension.ApiFailed"
        assert "deadlineMs is out of range" in report.body["errorMessage"]
    [failed] = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if '"extension_failed"' in line
    ]
    assert failed["error_type"] == "Extension.ApiFailed"


def test_a_crash_before_registering_is_still_reported_as_init_error(
    monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    """A failure no check foresaw, while the proxy starts (injected here), left Lambda with
    nothing: there was no identifier to report it with yet. The extension registers first."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("an injected fault")

    monkeypatch.setattr(extension, "RouteTokens", broken)
    environ = {**variables(), "AWS_SESSION_TOKEN": "session-token"}
    with ExtensionsApiEmulator() as platform:
        assert extension.main({**environ, "AWS_LAMBDA_RUNTIME_API": platform.runtime_api}) == 1
        [report] = platform.calls_to("init/error")
        assert report.headers["lambda-extension-function-error-type"] == "Extension.Crashed"
        assert report.body["errorMessage"] == "RuntimeError: the proxy did not start"
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert "an injected fault" in logged[0]["traceback"]  # the log has the whole story


@pytest.mark.parametrize(
    ("raw", "seconds"), [(None, 2.5), ("", 2.5), ("0.5", 0.5), ("10", 10.0), ("4", 4.0)]
)
def test_the_exchange_timeout_stays_under_a_functions_timeout(raw, seconds) -> None:
    """A request with no valid token waits for the exchange: with the client's 10 s a
    hanging tokex timed out the function (Lambda's default is 3 s) instead of a 503."""
    environ = {} if raw is None else {"TOKEX_PROXY_EXCHANGE_TIMEOUT": raw}
    assert extension.exchange_timeout(environ) == seconds


@pytest.mark.parametrize(
    "raw", ["0", "0.4", "11", "nan", "inf", "soon", " 1", "1\n", "1_0", "+1.0", "\u0665", "1e0"]
)
def test_an_exchange_timeout_out_of_range_is_an_init_error(raw) -> None:
    with pytest.raises(extension.StartFailed) as failed:
        extension.exchange_timeout({"TOKEX_PROXY_EXCHANGE_TIMEOUT": raw})
    assert failed.value.error_type == "Extension.ConfigInvalid"
    assert "TOKEX_PROXY_EXCHANGE_TIMEOUT must be 0.5 to 10 seconds" in str(failed.value)


def test_the_proxy_the_extension_starts_exchanges_within_that_timeout(free_port: int) -> None:
    environ = {
        "TOKEX_PROXY_ENDPOINT": "https://auth.example.com",
        "TOKEX_PROXY_ROUTES": json.dumps([ROUTE]),
        "TOKEX_PROXY_LISTEN": f"127.0.0.1:{free_port}",
        "TOKEX_PROXY_EXCHANGE_TIMEOUT": "1.5",
        "AWS_SESSION_TOKEN": "the-function's-session-token",
    }
    server, tokens, _ = extension.start_proxy(environ, JsonLog(io.StringIO()))
    try:
        [client] = tokens._clients.values()
        assert client._options["timeout"] == 1.5
    finally:
        server.shutdown(1)


OWN_LISTENER = {"upstream": "https://orders.example.com", "audience": "orders"}


@pytest.mark.parametrize(
    ("variables", "key"),
    [
        (
            {"TOKEX_PROXY_ROUTES": json.dumps([ROUTE]), "TOKEX_PROXY_LISTEN": "127.0.0.1:0"},
            "TOKEX_PROXY_LISTEN",
        ),
        (
            {"TOKEX_PROXY_ROUTES": json.dumps([ROUTE, {**OWN_LISTENER, "listen": "127.0.0.1:0"}])},
            "TOKEX_PROXY_ROUTES: routes[1].listen",
        ),
    ],
)
def test_a_listener_on_a_port_the_system_picks_is_refused(
    variables: dict[str, str], key: str
) -> None:
    """The function sends its requests to a port it is told; one picked for the
    extension it cannot learn: the top-level listener's and a route's own alike."""
    with pytest.raises(ProxyConfigError) as refused:
        extension.load_config({**variables, "TOKEX_PROXY_ENDPOINT": "https://auth.example.com"})
    assert str(refused.value) == (
        f"{key}: name a port: the function cannot learn one picked for it"
    )


def test_two_listeners_on_one_address_spelled_two_ways_are_refused_at_synth_too() -> None:
    """`127.0.0.1:P` and `localhost:P` passed the check the construct runs at synth, and
    every Init failed Extension.ListenFailed; they are one address, refused by key."""
    own = {**OWN_LISTENER, "listen": "localhost:2790"}
    environ = variables(
        TOKEX_PROXY_ROUTES=json.dumps([ROUTE, own]), TOKEX_PROXY_LISTEN="127.0.0.1:2790"
    )
    with pytest.raises(ProxyConfigError) as refused:
        extension.config_from_variables(environ, check_files=False)
    assert str(refused.value) == (
        "TOKEX_PROXY_ROUTES: routes[1].listen: localhost:2790 is already listen's"
        " (127.0.0.1:2790: the same address)"
    )


FILE_ROUTE = '[[routes]]\nprefix = "/"\nupstream = "https://a.example"\naudience = "a"\n'
OWN_ROUTE = '[[routes]]\nlisten = "{}"\nupstream = "https://b.example"\naudience = "b"\n'


@pytest.mark.parametrize(
    ("top", "routes", "key", "message"),
    [
        ('listen = "127.0.0.1:0"', FILE_ROUTE, "listen", "name a port: the function cannot"),
        (
            'listen = "127.0.0.1:2780"',
            FILE_ROUTE + OWN_ROUTE.format("127.0.0.1:0"),
            "routes[1].listen",
            "name a port: the function cannot",
        ),
        (
            'listen = "127.0.0.1:2780"\nsecret_file = "/tmp/proxy-secret"',
            FILE_ROUTE,
            "secret_file",
            "not used in Lambda: the secret of /.tokex/token is the function's"
            " AWS_SESSION_TOKEN (in X-Tokex-Proxy-Secret), and no file is written",
        ),
    ],
)
def test_a_file_is_refused_what_the_extension_cannot_do(
    tmp_path: Path, top: str, routes: str, key: str, message: str
) -> None:
    """As the variables are: a port the system picks (the function could not learn it);
    and a secret_file, which was ignored without a word (the secret is the session
    token)."""
    path = tmp_path / "proxy.toml"
    path.write_text(f'endpoint = "https://auth.example.com"\n{top}\n{routes}', encoding="utf-8")
    with pytest.raises(ProxyConfigError) as refused:
        extension.load_config({"TOKEX_PROXY_CONFIG": str(path)})
    assert refused.value.key == key
    assert refused.value.message.startswith(message)
