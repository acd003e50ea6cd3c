"""tokex.extension.api against the Extensions API emulation (tests/support)."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading

import pytest

from tests.support.lambda_extensions_api import ExtensionsApiEmulator
from tokex.extension.api import (
    EXTENSION_NAME,
    INVOKE,
    SHUTDOWN,
    Event,
    ExtensionsApi,
    ExtensionsApiError,
)


@pytest.fixture
def emulator() -> ExtensionsApiEmulator:
    with ExtensionsApiEmulator() as emulator:
        yield emulator


def next_in_thread(api: ExtensionsApi) -> tuple[threading.Thread, list[Event]]:
    events: list[Event] = []
    thread = threading.Thread(target=lambda: events.append(api.next_event()), daemon=True)
    thread.start()
    return thread, events


def test_register_names_the_extension_and_its_events(emulator: ExtensionsApiEmulator) -> None:
    api = ExtensionsApi(emulator.runtime_api)
    api.register()
    [call] = emulator.calls_to("register")
    assert call.headers["lambda-extension-name"] == EXTENSION_NAME == "tokex-proxy"
    assert call.body == {"events": ["INVOKE", "SHUTDOWN"]}
    # Kept: every later call carries the identifier Lambda assigned.
    assert api.identifier is not None
    assert api.identifier == emulator.only_extension().identifier


def test_next_blocks_until_an_invoke_then_a_shutdown(emulator: ExtensionsApiEmulator) -> None:
    api = ExtensionsApi(emulator.runtime_api)
    api.register()
    thread, events = next_in_thread(api)
    emulator.wait_until_waiting(timeout=5)
    assert events == []  # still blocked: no event yet
    request_id = emulator.invoke()
    thread.join(timeout=5)
    [invoke] = events
    assert (invoke.event_type, invoke.request_id) == (INVOKE, request_id)
    assert 0 < invoke.seconds_left() <= 3

    thread, events = next_in_thread(api)
    emulator.wait_until_waiting(timeout=5)
    deadline = emulator.shutdown(reason="spindown", deadline_in_ms=1500)
    thread.join(timeout=5)
    [shutdown] = events
    assert (shutdown.event_type, shutdown.shutdown_reason) == (SHUTDOWN, "spindown")
    assert shutdown.deadline_ms == deadline
    assert shutdown.seconds_left(now=deadline / 1000 - 1.0) == pytest.approx(1.0)
    call = emulator.calls_to("event/next")[-1]
    assert call.headers["lambda-extension-identifier"] == api.identifier


def test_an_extension_past_the_shutdown_deadline_is_killed_and_fails_the_test(
    emulator: ExtensionsApiEmulator,
) -> None:
    """The emulator plays Lambda's side of SHUTDOWN: a process still running at the event's
    deadline is ended with SIGKILL, and the test that stopped it fails; one that exited by
    then gives its exit status."""
    ignores_shutdown = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = emulator.shutdown(deadline_in_ms=200)
        with pytest.raises(AssertionError, match="still running at the SHUTDOWN event's"):
            emulator.exit_status_by(ignores_shutdown, deadline)
        assert ignores_shutdown.returncode == -signal.SIGKILL
    finally:
        if ignores_shutdown.poll() is None:
            ignores_shutdown.kill()
            ignores_shutdown.wait()

    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    assert emulator.exit_status_by(exited, emulator.shutdown()) == 3


def test_next_refuses_to_run_before_register(emulator: ExtensionsApiEmulator) -> None:
    with pytest.raises(ExtensionsApiError, match="has not registered"):
        ExtensionsApi(emulator.runtime_api).next_event()
    assert emulator.calls == []


def test_an_unknown_identifier_is_refused(emulator: ExtensionsApiEmulator) -> None:
    api = ExtensionsApi(emulator.runtime_api)
    api.identifier = "not-registered"
    with pytest.raises(ExtensionsApiError, match="event/next failed: 403"):
        api.next_event()


def test_register_after_the_init_phase_is_refused(emulator: ExtensionsApiEmulator) -> None:
    emulator.invoke()  # the platform moved on: Init is over
    with pytest.raises(ExtensionsApiError, match="register failed: 403"):
        ExtensionsApi(emulator.runtime_api).register()


@pytest.mark.parametrize(
    ("report", "path"), [("init_error", "init/error"), ("exit_error", "exit/error")]
)
def test_errors_carry_their_type_in_the_header_and_the_body(
    emulator: ExtensionsApiEmulator, report: str, path: str
) -> None:
    api = ExtensionsApi(emulator.runtime_api)
    api.register()
    getattr(api, report)("Extension.ConfigInvalid", "no routes")
    [call] = emulator.calls_to(path)
    assert call.headers["lambda-extension-identifier"] == api.identifier
    assert call.headers["lambda-extension-function-error-type"] == "Extension.ConfigInvalid"
    assert call.body == {
        "errorMessage": "no routes",
        "errorType": "Extension.ConfigInvalid",
        "stackTrace": [],
    }


def test_an_unreachable_api_is_an_extensions_api_error(refused_port: int) -> None:
    with pytest.raises(ExtensionsApiError, match="unreachable") as unreachable:
        ExtensionsApi(f"127.0.0.1:{refused_port}").register()
    # Reported on the refusal itself: not after waiting out the call's timeout.
    assert isinstance(unreachable.value.__cause__, ConnectionRefusedError)


@pytest.mark.parametrize("value", ["", "localhost", "127.0.0.1:", "127.0.0.1:port"])
def test_the_runtime_api_must_be_host_and_port(value: str) -> None:
    with pytest.raises(ExtensionsApiError, match="not host:port"):
        ExtensionsApi(value)


@pytest.mark.parametrize(
    ("document", "why"),
    [
        ([], "other than a JSON object"),
        ({"deadlineMs": 1}, "without eventType"),
        ({"eventType": "INVOKE"}, "no integer deadlineMs"),
        ({"eventType": "INVOKE", "deadlineMs": "1"}, "no integer deadlineMs"),
        ({"eventType": "SHUTDOWN", "deadlineMs": True}, "no integer deadlineMs"),
        # Past a float's range the deadline's arithmetic raised OverflowError.
        ({"eventType": "SHUTDOWN", "deadlineMs": 10**400}, "deadlineMs is out of range"),
        ({"eventType": "SHUTDOWN", "deadlineMs": -1}, "deadlineMs is out of range"),
    ],
)
def test_a_malformed_event_is_refused(document: object, why: str) -> None:
    with pytest.raises(ExtensionsApiError, match=why):
        Event.from_json(document)


def test_an_answer_nested_past_the_parser_is_refused_not_raised() -> None:
    """A body nested deeper than json's recursion limit raised RecursionError out of the
    client, past every handler of ExtensionsApiError."""

    class Deep(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b"[" * 200_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deep) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        api = ExtensionsApi(f"127.0.0.1:{server.server_address[1]}")
        api.identifier = "registered"
        try:
            with pytest.raises(ExtensionsApiError, match="other than a JSON object"):
                api.next_event()
        finally:
            server.shutdown()
