"""The tokex proxy as a Lambda extension: `python -m tokex.extension` in a subprocess, as
Lambda starts it, against the Extensions API emulation (tests/support) playing the
platform and the local system playing tokex, with the demo workload's credentials (in
Lambda: the function role's session, whose token is also the proxy's secret)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support.exchange_handler import cold_exchange_handler
from tests.support.lambda_extensions_api import ExtensionsApiEmulator
from tests.support.loopback import LoopbackServer, QuietHandler, TcpServer, serving
from tests.support.ports import free_port
from tests.system.endpoints import post, sign
from tokex.client.signing import encode_subject_token
from tokex.extension.main import PREFETCH_SECONDS
from tokex.local.front import Answer, bind_front
from tokex.local.runner import LocalSystem
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

AUDIENCE = "demo-api"
SCOPES = ["demo:read"]
SECRET_HEADER = "X-Tokex-Proxy-Secret"
STARTUP_SECONDS = 20.0  # a cold interpreter importing the client on a busy 2-core machine


@dataclass
class Extension:
    """The extension process, its emulated platform and its proxy's address."""

    process: subprocess.Popen[str]
    platform: ExtensionsApiEmulator
    url: str
    secret: str
    lines: list[str] = field(default_factory=list)

    def token(self, secret: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
        headers = {} if secret is None else {SECRET_HEADER: secret}
        request = urllib.request.Request(
            f"{self.url}/.tokex/token?audience={AUDIENCE}", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as answer:
            return answer.code, dict(answer.headers), json.loads(answer.read())

    def events(self, name: str) -> list[dict[str, Any]]:
        """The extension's log records of one event."""
        records = [json.loads(line) for line in list(self.lines) if line.startswith("{")]
        return [record for record in records if record.get("event") == name]

    def logged(self, name: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The records of an event the extension wrote before something the test saw (its
        call to the platform): the thread reading its output may not have them yet."""
        deadline = time.monotonic() + timeout
        while not (records := self.events(name)) and time.monotonic() < deadline:
            time.sleep(0.02)
        return records

    def stop(self, deadline_in_ms: int = 2000) -> None:
        """SHUTDOWN, by default with Lambda's deadline (2,000 ms with external extensions):
        the process must exit by it, with status 0 (else Lambda kills it, and so does the
        emulator)."""
        deadline = self.platform.shutdown(deadline_in_ms=deadline_in_ms)
        try:
            status = self.platform.exit_status_by(self.process, deadline)
        except AssertionError as killed:
            raise AssertionError(f"{killed}\n" + "\n".join(self.lines)) from None
        assert status == 0, "\n".join(self.lines)


def lambda_environment(system: LocalSystem, tmp_path: Path, **settings: str) -> dict[str, str]:
    """What Lambda gives an extension's process: the function role's credentials and
    region, nothing of this machine's AWS configuration, and no LAMBDA_TASK_ROOT (Lambda
    withholds it from extensions)."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "us-east-1",
        **system.deployment.workload.env(),
        **settings,
    }


def routes(listen_port: int, upstream: str | None = None) -> dict[str, str]:
    """The construct's variables for one route of `AUDIENCE`, the proxy on `listen_port`;
    without `upstream`, one that is never called (the test asks for tokens only)."""
    upstream = upstream or f"http://127.0.0.1:{free_port()}"
    return {
        "TOKEX_PROXY_ROUTES": json.dumps(
            [{"prefix": "/", "upstream": upstream, "audience": AUDIENCE, "scopes": SCOPES}]
        ),
        "TOKEX_PROXY_LISTEN": f"127.0.0.1:{listen_port}",
    }


@contextmanager
def extension(
    env: dict[str, str], port: int, command: tuple[str, ...] = ("-m", "tokex.extension")
) -> Iterator[Extension]:
    """The extension started as Lambda starts it, with `env`, its proxy on `port` (or with
    the interpreter's arguments `command`); killed if a test left it running."""
    with ExtensionsApiEmulator() as platform:
        env = {**env, "AWS_LAMBDA_RUNTIME_API": platform.runtime_api}
        process = subprocess.Popen(
            [sys.executable, *command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        running = Extension(process, platform, f"http://127.0.0.1:{port}", env["AWS_SESSION_TOKEN"])
        assert process.stdout is not None
        reader = threading.Thread(
            target=lambda: running.lines.extend(iter(process.stdout.readline, "")), daemon=True
        )
        reader.start()
        try:
            yield running
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
            reader.join(timeout=5)


def verified(system: LocalSystem, token: str, issuer: str) -> dict[str, Any]:
    keys = jwt.PyJWKClient(system.issuer + "/.well-known/jwks.json")
    return jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=["RS256", "ES256"],
        audience=AUDIENCE,
        issuer=issuer,
    )


# The upstream of a request in flight at SHUTDOWN answers it this long after it arrives:
# past the event's deadline (2 s, Extension.stop's), under the proxy's default grace (10 s).
LATE_ANSWER_SECONDS = 5.0


class LateUpstream(QuietHandler):
    """Answers `late`, LATE_ANSWER_SECONDS after the request came (or once released)."""

    protocol_version = "HTTP/1.1"
    arrived: threading.Event
    release: threading.Event

    def do_GET(self) -> None:
        self.arrived.set()
        self.release.wait(LATE_ANSWER_SECONDS)
        self.send_document(200, b"late", {})


@pytest.fixture
def late_upstream() -> Iterator[Any]:
    """A LateUpstream, its hold released as the test ends."""

    class Handler(LateUpstream):
        arrived, release = threading.Event(), threading.Event()

    with serving(LoopbackServer(Handler)) as server:
        server.handler = Handler  # type: ignore[attr-defined]
        try:
            yield server
        finally:
            Handler.release.set()


@pytest.mark.parametrize("configured_by", ["variables", "file"])
def test_the_extension_serves_its_prefetched_token_to_a_caller_with_the_secret(
    local_system: LocalSystem, tmp_path: Path, configured_by: str, late_upstream: Any
) -> None:
    port = free_port()
    if configured_by == "variables":  # as the CDK construct sets them
        settings = {"TOKEX_PROXY_ENDPOINT": local_system.issuer, **routes(port, late_upstream.url)}
    else:  # a file in the function's package
        config = tmp_path / "tokex-proxy.toml"
        config.write_text(
            f'endpoint = "{local_system.issuer}"\nlisten = "127.0.0.1:{port}"\n\n'
            f'[[routes]]\nprefix = "/"\nupstream = "{late_upstream.url}"\n'
            f'audience = "{AUDIENCE}"\nscopes = {json.dumps(SCOPES)}\n',
            encoding="utf-8",
        )
        settings = {"TOKEX_PROXY_CONFIG": str(config)}
    with extension(lambda_environment(local_system, tmp_path, **settings), port) as running:
        platform = running.platform
        registered = platform.wait_until_waiting(timeout=STARTUP_SECONDS)
        init_done = time.time()
        assert registered.name == "tokex-proxy"
        assert registered.events == {"INVOKE", "SHUTDOWN"}
        [prefetch] = running.logged("extension_prefetch")
        assert (prefetch["audience"], prefetch["outcome"]) == (AUDIENCE, "ok")

        time.sleep(1.1)  # a token fetched from now on would say so in its iat
        platform.invoke()
        platform.wait_until_waiting(timeout=5)

        status, headers, body = running.token(running.secret)
        assert status == 200, body
        assert headers["Cache-Control"] == "no-store"
        claims = verified(local_system, body["access_token"], local_system.issuer)
        assert claims["iat"] <= init_done  # issued at Init: the prefetched token
        assert claims["scope"] == "demo:read"
        assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 900

        for wrong in (None, "", running.secret + "x", "not-the-session-token"):
            status, _, body = running.token(wrong)
            assert (status, body["error"]) == (401, "unauthorized")
            assert "access_token" not in body

        # SHUTDOWN with a request in flight: the extension keeps to the event's deadline
        # (2 s: the late answer comes well past it, and still within the proxy's 10 s
        # default grace), and cuts the request rather than forward that answer.
        answers: list[Any] = []

        def in_flight() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request("GET", "/orders")
                answers.append(connection.getresponse().read())
            except (OSError, http.client.HTTPException) as cut:
                answers.append(cut)
            finally:
                connection.close()

        held = threading.Thread(target=in_flight, daemon=True)
        held.start()
        assert late_upstream.handler.arrived.wait(10)
        running.stop()
        held.join(10)
        [answer] = answers
        assert isinstance(answer, OSError | http.client.HTTPException), answer  # not b"late"
        assert platform.calls_to("init/error") == platform.calls_to("exit/error") == []
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the proxy stopped listening


def late_tokex(system: LocalSystem, port: int) -> Any:
    """The deployment's exchange coming up on `port`: a front whose issuer URL is its own
    (the client checks the discovery document names the endpoint it was given)."""
    issuer = f"http://127.0.0.1:{port}"
    front = bind_front(port)
    handler = cold_exchange_handler(
        system, TOKEX_ISSUER=issuer, TOKEX_TOKEN_ENDPOINT=f"{issuer}/token"
    )
    front.functions["/token"] = handler.lambda_handler
    discovery = json.dumps({"issuer": issuer, "token_endpoint": f"{issuer}/token"}).encode()

    def documents(key: str) -> Answer:
        if key == ".well-known/openid-configuration":
            return Answer(200, {"Content-Type": "application/json"}, discovery)
        return Answer(404, {"Content-Type": "application/json"}, b"{}")

    front.documents = documents
    threading.Thread(target=front.serve_forever, args=(0.05,), daemon=True).start()
    return front


def test_a_tokex_outage_at_init_never_fails_the_cold_start(
    local_system: LocalSystem, tmp_path: Path
) -> None:
    tokex_port, port = free_port(), free_port()  # nothing listens on tokex_port yet
    issuer = f"http://127.0.0.1:{tokex_port}"
    env = lambda_environment(local_system, tmp_path, TOKEX_PROXY_ENDPOINT=issuer, **routes(port))
    with extension(env, port) as running:
        platform = running.platform
        platform.wait_until_waiting(timeout=STARTUP_SECONDS)
        assert platform.calls_to("init/error") == []
        [prefetch] = running.logged("extension_prefetch")
        assert prefetch["outcome"].startswith("503 ")
        platform.invoke()
        platform.wait_until_waiting(timeout=5)

        status, headers, body = running.token(running.secret)
        assert status == 503, body
        assert set(body) == {"error", "error_description"}
        assert int(headers["Retry-After"]) >= 1

        front = late_tokex(local_system, tokex_port)
        try:
            deadline = time.monotonic() + 10
            while status != 200 and time.monotonic() < deadline:
                time.sleep(0.3)
                status, _, body = running.token(running.secret)
            assert status == 200, body
            verified(local_system, body["access_token"], issuer)
        finally:
            front.shutdown()
            front.server_close()
        running.stop()


# How long the hung tokex below holds each request before it answers a 503: past the
# prefetch bound and anything the extension may do meanwhile, within the exchange timeout
# the test gives the extension (10 s), so an Init or a SHUTDOWN that waited for the fetch
# would end after the answer, and the prefetch would log the 503.
HUNG_TOKEX_SECONDS = 8.0


class HungTokex(TcpServer):
    """A tokex that reads each request and answers a 503 only after HUNG_TOKEX_SECONDS,
    unless `release` (the test's end) closes the connection first; `answered` tells
    whether any answer went out."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.answered = threading.Event()
        super().__init__()

    def serve(self, connection: socket.socket, number: int) -> None:
        with connection, connection.makefile("rb") as reader:
            while reader.readline() not in (b"\r\n", b""):
                pass
            if self.release.wait(HUNG_TOKEX_SECONDS):
                return
            self.answered.set()
            body = b'{"error":"temporarily_unavailable","error_description":"late"}'
            connection.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )


def test_a_hung_tokex_holds_init_for_the_prefetch_bound_only(
    local_system: LocalSystem, tmp_path: Path
) -> None:
    """tokex takes the request and does not answer: Init waits PREFETCH_SECONDS, not
    the exchange's timeout, and SHUTDOWN still stops the extension at once. Both are told
    by what had happened when they ended (the hung tokex had not answered yet), not by
    the clock."""
    hung = HungTokex()
    try:
        env = lambda_environment(
            local_system,
            tmp_path,
            TOKEX_PROXY_ENDPOINT=hung.url,
            TOKEX_PROXY_EXCHANGE_TIMEOUT="10",
            **routes(port := free_port()),
        )
        with extension(env, port) as running:
            platform = running.platform
            platform.wait_until_waiting(timeout=STARTUP_SECONDS)
            assert not hung.answered.is_set(), "Init waited for the hung fetch"
            [register] = platform.calls_to("register")
            [first_next] = platform.calls_to("event/next")
            assert first_next.at - register.at >= PREFETCH_SECONDS - 0.1  # it did wait
            [prefetch] = running.logged("extension_prefetch")
            assert prefetch["outcome"] == f"not done in {PREFETCH_SECONDS} s"
            running.stop()
            assert not hung.answered.is_set(), "SHUTDOWN waited for the hung fetch"
    finally:
        hung.release.set()
        hung.stop()


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"TOKEX_PROXY_ROUTES": "[{"}, "TOKEX_PROXY_ROUTES: not valid JSON"),
        (
            {"TOKEX_PROXY_ROUTES": json.dumps([{"prefix": "/", "audience": AUDIENCE}])},
            "TOKEX_PROXY_ROUTES: routes[0].upstream: must be an https URL",
        ),
        ({"TOKEX_PROXY_CONFIG": "/nonexistent/tokex-proxy.toml"}, "no such file"),
    ],
)
def test_a_configuration_error_is_an_init_error(
    local_system: LocalSystem, tmp_path: Path, settings: dict[str, str], error: str
) -> None:
    if "TOKEX_PROXY_ROUTES" in settings:
        settings = {"TOKEX_PROXY_ENDPOINT": local_system.issuer, **settings}
    with extension(lambda_environment(local_system, tmp_path, **settings), 0) as running:
        assert running.process.wait(timeout=STARTUP_SECONDS) == 1
        platform = running.platform
        [report] = platform.calls_to("init/error")
        assert report.headers["lambda-extension-function-error-type"] == "Extension.ConfigInvalid"
        assert error in report.body["errorMessage"]
        assert platform.calls_to("event/next") == []


CALLERS = 16


def test_callers_during_the_prefetch_wait_for_its_one_exchange(
    local_system: LocalSystem, tmp_path: Path
) -> None:
    """The function's code calls the proxy while Init's prefetch is still waiting for
    tokex: sixteen callers at once wait for that exchange (RouteTokens' flight) rather than
    each making one, and every one gets the token it brought. The exchange is held until
    every caller has sent its request (not for a fixed time), and warmed first, so that
    the hold is what the prefetch waits."""
    tokex_port, port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{tokex_port}"
    front = late_tokex(local_system, tokex_port)
    try:
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token_type": SIGV4_TOKEN_TYPE,
            "subject_token": encode_subject_token(sign(local_system, issuer=issuer)),
            "audience": AUDIENCE,
        }
        status, _, body = post(f"{issuer}/token", urllib.parse.urlencode(form).encode())
        assert status == 200, body

        exchange = front.functions["/token"]
        audiences: list[list[str]] = []
        issued: list[str] = []
        arrived, release = threading.Event(), threading.Event()
        answered_at: list[float] = []

        def held_exchange(event: dict[str, Any], context: Any) -> dict[str, Any]:
            sent_form = urllib.parse.parse_qs(base64.b64decode(event["body"]).decode())
            audiences.append(sent_form["audience"])
            arrived.set()
            release.wait(STARTUP_SECONDS)
            result = exchange(event, context)
            issued.append(json.loads(result["body"]).get("access_token", ""))
            answered_at.append(time.monotonic())
            return result

        front.functions["/token"] = held_exchange
        env = lambda_environment(
            local_system, tmp_path, TOKEX_PROXY_ENDPOINT=issuer, **routes(port)
        )
        with extension(env, port) as running:
            assert arrived.wait(STARTUP_SECONDS), "\n".join(running.lines)
            start = threading.Barrier(CALLERS, timeout=10)
            sending = threading.Semaphore(0)

            def call(_: int) -> tuple[float, int, dict[str, Any]]:
                start.wait()
                sent = time.monotonic()
                sending.release()
                status, _, body = running.token(running.secret)
                return sent, status, body

            with ThreadPoolExecutor(CALLERS) as pool:
                asking = [pool.submit(call, n) for n in range(CALLERS)]
                for _ in range(CALLERS):
                    assert sending.acquire(timeout=30)
                time.sleep(0.2)  # their requests on the wire to the extension
                release.set()
                answers = [future.result(timeout=60) for future in asking]
            running.platform.wait_until_waiting(timeout=5)
            [prefetch] = running.logged("extension_prefetch")
            # Held past its budget on a slow machine, the prefetch is logged as not done
            # (its exchange goes on and fills the cache): the callers' outcome is the test.
            assert prefetch["audience"] == AUDIENCE
            assert prefetch["outcome"] in ("ok", "not done in 1.5 s"), prefetch
            assert audiences == [[AUDIENCE]], audiences  # the prefetch's, and no other
            [token] = issued
            [answered] = answered_at
            assert all(sent < answered for sent, _, _ in answers)  # all came during it
            assert [(status, body.get("access_token")) for _, status, body in answers] == [
                (200, token)
            ] * CALLERS
            running.stop()
    finally:
        front.shutdown()
        front.server_close()


class EchoUpstream(QuietHandler):
    """Answers each request with the target and the Authorization headers it got."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        authorization = self.headers.get_all("Authorization") or []
        echo = {"target": self.path, "authorization": authorization}
        self.send_document(200, json.dumps(echo).encode(), {"Content-Type": "application/json"})


def test_application_requests_at_once_each_get_their_own_answer_with_the_token(
    local_system: LocalSystem, tmp_path: Path
) -> None:
    """The function's code calling its API through the extension's listener, sixteen
    requests at once during an invocation: each caller gets the answer to its own request
    (the upstream echoes its target), each request with the prefetched token attached."""
    port = free_port()
    with serving(LoopbackServer(EchoUpstream)) as upstream:
        env = lambda_environment(
            local_system,
            tmp_path,
            TOKEX_PROXY_ENDPOINT=local_system.issuer,
            **routes(port, upstream.url),
        )
        with extension(env, port) as running:
            running.platform.wait_until_waiting(timeout=STARTUP_SECONDS)
            running.platform.invoke()
            running.platform.wait_until_waiting(timeout=5)
            start = threading.Barrier(CALLERS, timeout=10)

            def call(number: int) -> tuple[int, dict[str, Any]]:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                start.wait()
                try:
                    connection.request("GET", f"/orders/{number}")
                    response = connection.getresponse()
                    return response.status, json.loads(response.read())
                finally:
                    connection.close()

            with ThreadPoolExecutor(CALLERS) as pool:
                answers = list(pool.map(call, range(CALLERS)))
            running.stop()
    for number, (status, echo) in enumerate(answers):
        assert (status, echo["target"]) == (200, f"/orders/{number}"), echo
    assert [len(echo["authorization"]) for _, echo in answers] == [1] * CALLERS
    [authorization] = {echo["authorization"][0] for _, echo in answers}  # one token for all
    claims = verified(local_system, authorization.removeprefix("Bearer "), local_system.issuer)
    assert claims["scope"] == "demo:read"


def test_the_extension_exits_at_shutdown_without_the_interpreters_own_exit(
    local_system: LocalSystem, tmp_path: Path
) -> None:
    """After SHUTDOWN the process must be gone by the event's deadline, and the
    interpreter's own exit (atexit handlers, module teardown, collection) has no bound on
    a function's share of a vCPU: on a loaded machine it outlasted the margin the extension
    keeps, and Lambda's kill came first. The extension ends its process itself once its
    log is out, so not even an atexit handler that never returns holds it."""
    marker = tmp_path / "atexit-ran"
    command = (
        "-c",
        "import atexit, pathlib, runpy, time\n"
        f"atexit.register(lambda: (pathlib.Path({str(marker)!r}).touch(), time.sleep(60)))\n"
        "runpy.run_module('tokex.extension', run_name='__main__', alter_sys=True)\n",
    )
    port = free_port()
    env = lambda_environment(
        local_system, tmp_path, TOKEX_PROXY_ENDPOINT=local_system.issuer, **routes(port)
    )
    with extension(env, port, command) as running:
        running.platform.wait_until_waiting(timeout=STARTUP_SECONDS)
        running.stop()
        assert running.logged("extension_stopped")
    assert not marker.exists()
