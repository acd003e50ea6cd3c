"""The workload client refuses endpoints that could misuse what it signs, and caches
tokens: refreshed at 80 % of their lifetime, one exchange in flight per audience."""

from __future__ import annotations

import email.utils
import gc
import json
import math
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from tests.support.fake_issuer import (
    FakeIssuer,
    credential_process,
    fake_issuer,
    use_static_credentials,
    without_aws_set_up,
)
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tests.support.tls import HttpsServer, make_pki
from tokex import base64url, bounded_http
from tokex.client import token_client
from tokex.client.token_client import (
    MAX_FAILURE_HOLD_SECONDS,
    MAX_RESPONSE_BYTES,
    REFRESH_AT,
    TokenClient,
    TokenError,
    check_endpoint,
    discover,
    request_token,
)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://auth.example.com",  # plain http off loopback
        "ftp://auth.example.com",
        "https://user:pw@auth.example.com",
        "https://auth.example.com/?x=1",
        "https://",
    ],
)
def test_endpoint_must_be_https_base_url(endpoint: str) -> None:
    with pytest.raises(TokenError):
        check_endpoint(endpoint)


@pytest.mark.parametrize(
    ("endpoint", "issuer"),
    [
        ("https://auth.example.com/token", "https://auth.example.com"),
        ("https://auth.example.com/regions/eu-west-1/token", "https://auth.example.com"),
        ("https://auth.example.com/regions/eu-west-1/introspect/", "https://auth.example.com"),
        (
            "https://auth.example.com/tokex/regions/us-east-1/token",
            "https://auth.example.com/tokex",
        ),
        # Not a Region's path: only the endpoint itself is cut off.
        (
            "https://auth.example.com/regions/not-a-region/token",
            "https://auth.example.com/regions/not-a-region",
        ),
    ],
)
def test_an_issuer_endpoint_given_as_the_base_url_names_the_issuer(
    endpoint: str, issuer: str
) -> None:
    """A Region's own token endpoint (listed by a multi-Region discovery document) was
    answered with its Region's folder as "the issuer URL", which is no issuer."""
    with pytest.raises(TokenError, match=f"pass the issuer URL {re.escape(issuer)}$"):
        check_endpoint(endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://alice:s3cr3t@auth.example.com",
        "https://alice:s3/cr3t@auth.example.com",  # a password typed without its escapes
        "https://alice:s3#cr3t@auth.example.com",
        "https://alice:s3@cr3t@auth.example.com",
        "alice:s3cr3t@auth.example.com",  # no scheme: the fix suggested repeated it
        "https://alice:my s3cr3t@auth.example.com",
        "alice:my s3cr3t@auth.example.com",
        " https://alice:s3cr3t@auth.example.com",
        "https://alice:s3\tcr3t@auth.example.com",
    ],
)
def test_a_refused_endpoint_is_quoted_without_its_password(endpoint: str) -> None:
    """The refusal reaches stderr, logs and (in the extension) Lambda's init/error."""
    with pytest.raises(TokenError) as refused:
        check_endpoint(endpoint)
    assert "cr3t" not in str(refused.value) and "cr3t" not in (refused.value.url or "")
    assert "***@" in str(refused.value)


def test_loopback_http_and_https_are_accepted() -> None:
    assert check_endpoint("http://127.0.0.1:8787/") == "http://127.0.0.1:8787"
    assert check_endpoint("https://auth.example.com") == "https://auth.example.com"


@pytest.mark.parametrize(
    "endpoint", ["https://\u043f\u0440\u0438\u043c\u0435\u0440.test", "https://b\u00fccher.example"]
)
def test_a_host_that_is_not_ascii_is_refused_asking_for_its_a_label(endpoint: str) -> None:
    """urllib sent the Host header as Latin-1 bytes (`b\\xfccher.example`) or raised a bare
    UnicodeEncodeError; the A-label is the one spelling every library sends alike."""
    with pytest.raises(TokenError, match=r"give an internationalized name as its IDNA A-label"):
        request_token(endpoint, "orders-api")
    with pytest.raises(TokenError, match=r"give an internationalized name as its IDNA A-label"):
        discover(endpoint)  # the library's other entry point
    assert check_endpoint("https://xn--e1afmkfd.test") == "https://xn--e1afmkfd.test"


@pytest.fixture
def lookalike() -> Iterator[tuple[str, dict]]:
    """A loopback endpoint whose discovery document says what the test wants."""
    state: dict = {"status": 200, "document": {}, "location": None}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            headers = {"Content-Type": "application/json"}
            if state["location"]:
                headers["Location"] = state["location"]
            self.send_document(state["status"], json.dumps(state["document"]).encode(), headers)

    with serving(LoopbackServer(Handler)) as server:
        yield server.url, state


def test_discovered_issuer_must_be_the_endpoint(lookalike) -> None:
    url, state = lookalike
    state["document"] = {"issuer": url}
    assert discover(url).issuer == url
    state["document"] = {"issuer": "https://real-tokex.example.com"}
    with pytest.raises(TokenError, match="not this endpoint"):
        discover(url)


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, "temporarily_unavailable"), (502, "temporarily_unavailable"),
     (429, "temporarily_unavailable"), (500, "server_error"), (404, "not_tokex"),
     (200, "not_tokex")],
)  # fmt: skip
def test_an_outage_is_not_reported_as_not_tokex(lookalike, status: int, error: str) -> None:
    """API Gateway's `{"message": "Service Unavailable"}` said `not_tokex` with advice to
    pass another URL: automation keyed on the code took an outage for a wrong URL. (An
    OAuth-shaped 5xx keeps its own code.)"""
    url, state = lookalike
    document = {"error": "server_error"} if error == "server_error" else {"message": "Down"}
    state.update(status=status, document=document)
    with pytest.raises(TokenError) as failed:
        discover(url)
    assert failed.value.error == error
    assert ("tokex issuer" in str(failed.value)) is (error == "not_tokex")


