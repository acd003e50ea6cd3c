"""`tokex proxy` against the real system: `tokex local` (the `local_system`) as the token
endpoint, an HTTPS upstream with a throwaway CA that records what it gets (proxy_support.py),
and the application's side played by http.client and raw sockets."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import stat
import threading
import time
import tracemalloc

import jwt
import pytest

from tests.support.proxy import (
    DEMO_AUDIENCE,
    DEMO_SCOPE,
    Relay,
    digest,
    https_upstream,
    pattern,
    proxy_config,
    route_document,
    running_proxy,
)
from tests.support.tls import make_pki
from tests.system.endpoints import verify
from tokex.client import token_client
from tokex.local.provision import DEMO_ROLE_ARN
from tokex.proxy import SECRET_HEADER

MB = 1024 * 1024


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


@pytest.fixture
def upstream(pki):
    with https_upstream(pki) as running:
        yield running


@pytest.fixture
def exchanges(monkeypatch) -> list[str]:
    """The audience of every exchange TokenClient makes (the real one, counted)."""
    made: list[str] = []
    real = token_client.request_token

    def counted(endpoint, audience, **options):
        made.append(audience)
        return real(endpoint, audience, **options)

    monkeypatch.setattr(token_client, "request_token", counted)
    return made


@pytest.fixture
def proxy(local_system, upstream, pki):
    config = proxy_config(local_system.issuer, route_document(upstream, pki))
    with running_proxy(local_system, config, local_system.deployment.workload.session()) as running:
        yield running


# --- what the upstream gets --------------------------------------------------------------


def test_the_token_replaces_authorization_and_the_request_is_otherwise_unchanged(
    local_system, proxy, upstream
):
    target = "/orders/1/items?expand=a%2Cb&x=%20y"
    status, headers, body = proxy.request(
        "POST",
        target,
        headers={
            "Authorization": "Bearer the-applications-own",
            "Proxy-Authorization": "Basic c2VjcmV0",
            SECRET_HEADER: "not-for-the-upstream",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "goes no further",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "websocket",
            "X-Request-Id": "r-1",
            "Content-Type": "application/json",
        },
        body=b'{"quantity": 2}',
    )
    assert status == 200, body
    (got,) = upstream.received
    assert (got.method, got.target) == ("POST", target)
    assert got.header("Host") == [upstream.url.removeprefix("https://")]
    assert got.header("X-Request-Id") == ["r-1"] and got.header("Content-Length") == ["15"]
    assert got.body_sha256 == hashlib.sha256(b'{"quantity": 2}').hexdigest()
    for dropped in ("Proxy-Authorization", SECRET_HEADER, "X-Hop", "Keep-Alive", "TE", "Upgrade"):
        assert got.header(dropped) == [], dropped
    assert got.header("Connection") == []
    assert not [name for name, _ in got.headers if name.lower().startswith("x-forwarded")]
    assert got.header("Via") == []
    claims = verify(local_system, got.token, audience=DEMO_AUDIENCE)
    assert claims["sub"] == DEMO_ROLE_ARN and claims["scope"] == DEMO_SCOPE
    # ... and the response comes back without the upstream's hop-by-hop headers
    assert headers["X-End-To-End"] == "kept"
    assert "X-Hop-Reply" not in headers and "Keep-Alive" not in headers
    assert json.loads(body)["target"] == target


def test_a_large_body_is_streamed_both_ways_never_held_whole(proxy, upstream):
    size = 20 * MB
    assert proxy.request("GET", "/warm")[0] == 200  # the token: not part of the measure
    connection = proxy.connection()
    tracemalloc.start()
    try:
        connection.request("PUT", f"/big/{size}", body=pattern(size), encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 200
        length, sha = digest(iter(lambda: response.read(256 * 1024), b""))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        connection.close()
    expected = digest(pattern(size))
    assert (length, sha) == expected
    got = upstream.received[-1]
    assert (got.body_length, got.body_sha256) == expected
    assert got.header("Transfer-Encoding") == ["chunked"]
    assert peak < 4 * MB, f"{peak} bytes at the peak for a {size}-byte body each way"


def test_connections_to_the_upstream_are_kept_alive(proxy, upstream):
    for number in range(3):  # a new connection of the application each time
        assert proxy.request("GET", f"/orders/{number}")[0] == 200
    assert upstream.connections == 1
    assert len({got.peer_port for got in upstream.received}) == 1


# --- no token: the upstream is never called ------------------------------------------------


def test_an_audience_no_policy_grants_is_403_and_the_upstream_is_never_called(
    local_system, upstream, pki, exchanges
):
    config = proxy_config(local_system.issuer, route_document(upstream, pki, audience="orders-api"))
    with running_proxy(local_system, config, local_system.deployment.workload.session()) as proxy:
        for _ in range(3):
            status, headers, body = proxy.request("GET", "/orders/1")
            assert status == 403
            assert "Retry-After" not in headers
            answer = json.loads(body)
            assert answer["error"] == "invalid_target"
            assert "orders-api" in answer["error_description"]
    assert upstream.received == []
    assert exchanges == ["orders-api"]  # the refusal is remembered, not asked again


def test_tokex_unreachable_is_503_with_retry_after_and_the_proxy_recovers(
    local_system, upstream, pki
):
    relay = Relay(("127.0.0.1", int(local_system.issuer.rsplit(":", 1)[1])))
    relay.up = False
    try:
        config = proxy_config(relay.url, route_document(upstream, pki))
        with running_proxy(
            local_system, config, local_system.deployment.workload.session()
        ) as proxy:
            status, headers, body = proxy.request("GET", "/orders/1")
            assert status == 503
            assert int(headers["Retry-After"]) >= 1
            assert json.loads(body)["error"] == "unreachable"
            status, _, body = proxy.request("GET", "/.tokex/health")  # still serving
            assert status == 200 and json.loads(body)["routes"][0]["has_token"] is False
            relay.up = True
            time.sleep(int(headers["Retry-After"]) + 0.1)
            status, _, _ = proxy.request("GET", "/orders/1")
            assert status == 200
        assert len(upstream.received) == 1
    finally:
        relay.stop()


def test_an_upstream_401_makes_the_next_request_use_a_fresh_token(
    local_system, upstream, pki, exchanges
):
    config = proxy_config(local_system.issuer, route_document(upstream, pki))
    session = local_system.deployment.workload.session()
    with running_proxy(local_system, config, session, invalidate_min_age=0) as proxy:
        assert proxy.request("GET", "/orders/1")[0] == 200
        first = upstream.received[-1].token
        upstream.refuse.add(first)  # e.g. revoked
        assert proxy.request("GET", "/orders/2")[0] == 401  # answered as it is, not retried
        assert len(upstream.received) == 2
        assert proxy.request("GET", "/orders/3")[0] == 200
        assert upstream.received[-1].token != first
    assert exchanges == [DEMO_AUDIENCE, DEMO_AUDIENCE]


# --- what is never forwarded ---------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/.tokex/",
        "/.tokex/nothing",
        "/.tokex",
        "/%2Etokex/token",
        "/.TOKEX/health",
        "/.tokex;x/token?audience=demo-api",
        "/%5C.tokex/token?audience=demo-api",
    ],
)
def test_the_reserved_prefix_is_never_forwarded(proxy, upstream, target):
    status, _, body = proxy.request("GET", target)
    assert status in (401, 404), body
    assert upstream.received == []


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "request_line,status",
    [
        (b"GET http://evil.example/ HTTP/1.1", b"400"),
        (b"GET https://127.0.0.1:1/x HTTP/1.1", b"400"),
        (b"CONNECT evil.example:443 HTTP/1.1", b"405"),
        (b"TRACE / HTTP/1.1", b"405"),
        (b"GET /a/../.tokex/token HTTP/1.1", b"400"),
    ],
)
def test_no_open_proxy(proxy, upstream, request_line, status):
    answer = raw_exchange(
        proxy.port, request_line + b"\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    _, _, body = answer.partition(b"\r\n\r\n")
    assert json.loads(body)["error"] in ("invalid_request", "method_not_allowed")
    assert upstream.received == []


# --- the token endpoint ----------------------------------------------------------------


def test_the_token_endpoint_answers_only_the_secret_and_only_configured_audiences(
    local_system, upstream, pki, tmp_path
):
    secret_file = tmp_path / "run" / "proxy-secret"
    secret_file.parent.mkdir(mode=0o700)
    config = proxy_config(
        local_system.issuer, route_document(upstream, pki), secret_file=secret_file
    )
    with running_proxy(
        local_system, config, local_system.deployment.workload.session(), secret=None
    ) as proxy:
        assert proxy.server.secret_file == secret_file
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text()
        assert len(secret) >= 43  # 32 random bytes, base64url

        missing = proxy.request("GET", "/.tokex/token?audience=demo-api")
        wrong = proxy.request("GET", "/.tokex/token?audience=demo-api", {SECRET_HEADER: "x" * 43})
        unknown = proxy.request("GET", "/.tokex/token?audience=orders-api")  # no hint either
        assert missing[0] == wrong[0] == unknown[0] == 401
        assert missing[2] == wrong[2] == unknown[2]
        assert json.loads(missing[2])["error"] == "unauthorized"

        with_secret = {SECRET_HEADER: secret}
        status, _, body = proxy.request("GET", "/.tokex/token?audience=orders-api", with_secret)
        assert (status, json.loads(body)["error"]) == (404, "unknown_audience")
        status, headers, body = proxy.request(
            "GET", "/.tokex/token?audience=demo-api&scope=demo:read", with_secret
        )
        assert status == 200, body
        assert headers["Cache-Control"] == "no-store"
        answer = json.loads(body)
        assert answer.keys() == {"access_token", "token_type", "expires_in", "scope"}
        assert answer["token_type"] == "Bearer" and answer["scope"] == DEMO_SCOPE
        assert 800 < answer["expires_in"] <= 900
        verify(local_system, answer["access_token"], audience=DEMO_AUDIENCE)
        status, _, body = proxy.request("GET", "/.tokex/health")
        assert json.loads(body)["routes"] == [
            {
                "route": "routes[0]",
                "audience": DEMO_AUDIENCE,
                "scopes": [DEMO_SCOPE],
                "has_token": True,
            }
        ]
        assert upstream.received == []
        log = proxy.log.getvalue()
    assert not secret_file.exists()  # removed at shutdown
    assert secret not in log and answer["access_token"] not in log


def test_tokens_and_secrets_never_reach_the_log(proxy, upstream):
    # A query value no log line's digits (its time, its duration) can happen to contain.
    query = "card=4111-1111-1111-1111"
    proxy.request("GET", f"/orders/1?{query}", {"Authorization": "Bearer app-secret-value"})
    proxy.request("GET", "/.tokex/token?audience=demo-api", {SECRET_HEADER: "the-test-secret"})
    # Each line is written once its answer is sent: the two may land in either order.
    requests = {line["path"]: line for line in proxy.request_lines(2)}
    text = proxy.log.getvalue()
    token = upstream.received[0].token
    for never in (token, token.split(".")[2], "the-test-secret", "app-secret-value", query):
        assert never not in text
    assert requests["/orders/1"] | {"time": 0, "duration_ms": 0} == {
        "time": 0,
        "event": "request",
        "listener": "listen",
        "route": "routes[0]",
        "method": "GET",
        "path": "/orders/1",
        "status": 200,
        "upstream_status": 200,
        "error": None,
        "duration_ms": 0,
    }
    assert requests["/.tokex/token"]["status"] == 200


# --- concurrency and shutdown ----------------------------------------------------------------


def test_32_concurrent_requests_on_a_cold_cache_make_one_exchange(proxy, upstream, exchanges):
    """All at once, each caller gets the answer to its own request: the upstream echoes
    the target, so a proxy that sent one caller's request, or relayed one caller's answer,
    on behalf of another is caught, not only one that lost a request."""
    count = 32
    barrier = threading.Barrier(count)
    answers: dict[str, tuple[int, bytes]] = {}

    def one(number: int) -> None:
        target = f"/orders/{number}"
        barrier.wait()
        status, _, body = proxy.request("GET", target)
        answers[target] = (status, body)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    targets = [f"/orders/{number}" for number in range(count)]
    assert sorted(answers) == sorted(targets)
    for target, (status, body) in answers.items():
        assert (status, json.loads(body)["target"]) == (200, target), body
    assert sorted(got.target for got in upstream.received) == sorted(targets)  # each once
    assert exchanges == [DEMO_AUDIENCE]
    assert len({got.token for got in upstream.received}) == 1


def test_token_endpoint_health_and_forwarded_requests_at_once_on_a_cold_cache(
    proxy, upstream, exchanges
):
    """A new proxy, no token yet: callers of its token endpoint, of its health endpoint
    and of the route, all at once, share one exchange; every caller of the token endpoint
    gets the token the upstream got, and every caller gets the answer to its own request
    (a forwarded request its own echoed target, never another's or a local answer)."""
    kinds = ["token"] * 16 + ["route"] * 8 + ["health"] * 8
    barrier = threading.Barrier(len(kinds))
    answers: list[tuple[int, str, int, bytes]] = []
    with_secret = {SECRET_HEADER: "the-test-secret"}

    def one(number: int, kind: str) -> None:
        barrier.wait()
        if kind == "token":
            target = f"/.tokex/token?audience={DEMO_AUDIENCE}&scope={DEMO_SCOPE}"
            status, _, body = proxy.request("GET", target, with_secret)
        elif kind == "route":
            status, _, body = proxy.request("GET", f"/orders/{number}")
        else:
            status, _, body = proxy.request("GET", "/.tokex/health")
        answers.append((number, kind, status, body))

    threads = [threading.Thread(target=one, args=pair) for pair in enumerate(kinds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted((kind, status) for _, kind, status, _ in answers) == sorted(
        (kind, 200) for kind in kinds
    )
    assert exchanges == [DEMO_AUDIENCE]
    routed = {number: json.loads(body) for number, kind, _, body in answers if kind == "route"}
    for number, echo in routed.items():
        assert echo["target"] == f"/orders/{number}", echo
    assert sorted(got.target for got in upstream.received) == sorted(
        f"/orders/{number}" for number in routed
    )
    tokens = {json.loads(body)["access_token"] for _, kind, _, body in answers if kind == "token"}
    assert tokens == {got.token for got in upstream.received}
    assert len(tokens) == 1
    # Each its token's own remaining life and granted scope, wherever the answer came from.
    claims = jwt.decode(tokens.pop(), options={"verify_signature": False})
    for _, kind, _, body in answers:
        if kind == "token":
            answer = json.loads(body)
            assert (
                claims["exp"] - claims["iat"] - 5
                <= answer["expires_in"]
                < claims["exp"] - claims["iat"]
            )
            assert answer["scope"] == claims["scope"] == DEMO_SCOPE
    for _, kind, _, body in answers:
        if kind == "health":
            assert [route["route"] for route in json.loads(body)["routes"]] == ["routes[0]"]
    _, _, body = proxy.request("GET", "/.tokex/health")
    assert [route["has_token"] for route in json.loads(body)["routes"]] == [True]


def test_shutdown_lets_the_request_in_flight_finish_and_refuses_new_ones(proxy, upstream):
    answers: list[tuple[int, dict[str, str], bytes]] = []
    in_flight = threading.Thread(target=lambda: answers.append(proxy.request("GET", "/slow")))
    in_flight.start()
    assert upstream.arrived.wait(30)
    finished: list[bool] = []
    stopping = threading.Thread(target=lambda: finished.append(proxy.server.shutdown(20)))
    stopping.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the port closes at once
        try:
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
        except ConnectionRefusedError:
            break
        except OSError:  # reset: it was queued as the port closed
            pass
        time.sleep(0.05)
    else:
        pytest.fail("the proxy still accepts connections while shutting down")
    assert stopping.is_alive() and not answers  # waiting for the request in flight
    upstream.release.set()
    in_flight.join(30)
    stopping.join(30)
    status, headers, body = answers[0]
    assert status == 200 and json.loads(body)["target"] == "/slow"
    assert headers["Connection"] == "close"
    assert finished == [True]


def test_an_idle_keep_alive_connection_is_closed_at_shutdown(proxy):
    connection = proxy.connection()
    connection.request("GET", "/.tokex/health")
    assert connection.getresponse().read()
    finished: list[bool] = []
    stopping = threading.Thread(target=lambda: finished.append(proxy.server.shutdown(60)))
    stopping.start()
    # The proxy closes it: this side, which sent nothing more, reads its end (the proxy's
    # own idle timeout is 60 s, and this side keeps it open).
    assert connection.sock is not None
    connection.sock.settimeout(10)  # generous: it is closed at once
    assert connection.sock.recv(1) == b""
    # Not waiting for the idle connection: a shutdown that did would end only by its 60 s
    # timeout, with False (or True, had it closed the connection and waited on anyway);
    # this wait is generous, far under that timeout.
    stopping.join(10)
    assert finished == [True]
    records = [json.loads(line) for line in proxy.log.getvalue().splitlines()]
    [stopped] = [record for record in records if record["event"] == "stopped"]
    assert stopped["in_flight"] == 0  # an idle connection is no request in flight
    with pytest.raises((http.client.HTTPException, OSError)):
        connection.request("GET", "/.tokex/health")
        connection.getresponse()
    connection.close()


def test_the_cli_serves_one_route_and_exits_0_on_sigterm(local_system, upstream, pki, tmp_path):
    import subprocess
    import sys

    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "TOKEX_"))
    }
    env |= local_system.deployment.workload.env() | {"AWS_REGION": "us-east-1"}
    env |= {"TOKEX_ENDPOINT": local_system.issuer, "XDG_RUNTIME_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "tokex.cli.main", "proxy", "--listen", "127.0.0.1:0"]
    argv += ["--upstream", upstream.url, "--audience", DEMO_AUDIENCE, "--scope", DEMO_SCOPE]
    argv += ["--ca-file", str(pki.ca_file), "--json"]
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        started = json.loads(process.stdout.readline())
        port = int(started["listening"]["listen"].rsplit(":", 1)[1])
        assert started["secret_file"].startswith(str(tmp_path))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/orders/9")
        assert connection.getresponse().status == 200
        connection.close()
        verify(local_system, upstream.received[-1].token, audience=DEMO_AUDIENCE)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert not os.path.exists(started["secret_file"])