def test_discovery_does_not_follow_redirects(lookalike) -> None:
    """The redirect points at a live endpoint whose document would name the first one (a
    host that does not resolve would fail either way): it is never asked."""
    url, state = lookalike
    asked: list[str] = []

    class Elsewhere(QuietHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = json.dumps({"issuer": url}).encode()
            self.send_document(200, body, {"Content-Type": "application/json"})

    with serving(LoopbackServer(Elsewhere)) as elsewhere:
        state.update(status=302, location=elsewhere.url + "/.well-known/openid-configuration")
        with pytest.raises(TokenError):
            discover(url)
    assert asked == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_whose_location_is_no_url_is_refused_as_any_redirect(
    lookalike, monkeypatch, status: int
) -> None:
    """urllib parsed the Location before asking whether to follow it: `http://[::1/x` was a
    bare ValueError ("Invalid IPv6 URL"), an internal error of `tokex token`."""
    url, state = lookalike
    state.update(status=status, location="http://[::1/x")
    with pytest.raises(TokenError) as refused:
        discover(url)
    assert (refused.value.error, refused.value.status) == ("not_tokex", status)
    assert f"answered HTTP {status} " in str(refused.value)

    use_static_credentials(monkeypatch)

    class Redirecting(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_document(status, b"", {"Location": "http://[oops"})

    with serving(LoopbackServer(Redirecting)) as server, pytest.raises(TokenError) as refused:
        request_token(server.url, "orders-api", issuer=server.url)
    assert (refused.value.error, refused.value.status) == ("not_tokex", status)
    assert f"{server.url}/token answered HTTP {status} " in str(refused.value)
    assert str(refused.value).endswith("not a tokex answer")


def test_an_error_answer_whose_body_stalls_is_a_token_error(monkeypatch) -> None:
    """Its status counts (a 5xx is failed over); the stall is no raw TimeoutError."""
    use_static_credentials(monkeypatch)

    class Stalling(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"error": ')
            self.wfile.flush()
            time.sleep(3)

    with serving(LoopbackServer(Stalling)) as server, pytest.raises(TokenError) as failed:
        request_token(server.url, "orders-api", issuer=server.url, timeout=0.5)
    assert failed.value.status == 503


# How long a trickled answer takes in all: 6 times the 1 s timeout of the tests below,
# and under the client's default 10 s, so that a client that bounds each read only, or
# that used its default instead of the 1 s given, ends with the whole (late) answer.
TRICKLE_SECONDS = 6.0


def trickle(handler: QuietHandler, data: bytes) -> None:
    """`data` a byte at a time, spread over TRICKLE_SECONDS: each read is short."""
    for byte in data:
        try:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        except OSError:
            return  # the client gave up
        time.sleep(TRICKLE_SECONDS / len(data))


class Trickling(QuietHandler):
    """A whole 200 with the token `late`, trickled."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"access_token": "late", "expires_in": 900}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        trickle(self, head.encode() + b"\r\n\r\n" + body)
        self.close_connection = True


def test_timeout_bounds_the_whole_call_not_each_read(monkeypatch) -> None:
    use_static_credentials(monkeypatch)
    with (
        serving(LoopbackServer(Trickling)) as server,
        pytest.raises(TokenError) as failed,  # not the token `late`
    ):
        request_token(server.url, "orders-api", issuer=server.url, timeout=1.0)
    assert (failed.value.error, str(failed.value)) == (
        "unreachable",
        f"cannot reach {server.url}/token: timed out",
    )


class TricklingError(QuietHandler):
    """A 503 whose body, an OAuth error `late_error`, is trickled."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"error": "late_error", "error_description": "late"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        trickle(self, body)


def test_timeout_bounds_reading_an_error_answer_too(monkeypatch) -> None:
    """The budget covered the answer's status line and headers, not an error body read
    afterwards: a 503 trickling its body held the call (and every caller waiting for the
    same token) for as long as the server liked. Cut off, the body is no OAuth error: the
    call ends with the status alone, not with the body's `late_error`."""
    use_static_credentials(monkeypatch)
    with serving(LoopbackServer(TricklingError)) as server, pytest.raises(TokenError) as failed:
        request_token(server.url, "orders-api", issuer=server.url, timeout=1.0)
    # The status still counts (failed over).
    assert (failed.value.status, failed.value.error) == (503, "temporarily_unavailable")


class CutOff(QuietHandler):
    """A 200 whose connection closes half-way through its Content-Length."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"access_token": "token-1", "expires_in": 900}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True


def test_an_answer_cut_off_is_no_answer_and_fails_over(monkeypatch) -> None:
    use_static_credentials(monkeypatch)
    with serving(LoopbackServer(CutOff)) as server, pytest.raises(TokenError) as failed:
        request_token(server.url, "orders-api", issuer=server.url)
    assert failed.value.error == "unreachable" and failed.value.status is None
    assert "broke off" in str(failed.value)
    assert token_client.fails_over(failed.value)


def answering(*bodies: bytes) -> type[QuietHandler]:
    """A token endpoint that answers 200 with each of `bodies` in turn (JSON)."""
    left = list(bodies)

    class Answering(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = left.pop(0) if len(left) > 1 else left[0]
            self.send_document(200, body, {"Content-Type": "application/json"})

    return Answering


@pytest.mark.parametrize(
    "answer",
    [
        '{"access_token": "evil\\r\\nX-Injected: 1", "expires_in": 900}',
        '{"access_token": "\\u001b]0;owned\\u0007", "expires_in": 900}',
        '{"access_token": "\\ud800", "expires_in": 900}',
        '{"access_token": "", "expires_in": 900}',
        '{"access_token": "a b", "expires_in": 900}',
        '{"access_token": "token-1", "expires_in": 1e999}',
        '{"access_token": "token-1", "expires_in": -5}',
        '{"access_token": "token-1", "expires_in": "900"}',
        '{"access_token": "token-1", "expires_in": true}',
        '{"access_token": "token-1", "expires_in": 900, "x": 1e400}',
        '{"access_token": "token-1", "expires_in": 900, "x": {"y": [-1e400]}}',
    ],
    ids=[
        "crlf",
        "escapes",
        "surrogate",
        "empty",
        "space",
        "infinite",
        "negative",
        "string",
        "bool",
        "infinite-member",  # `--json` printed `Infinity`, which is no JSON
        "nested-negative-infinity",
    ],
)
def test_an_answer_that_is_no_usable_token_is_refused(monkeypatch, answer: str) -> None:
    """It would go into Authorization headers (a CR LF injects a header; requests and
    httpx raise their own errors), onto a terminal, or into `--json` output as Infinity."""
    use_static_credentials(monkeypatch)

    with (
        serving(LoopbackServer(answering(answer.encode()))) as server,
        pytest.raises(TokenError) as failed,
    ):
        request_token(server.url, "orders-api", issuer=server.url)
    assert failed.value.error == "not_tokex"


def test_a_jwt_and_an_answer_without_expires_in_are_accepted(monkeypatch) -> None:
    use_static_credentials(monkeypatch)
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_"
    answers = [{"access_token": jwt_like, "expires_in": 900.5}, {"access_token": "t=="}]
    bodies = [json.dumps(answer).encode() for answer in answers]
    with serving(LoopbackServer(answering(*bodies))) as server:
        assert request_token(server.url, "a", issuer=server.url)["access_token"] == jwt_like
        assert request_token(server.url, "a", issuer=server.url)["access_token"] == "t=="


def test_https_issuer_verified_against_the_ca_store(monkeypatch, tmp_path) -> None:
    """The bounded transport keeps urllib's TLS: the default CA store verifies the issuer."""
    use_static_credentials(monkeypatch)
    pki = make_pki(tmp_path)
    issuer = FakeIssuer()

    class Issuer(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status, document = issuer.answer({})
            data = json.dumps(document).encode()
            self.send_document(status, data, {"Content-Type": "application/json"})

    with serving(HttpsServer(Issuer, pki.server)) as server:
        with pytest.raises(TokenError) as refused:  # the system's store: an unknown CA
            request_token(server.url, "orders-api", issuer=server.url)
        assert refused.value.error == "unreachable" and "CERTIFICATE" in str(refused.value)
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
        answer = request_token(server.url, "orders-api", issuer=server.url)
    assert answer["access_token"] == "token-1"


def test_a_process_that_turned_verification_off_still_verifies_the_issuer(
    monkeypatch, tmp_path
) -> None:
    """`ssl._create_default_https_context = ssl._create_unverified_context`, anywhere in
    the workload's process (a sitecustomize, a dependency, PYTHONHTTPSVERIFY=0 on some
    distributions), made the client hand the signed request to any certificate while
    requests, httpx and botocore in the same process still refused it."""
    use_static_credentials(monkeypatch)
    pki = make_pki(tmp_path)

    class Issuer(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_document(200, b'{"access_token": "t", "expires_in": 900}', {})

    monkeypatch.setattr(ssl, "_create_default_https_context", ssl._create_unverified_context)
    with serving(HttpsServer(Issuer, pki.server)) as server:
        with pytest.raises(TokenError) as refused:  # an unknown CA, as without the patch
            request_token(server.url, "orders-api", issuer=server.url)
        assert refused.value.error == "unreachable" and "CERTIFICATE" in str(refused.value)
        monkeypatch.setattr(ssl, "create_default_context", _unverified_context)
        with pytest.raises(TokenError, match="does not verify certificates"):
            request_token(server.url, "orders-api", issuer=server.url)


def _unverified_context(*args: object, **kwargs: object) -> ssl.SSLContext:
    return ssl._create_unverified_context()  # noqa: S323 (the hostile setting under test)


# The in-memory cache: refreshed at REFRESH_AT of the lifetime, one exchange per audience.


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer(monkeypatch) -> Iterator[FakeIssuer]:
    use_static_credentials(monkeypatch)
    with fake_issuer(expires_in=900) as running:
        yield running


def test_a_tokens_lifetime_counts_from_when_it_was_asked_for(monkeypatch) -> None:
    """tokex counts `expires_in` from when it issued the token, which may be long before
    its answer arrives: counted from the answer, a token would be served (stale_if_error,
    valid_token) after its `exp`."""
    use_static_credentials(monkeypatch)
    gate = threading.Event()
    with fake_issuer(expires_in=900, gate=gate) as slow:
        clock = FakeClock()
        client = TokenClient(slow.url, clock=clock, issuer=slow.url)
        asking = threading.Thread(target=client.token, args=("orders-api",))
        asking.start()
        while slow.exchanges == 0:  # the request has arrived
            time.sleep(0.01)
        clock.now += 30  # the answer takes 30 s to come
        gate.set()
        asking.join(timeout=30)
    last_valid = 1000.0 - token_client.ISSUED_TO_THE_SECOND + 900
    clock.now = last_valid - 0.001
    assert client.valid_token("orders-api") == "token-1"
    clock.now = last_valid
    assert client.valid_token("orders-api") is None


@pytest.mark.parametrize("sent", [1000.0, 1000.3, 1000.999])
def test_a_token_is_never_held_past_an_exp_dated_to_the_second(sent: float) -> None:
    """tokex dates a token to the whole second: asked for at 1000.3 (and issued in that
    second, its clock in step), it names `iat` 1000, `exp` 1900 and `expires_in` 900.
    Counted from the moment it was asked for, it was served until 1900.3, after its `exp`
    (a 401 from any verifier, Kong's allows no leeway)."""
    cached = token_client.CachedToken.from_response(
        {"access_token": "t", "expires_in": 900}, obtained_at=sent
    )
    exp = math.floor(sent) + 900
    assert cached.expires_at <= exp
    assert cached.refresh_at <= math.floor(sent) + 0.8 * 900


@pytest.mark.parametrize("expires_in", [1e300, 10**30, 43201])
def test_no_token_is_cached_longer_than_tokex_issues_them(expires_in: float) -> None:
    """An `expires_in` of 1e300 kept the token cached, and handed out, for ever."""
    cached = token_client.CachedToken.from_response(
        {"access_token": "t", "expires_in": expires_in}, obtained_at=100.0
    )
    started = 100.0 - token_client.ISSUED_TO_THE_SECOND
    assert cached.expires_at == started + 43200
    assert cached.refresh_at == started + 0.8 * 43200


def test_a_cached_tokens_repr_does_not_show_it() -> None:
    cached = token_client.CachedToken.from_response(
        {"access_token": "eyJsecret.claims.signature", "expires_in": 900}, obtained_at=0.0
    )
    assert "eyJsecret" not in repr(cached)


@pytest.mark.parametrize(
    ("status", "retry_after", "hold"),
    [(429, "30", 30), (503, None, token_client.FAILURE_HOLD_SECONDS), (503, "86400", 60),
     # Unreadable (its year overflows): the default hold, not an exchange per call.
     (503, "Mon, 01 Jan 99999999999999999999 00:00:00 GMT", token_client.FAILURE_HOLD_SECONDS)],
)  # fmt: skip
def test_a_failed_exchange_is_the_answer_until_its_retry_after(
    monkeypatch, status: int, retry_after: str | None, hold: float
) -> None:
    """With no token to stand in, every call had started an exchange of its own the moment
    the last failed: a busy workload turned tokex's 429 into hundreds of exchanges."""
    use_static_credentials(monkeypatch)
    with fake_issuer(failing=status, retry_after=retry_after) as failing:
        clock = FakeClock()
        client = TokenClient(failing.url, clock=clock, issuer=failing.url)
        errors: list[TokenError] = []

        def call() -> None:
            try:
                client.token("orders-api")
            except TokenError as err:
                errors.append(err)

        threads = [threading.Thread(target=call) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert failing.exchanges == 1
        assert len(errors) == 20 and len({id(e) for e in errors}) == 20  # one each
        assert {e.status for e in errors} == {status}
        clock.now += hold - 0.5
        with pytest.raises(TokenError) as held:
            client.token("orders-api")
        assert held.value.retry_after == 1  # what is left of the hold, rounded up
        assert failing.exchanges == 1
        clock.now += 0.5
        failing.failing = None
        assert client.token("orders-api") == "token-2"  # the hold is over: it asks again
        assert failing.exchanges == 2


def test_without_stale_if_error_a_held_failure_is_raised_not_the_old_token(
    monkeypatch,
) -> None:
    """The one call that exchanged raised; the others, for the failure's hold, were handed
    the token being replaced, which `stale_if_error=False` asks never to be."""
    use_static_credentials(monkeypatch)
    with fake_issuer(expires_in=900) as flaky:
        clock = FakeClock()
        client = TokenClient(flaky.url, clock=clock, issuer=flaky.url, stale_if_error=False)
        assert client.token("orders-api") == "token-1"
        clock.now += 0.85 * 900
        flaky.failing = 503
        for _ in range(2):
            with pytest.raises(TokenError):
                client.token("orders-api")
        assert flaky.exchanges == 2  # the second was the hold's, without I/O


class _OutageWithALargePage(QuietHandler):
    """An outage answered with a page larger than the client reads (a proxy's HTML)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        page = b"<html>" + b"x" * (2 * MAX_RESPONSE_BYTES)
        self.send_document(503, page, {"Content-Type": "text/html"})


def _alive(kind: type) -> int:
    gc.collect()
    return sum(isinstance(thing, kind) for thing in gc.get_objects())


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_an_outage_keeps_one_failure_and_no_connection_per_failed_exchange(monkeypatch) -> None:
    """Each failed exchange's error held the one it replaced (through its frames) until
    an exchange succeeded: an outage grew the client (tokex proxy's, for weeks) by every
    failure with its frames and, its page unread past MAX_RESPONSE_BYTES, its connection."""
    use_static_credentials(monkeypatch)
    with serving(LoopbackServer(_OutageWithALargePage)) as server:
        clock = FakeClock()
        client = TokenClient(server.url, clock=clock, issuer=server.url, stale_if_error=False)

        def fail_once() -> None:
            with pytest.raises(TokenError, match="503"):
                client.token("orders-api")
            clock.now += MAX_FAILURE_HOLD_SECONDS  # its hold over: the next call exchanges

        fail_once()
        errors, descriptors = _alive(TokenError), _open_descriptors()
        for _ in range(10):
            fail_once()
        assert _alive(TokenError) == errors  # the last failure's, held: one
        assert _open_descriptors() <= descriptors + 2  # not one per failure


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30", 30.0), (" 7 ", 7.0), ("0", 0.0), ("99999999999999999999", 60.0), ("soon", None),
     ("-5", None), ("٣", None), (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
     # A year or a zone offset no C integer holds: OverflowError, an internal error.
     ("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", None),
     ("Wed, 21 Oct 2015 07:28:00 +99999999999999999999", None)],
)  # fmt: skip
def test_retry_after_is_read_as_rfc_9110_says(value: str | None, seconds: float | None) -> None:
    assert token_client.retry_after_seconds(value) == seconds


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    soon = email.utils.formatdate(time.time() + 20, usegmt=True)
    seconds = token_client.retry_after_seconds(soon)
    assert seconds is not None and 17 <= seconds <= 20


def test_refresh_happens_at_80_percent_of_the_lifetime(issuer) -> None:
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    assert client.token("orders-api") == "token-1"
    # Counted from a second before it was asked for (ISSUED_TO_THE_SECOND).
    refresh_point = 0.8 * 900 - token_client.ISSUED_TO_THE_SECOND
    clock.now += refresh_point - 1  # 1 s before the refresh point: cached
    assert client.token("orders-api") == "token-1"
    assert client.cached_token("orders-api") == "token-1"
    assert issuer.exchanges == 1
    clock.now += 1  # at 80 % of 900 s
    assert client.cached_token("orders-api") is None
    assert client.token("orders-api") == "token-2"
    assert issuer.exchanges == 2
    assert REFRESH_AT <= 0.8


def test_cache_is_per_audience_and_scopes_in_any_order(issuer) -> None:
    client = TokenClient(issuer.url)
    assert client.token("orders-api", ["b", "a"]) == "token-1"
    assert client.token("orders-api", ["a", "b"]) == "token-1"
    assert client.token("orders-api", ["a"]) == "token-2"
    assert client.token("billing-api", ["a"]) == "token-3"
    assert [form["audience"] for form in issuer.forms] == [["orders-api"]] * 2 + [["billing-api"]]


RAW_ANSWERS = {
    "nested too deep": b"[" * 50_000,  # under the size cap; json recurses on it
    "a lifetime no float holds": b'{"access_token": "t", "expires_in": 1' + b"0" * 400 + b"}",
}


@pytest.mark.parametrize("answer", RAW_ANSWERS.values(), ids=RAW_ANSWERS.keys())
def test_a_hostile_answer_is_a_token_error_or_a_token_never_kept(monkeypatch, answer) -> None:
    """A look-alike endpoint's answer: a TokenError (what callers and the stale-token
    fallback handle), never a raw RecursionError or OverflowError; a lifetime too large
    for a float is none, so the token is not kept (an infinite one is refused:
    test_an_answer_that_is_no_usable_token_is_refused)."""
    use_static_credentials(monkeypatch)
    with serving(LoopbackServer(answering(answer))) as server:
        client = TokenClient(server.url, issuer=server.url)
        if answer.startswith(b"["):
            with pytest.raises(TokenError, match="not a JSON object"):
                client.token("orders-api")
            return
        assert client.token("orders-api") == "t"
        assert client.cached_token("orders-api") is None  # nothing kept


def test_a_token_without_expires_in_is_not_reused(issuer) -> None:
    issuer.expires_in = 0
    client = TokenClient(issuer.url)
    assert client.token("orders-api") == "token-1"
    assert client.token("orders-api") == "token-2"


def _ask_together(count: int, ask) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(index: int) -> None:
        barrier.wait()
        results[index] = ask()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_threads_at_expiry_make_one_exchange_per_audience(issuer) -> None:
    issuer.delay = 0.3  # every thread asks while the first exchange is in flight
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    assert _ask_together(8, lambda: client.token("orders-api")) == ["token-1"] * 8
    assert issuer.exchanges == 1
    clock.now += 900  # expired: everyone waits for the one refresh
    assert _ask_together(8, lambda: client.token("orders-api")) == ["token-2"] * 8
    assert issuer.exchanges == 2


def test_while_one_thread_refreshes_the_others_keep_the_valid_token(issuer) -> None:
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    assert client.token("orders-api") == "token-1"
    # The refresh is held until the other seven have their answer.
    issuer.gate, answered, lock = threading.Event(), [0], threading.Lock()
    clock.now += 0.9 * 900  # due for refresh, still valid

    def ask() -> str:
        token = client.token("orders-api")
        with lock:
            answered[0] += 1
            if answered[0] == 7:
                issuer.gate.set()
        return token

    results = _ask_together(8, ask)
    assert sorted(results) == ["token-1"] * 7 + ["token-2"]
    assert issuer.exchanges == 2
    assert client.token("orders-api") == "token-2"


def test_a_failed_refresh_serves_the_valid_token_and_retries_later(issuer, caplog) -> None:
    """A short outage of tokex is no outage of the workload: within the last 20 % of the
    lifetime the old token stands in, and calls do not each wait for a failing exchange."""
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    assert client.token("orders-api") == "token-1"
    issuer.failing = 503
    clock.now += 0.85 * 900
    assert client.token("orders-api") == "token-1"  # the refresh failed
    assert "refreshing the token for audience orders-api failed" in caplog.text
    assert [client.token("orders-api") for _ in range(10)] == ["token-1"] * 10
    assert issuer.exchanges == 2  # no new attempt before REFRESH_RETRY_SECONDS
    clock.now += token_client.REFRESH_RETRY_SECONDS
    assert client.token("orders-api") == "token-1"
    assert issuer.exchanges == 3  # tried again, failed again
    issuer.failing = None
    clock.now += token_client.REFRESH_RETRY_SECONDS
    assert client.token("orders-api") == "token-4"
    # Once the old token has expired, nothing stands in: the failure is raised.
    issuer.failing = 503
    clock.now += 900
    with pytest.raises(TokenError) as failed:
        client.token("orders-api")
    assert (failed.value.error, failed.value.status) == ("temporarily_unavailable", 503)


def test_without_stale_if_error_a_failed_refresh_raises(issuer) -> None:
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock, stale_if_error=False)
    assert client.token("orders-api") == "token-1"
    issuer.failing = 503
    clock.now += 0.85 * 900
    with pytest.raises(TokenError):
        client.token("orders-api")
    assert client.valid_token("orders-api") == "token-1"  # still held, for the caller's own use


def test_threads_waiting_at_expiry_share_a_failed_exchange(issuer, monkeypatch) -> None:
    """One exchange, its failure raised in every caller that waited for it: they do not
    each try again in turn (which would keep the last one waiting N timeouts)."""
    issuer.failing, issuer.gate = 503, threading.Event()
    client = TokenClient(issuer.url)
    waiting = threading.Semaphore(0)
    outcome = token_client._Flight.outcome

    def counted_outcome(flight, wait: float) -> str:  # observes who waits; the waiting is real
        waiting.release()
        return outcome(flight, wait)

    monkeypatch.setattr(token_client._Flight, "outcome", counted_outcome)

    def open_gate_once_seven_wait() -> None:
        for _ in range(7):
            waiting.acquire(timeout=30)
        issuer.gate.set()

    threading.Thread(target=open_gate_once_seven_wait, daemon=True).start()

    def ask() -> str:
        try:
            return client.token("orders-api")
        except TokenError as err:
            return f"{err.status} {err.error}"

    assert _ask_together(8, ask) == ["503 temporarily_unavailable"] * 8
    assert issuer.exchanges == 1


def test_scopes_are_a_list_not_one_string(issuer) -> None:
    client = TokenClient(issuer.url)
    for ask in (
        lambda: client.token("orders-api", "orders:read"),
        lambda: request_token(issuer.url, "orders-api", scopes="orders:read"),
    ):
        with pytest.raises(TypeError, match="not one string"):
            ask()
    assert issuer.exchanges == 0


@pytest.mark.parametrize(
    "scopes",
    [[""], ["orders:read", ""], [" "], ["orders:read\torders:write"], ["two words"], ['say"hi']],
    ids=["empty", "one-empty", "space", "tab", "space-inside", "quote"],
)
def test_a_scope_that_is_no_scope_token_is_refused_before_any_exchange(issuer, scopes) -> None:
    """`[""]` was sent as `scope=`, which the exchange reads as no scope: every scope the
    policy grants, where the least was asked for."""
    client = TokenClient(issuer.url)
    for ask in (
        lambda: client.token("orders-api", scopes),
        lambda: request_token(issuer.url, "orders-api", scopes=scopes),
    ):
        with pytest.raises(ValueError, match="is not a scope"):
            ask()
    assert issuer.exchanges == 0


def test_scopes_given_as_an_iterator_are_asked_for_and_cached_as_given(issuer) -> None:
    """The cache key used the iterator up: the exchange then asked for no scope, every
    scope the policy grants, and cached that under the narrower request."""
    client = TokenClient(issuer.url)
    client.token("orders-api", (s for s in ["orders:read"]))
    request_token(issuer.url, "orders-api", scopes=iter(["orders:read"]))
    assert [form.get("scope") for form in issuer.forms] == [["orders:read"]] * 2
    assert client.cached_token("orders-api", ["orders:read"]) is not None


@pytest.mark.parametrize("option", ["scope", "audience", "retries", "clock2"])
def test_an_option_request_token_does_not_take_is_refused_when_the_client_is_made(
    issuer, option: str
) -> None:
    """A typo (`scope=` for `scopes=`) failed only at the first token, as a TypeError
    that callers waiting on the same exchange got as a token service failure."""
    with pytest.raises(ValueError, match=f"unknown option {option!r}"):
        TokenClient(issuer.url, **{option: ["orders:read"]})
    assert issuer.exchanges == 0


def test_an_endpoint_that_cannot_work_is_refused_when_the_client_is_made() -> None:
    with pytest.raises(ValueError, match=r"endpoint 'http://auth\.example\.com'"):
        TokenClient("http://auth.example.com")


def test_invalidate_spares_a_token_younger_than_min_age(issuer) -> None:
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    token = client.token("orders-api")
    assert not client.invalidate("orders-api", token=token, min_age=5)
    clock.now += 5
    assert not client.invalidate("orders-api", token="another", min_age=5)
    assert client.invalidate("orders-api", token=token, min_age=5)
    assert client.valid_token("orders-api") is None
    assert client.token("orders-api") == "token-2"


def test_a_cached_token_costs_no_exchange_and_no_signing(issuer, monkeypatch) -> None:
    client = TokenClient(issuer.url)
    client.token("orders-api")

    def no_signing(*args, **kwargs):
        raise AssertionError("a cached token() signed a request")

    monkeypatch.setattr(token_client, "signed_get_caller_identity", no_signing)
    assert [client.token("orders-api") for _ in range(100)] == ["token-1"] * 100
    assert issuer.exchanges == 1


def test_import_tokex_client_needs_neither_requests_nor_httpx() -> None:
    probe = (
        "import sys, tokex.client; "
        "print(sorted(m for m in ('requests', 'httpx', 'anyio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# The form the client posts with SigV4 evidence (JWT evidence: test_client_evidence.py).


def test_sigv4_request_body(issuer) -> None:
    request_token(issuer.url, "orders-api", scopes=["orders:read", "orders:write"])
    [form] = issuer.forms
    assert form.keys() == {"grant_type", "subject_token_type", "subject_token", "audience", "scope"}
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert form["subject_token_type"] == ["urn:tokex:token-type:aws-sigv4"]
    assert form["audience"] == ["orders-api"]
    assert form["scope"] == ["orders:read orders:write"]
    signed = json.loads(base64url.decode(form["subject_token"][0]))
    # AWS_REGION (use_static_credentials sets us-east-1).
    assert signed["url"] == "https://sts.us-east-1.amazonaws.com/"
    assert signed["body"] == "Action=GetCallerIdentity&Version=2011-06-15"
    assert signed["headers"]["X-Tokex-Issuer"] == issuer.url
    assert signed["headers"]["X-Tokex-Audience"] == "orders-api"
    assert "/us-east-1/sts/aws4_request" in signed["headers"]["Authorization"]


@pytest.mark.parametrize(
    ("variables", "signed_for"),
    [
        ({"AWS_REGION": "eu-west-1"}, "eu-west-1"),
        ({"AWS_DEFAULT_REGION": "ap-southeast-2"}, "ap-southeast-2"),
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "ap-southeast-2"}, "eu-west-1"),
        ({"AWS_REGION": ""}, "us-east-1"),  # empty counts as unset
    ],
)
def test_the_region_signed_for_is_resolved_as_the_cli_resolves_it(
    issuer, monkeypatch, variables: dict[str, str], signed_for: str
) -> None:
    """botocore's session reads AWS_DEFAULT_REGION only: with AWS_REGION alone (what the
    newer SDKs and many runtimes set), the library signed for us-east-1 and the CLI for
    AWS_REGION."""
    monkeypatch.delenv("AWS_REGION")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    request_token(issuer.url, "orders-api")
    [form] = issuer.forms
    signed = json.loads(base64url.decode(form["subject_token"][0]))
    assert signed["url"] == f"https://sts.{signed_for}.amazonaws.com/"


def test_sigv4_with_instance_evidence_and_a_region(issuer) -> None:
    request_token(issuer.url, "orders-api", region="eu-west-1", instance_evidence="e30")
    [form] = issuer.forms
    assert form["aws_instance_identity"] == ["e30"]
    assert "scope" not in form
    signed = json.loads(base64url.decode(form["subject_token"][0]))
    assert signed["url"] == "https://sts.eu-west-1.amazonaws.com/"


def test_sigv4_is_the_default_evidence(issuer) -> None:
    TokenClient(issuer.url, evidence="sigv4").token("orders-api")
    TokenClient(issuer.url).token("orders-api")
    assert [form["subject_token_type"] for form in issuer.forms] == [
        ["urn:tokex:token-type:aws-sigv4"]
    ] * 2


class SettableClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_suspend_aware_clock_counts_what_either_clock_saw_and_never_goes_back() -> None:
    monotonic, wall = SettableClock(50.0), SettableClock(1_800_000_000.0)
    clock = token_client.SuspendAwareClock(monotonic, wall)
    assert clock() == 0.0
    monotonic.now += 10  # running: both clocks move
    wall.now += 10
    assert clock() == 10.0
    wall.now += 600  # suspended (frozen, a snapshot restored): the monotonic clock stood still
    assert clock() == 610.0
    wall.now -= 3600  # the wall clock set back: no time un-passes
    assert clock() == 610.0
    monotonic.now += 5  # and the monotonic clock still counts at once
    assert clock() == 615.0


def test_the_suspend_aware_clock_keeps_counting_after_the_wall_clock_is_set_forward_and_back() -> (
    None
):
    """Counted from the start, a wall clock an hour ahead and then corrected would hold the
    clock still for that hour: tokens served past their `exp`, invalidation stalled."""
    monotonic, wall = SettableClock(0.0), SettableClock(1_800_000_000.0)
    clock = token_client.SuspendAwareClock(monotonic, wall)
    wall.now += 3600
    assert clock() == 3600.0  # looks an hour older: an early refresh at worst
    wall.now -= 3600
    monotonic.now += 1
    wall.now += 1
    assert clock() == 3601.0
    monotonic.now += 60
    wall.now += 60
    assert clock() == 3661.0


def test_a_token_cached_before_a_suspension_is_not_served_after_its_exp(
    issuer, monkeypatch
) -> None:
    """By default a TokenClient counts a token's age on a SuspendAwareClock: the monotonic
    clock alone did not count the time the process was suspended."""
    offset = [0.0]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    client = TokenClient(issuer.url)
    assert client.token("orders-api") == "token-1"
    offset[0] = 900.0  # suspended for the token's lifetime: only the wall clock moved
    assert client.valid_token("orders-api") is None
    assert client.token("orders-api") == "token-2"


class RecordingProxy(QuietHandler):
    """A forward proxy that forwards nothing: it records what it was asked and says 502."""

    seen: ClassVar[list[str]] = []

    def _record(self) -> None:
        RecordingProxy.seen.append(f"{self.command} {self.path}")
        self.send_document(502, b"", {})

    do_GET = do_POST = do_CONNECT = _record


@pytest.fixture
def environment_proxy(monkeypatch) -> Iterator[str]:
    """HTTP_PROXY and HTTPS_PROXY set, as in many corporate set-ups, and the client's
    opener built under them as importing the module builds it."""
    RecordingProxy.seen = []
    with serving(LoopbackServer(RecordingProxy)) as proxy:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(
            token_client, "_OPENER", bounded_http.urllib_opener(token_client._NoRedirects)
        )
        yield proxy.url


def test_plain_http_to_loopback_never_goes_through_a_proxy(monkeypatch, environment_proxy) -> None:
    """The proxy was handed the discovery GET and the POST with the signed request (which
    it could replay for minutes), and would have seen the token come back."""
    use_static_credentials(monkeypatch)
    with fake_issuer() as issuer:
        token = request_token(issuer.url, audience="orders-api")
    assert token["access_token"] == "token-1"
    assert issuer.exchanges == 1
    assert RecordingProxy.seen == []


def test_https_still_goes_through_the_environment_proxy(environment_proxy) -> None:
    """Through a CONNECT tunnel: TLS end to end, the proxy sees the host and nothing else."""
    with pytest.raises(TokenError):
        discover("https://auth.example.com")
    assert RecordingProxy.seen == ["CONNECT auth.example.com:443"]


@pytest.mark.parametrize(
    ("name", "library", "module"),
    [("TokexAuth", "requests", "requests_auth"), ("TokexHttpxAuth", "httpx", "httpx_auth")],
)
def test_an_auth_class_without_its_extra_names_the_extra(
    monkeypatch, name: str, library: str, module: str
) -> None:
    """A raw ModuleNotFoundError, naming `anyio` for the httpx class, told no one what to
    install."""
    import sys

    import tokex.client

    monkeypatch.delitem(sys.modules, f"tokex.client.{module}", raising=False)
    monkeypatch.setitem(sys.modules, library, None)  # as if not installed
    with pytest.raises(ImportError, match=rf"{name} needs the {library} extra: pip install"):
        getattr(tokex.client, name)


SLOW_ANSWER = '{"Version": 1, "AccessKeyId": "AKIAEXAMPLESLOW00001", "SecretAccessKey": "s"}'


def test_credentials_that_take_the_whole_timeout_are_named_as_the_cause(
    tmp_path, monkeypatch
) -> None:
    """The credentials load outside the call's timeout (botocore's own bound it); a call
    they made late failed blaming the discovery document, which it never asked for."""
    credential_process(tmp_path, monkeypatch, SLOW_ANSWER, seconds=1.5)
    with fake_issuer() as tokex:
        client = TokenClient(tokex.url, timeout=1.0)
        with pytest.raises(TokenError) as failed:
            client.token("orders-api")
        assert tokex.exchanges == 0
    assert failed.value.error == "unreachable"
    assert "loading the AWS credentials took longer than the 1 s timeout" in str(failed.value)


def test_a_call_waiting_for_another_s_exchange_waits_no_longer_than_its_timeout(
    tmp_path, monkeypatch
) -> None:
    """The leader's exchange is stuck loading credentials: the calls waiting for it had
    waited as long (in tokex proxy, a thread and a connection per waiting request, for as
    long as a credential_process hangs)."""
    monkeypatch.setattr(token_client, "FLIGHT_WAIT_MARGIN_SECONDS", 0.5)
    credential_process(tmp_path, monkeypatch, SLOW_ANSWER, seconds=4)
    with fake_issuer() as tokex:
        client = TokenClient(tokex.url, timeout=1.0)
        led: list[BaseException] = []

        def lead() -> None:
            try:
                client.token("a")
            except TokenError as err:
                led.append(err)

        leader = threading.Thread(target=lead)
        leader.start()
        while not client._flights:  # the leader's exchange is in flight
            time.sleep(0.01)
        with pytest.raises(TokenError) as waited:
            client.token("a")
        assert leader.is_alive()  # still loading credentials: the waiter gave up first
        leader.join(timeout=10)
    assert "loading the AWS credentials took longer" in str(led[0])
    assert waited.value.error == "unreachable"
    assert "has not finished within 1.5 s" in str(waited.value)


# Credentials from an assume-role profile whose sts:AssumeRole fails: the AWS set-up's
# failure, a TokenError like the others, so the stale-token rule and the failure hold apply.

ACCESS_DENIED = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender'
    b"</Type><Code>AccessDenied</Code><Message>not authorized to perform sts:AssumeRole"
    b"</Message></Error><RequestId>r</RequestId></ErrorResponse>"
)


class FakeSts:
    """A loopback STS whose AssumeRole answers `status` and `body`, counting the calls."""

    def __init__(self) -> None:
        self.status, self.body = 403, ACCESS_DENIED
        self.calls = 0
        self.lock = threading.Lock()


@pytest.fixture
def refusing_sts() -> Iterator[tuple[str, FakeSts]]:
    sts = FakeSts()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with sts.lock:
                sts.calls += 1
            self.send_document(sts.status, sts.body, {"Content-Type": "text/xml"})

    with serving(LoopbackServer(Handler)) as server:
        yield server.url, sts


def use_assume_role_profile(tmp_path, monkeypatch, sts_url: str) -> None:
    """The default chain's only credentials: a profile that assumes a role with a source
    profile's static keys, at `sts_url`."""
    without_aws_set_up(monkeypatch)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[source]\naws_access_key_id = AKIAEXAMPLESOURCE001\n"
        "aws_secret_access_key = source-secret-not-real\n"
    )
    config = tmp_path / "config"
    config.write_text(
        "[default]\nrole_arn = arn:aws:iam::123456789012:role/app\nsource_profile = source\n"
        f"region = us-east-1\nendpoint_url = {sts_url}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))


def test_an_assume_role_refused_is_an_aws_error_held_without_a_call_per_request(
    issuer, refusing_sts, tmp_path, monkeypatch
) -> None:
    """botocore's ClientError escaped as it was: no TokenError, so no failure hold, and
    every request of the workload called sts:AssumeRole again."""
    sts_url, sts = refusing_sts
    use_assume_role_profile(tmp_path, monkeypatch, sts_url)
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    with pytest.raises(TokenError) as refused:
        client.token("orders-api")
    assert (refused.value.error, refused.value.aws_code) == ("aws_error", "AccessDenied")
    assert refused.value.status == 403
    assert "AssumeRole" in str(refused.value) and "source-secret" not in str(refused.value)
    for _ in range(20):  # within the hold: raised again, no call to STS
        clock.now += token_client.FAILURE_HOLD_SECONDS / 40
        with pytest.raises(TokenError) as held:
            client.token("orders-api")
        assert held.value.aws_code == "AccessDenied"
    assert (sts.calls, issuer.exchanges) == (1, 0)
    clock.now += token_client.FAILURE_HOLD_SECONDS
    with pytest.raises(TokenError):
        client.token("orders-api")
    assert sts.calls == 2  # the hold is over: it tries again


def test_while_the_token_is_valid_an_assume_role_refused_serves_it(
    issuer, refusing_sts, tmp_path, monkeypatch
) -> None:
    sts_url, sts = refusing_sts
    clock = FakeClock()
    client = TokenClient(issuer.url, clock=clock)
    assert client.token("orders-api") == "token-1"  # with static credentials
    use_assume_role_profile(tmp_path, monkeypatch, sts_url)
    clock.now += 0.85 * 900  # due for refresh, valid for 2 minutes more
    assert [client.token("orders-api") for _ in range(20)] == ["token-1"] * 20
    assert (sts.calls, issuer.exchanges) == (1, 1)
    clock.now += token_client.REFRESH_RETRY_SECONDS
    assert client.token("orders-api") == "token-1"
    assert sts.calls == 2


@pytest.mark.parametrize(
    "body",
    [
        b"<html>SecretAccessKey=leaked\nsecond line</html",  # no XML: ResponseParserError
        b"<AssumeRoleResponse><AssumeRoleResult></AssumeRoleResult></AssumeRoleResponse>",
    ],
)
def test_an_assume_role_answer_botocore_cannot_read_is_an_aws_error(
    issuer, refusing_sts, tmp_path, monkeypatch, body: bytes
) -> None:
    """A 200 that is no XML, or has no Credentials: botocore raised its parser's error, or
    a KeyError, neither a TokenError."""
    sts_url, sts = refusing_sts
    sts.status, sts.body = 200, body
    use_assume_role_profile(tmp_path, monkeypatch, sts_url)
    client = TokenClient(issuer.url, clock=FakeClock())
    with pytest.raises(TokenError) as failed:
        client.token("orders-api")
    assert failed.value.error == "aws_error"
    assert "leaked" not in str(failed.value)  # the answer itself is not quoted
    with pytest.raises(TokenError):
        client.token("orders-api")
    assert sts.calls == 1


# A child of os.fork() (multiprocessing's fork start method, a pre-forking server).


def in_forked_child(work, *, then=lambda: None, within: float = 30.0) -> str:
    """What `work()` returns (or raises, as `Type: message`) in a child of os.fork(), run
    from this thread, while the parent does `then()`; the child is killed if it takes
    longer than `within` seconds, so a child that hangs fails the test instead of hanging
    the suite."""
    import select
    import signal

    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's clean-up
        try:
            try:
                outcome = str(work())
            except BaseException as err:
                outcome = f"{type(err).__name__}: {err}"
            os.write(writing, outcome.encode())
        finally:
            os._exit(0)
    os.close(writing)
    try:
        then()
        ready, _, _ = select.select([reading], [], [], within)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return f"the child took longer than {within:g} s"
        chunks = []
        while chunk := os.read(reading, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(reading)
        os.waitpid(pid, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_while_another_thread_exchanges_gets_a_token(issuer, monkeypatch) -> None:
    """The child inherited the record of the exchange in flight, whose thread it does not
    have: every token() there waited `flight_wait` and failed, for as long as it lived."""
    monkeypatch.setattr(token_client, "FLIGHT_WAIT_MARGIN_SECONDS", 0.5)
    issuer.gate = threading.Event()  # the parent's exchange is in flight at the fork
    client = TokenClient(issuer.url, timeout=2.0)
    leading = threading.Thread(target=client.token, args=("orders-api",))
    leading.start()
    try:
        while not issuer.exchanges:  # its request has arrived: the flight is recorded
            time.sleep(0.01)
        outcome = in_forked_child(
            lambda: ",".join(client.token("orders-api") for _ in range(3)),
            then=issuer.gate.set,  # the server is the parent's: both exchanges pass
        )
    finally:
        issuer.gate.set()
        leading.join(timeout=30)
    assert outcome == "token-2,token-2,token-2"  # the child's own exchange, then cached
    assert client.token("orders-api") == "token-1"  # the parent's
    assert issuer.exchanges == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_while_another_thread_holds_the_client_s_locks_gets_a_token(
    issuer,
) -> None:
    """A lock another thread held at the fork stays held in the child, which has no such
    thread to release it: the client's, its clock's, the kept discovery documents'."""
    client = TokenClient(issuer.url)
    locks = [client._lock, client._clock._lock, token_client.LAST_GOOD_DISCOVERIES._lock]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(timeout=60)
        for lock in locks:
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(timeout=30)
        outcome = in_forked_child(lambda: client.token("orders-api"), within=10)
    finally:
        release.set()
        holder.join(timeout=30)
    assert outcome == "token-1"
