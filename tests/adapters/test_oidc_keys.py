"""OidcIssuerKeys against a real HTTPS issuer on loopback.

A throwaway CA and a server certificate for 127.0.0.1 are made (tests/support/tls.py); the
adapter trusts that CA through its `ssl_context` (and, without it, refuses the server: the
system store does not know the CA). The server serves an issuer's discovery document and
JWKS, counts the requests per path, and can misbehave: redirect, drip, hold its answer,
never end, answer 500. The adapter's clock is a fake one, so cache ages are set, never
waited for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.loopback import QuietHandler, serving
from tests.support.tls import HttpsServer, Pki, make_pki
from tokex import deadline
from tokex.adapters.oidc_keys import (
    DISCOVERY_PATH,
    FAILED_FETCH_BACKOFF_SECONDS,
    MAX_STALE_SECONDS,
    OidcIssuerKeys,
)
from tokex.errors import DeadlineExceeded, TemporarilyUnavailable
from tokex.evidence.trusted_issuers import AWS_OIF, TrustedIssuer

ACCOUNT = "123456789012"
ISSUER_PATH = "/id/EXAMPLED539D4633E53DE1B71EXAMPLE"  # EKS issuers have a path
JWKS_PATH = ISSUER_PATH + "/keys"
DISCOVERY = ISSUER_PATH + DISCOVERY_PATH
START = 1_750_000_000.0
REFRESH = 3600
MIN_REFETCH = 60
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())
ROTATED_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
# What the adapter must skip: RSA keys under 2048 bits are breakable.
WEAK_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505


# --- the issuer on loopback -------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Holds end early once the server's `release` is set (at teardown at the latest).
    delay: float = 0.0  # seconds before the answer
    drip: float = 0.0  # seconds between the body's bytes
    endless: bool = False  # a chunked body that never ends


def document(value: Any, **route: Any) -> Route:
    return Route(
        body=json.dumps(value).encode(), headers={"Content-Type": "application/json"}, **route
    )


class IssuerServer(HttpsServer):
    """An OIDC issuer on 127.0.0.1 (HTTPS, or plain HTTP without `tls`)."""

    ENDLESS_CAP = 256 * 1024 * 1024  # an endless body gives up here, if never stopped

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        super().__init__(_Handler, tls)
        self.issuer = self.url + ISSUER_PATH
        self.routes: dict[str, Route] = {}
        self.requests: Counter[str] = Counter()
        self.endless_sent = 0
        self.endless_stopped = threading.Event()  # the client hung up on an endless body
        # Ends every `delay` and `drip` at once: a late answer a passing test never wanted
        # is not waited for.
        self.release = threading.Event()
        self.lock = threading.Lock()

    def publish(self, *jwks: Any, **discovery: Any) -> None:
        self.routes[DISCOVERY] = document(
            {"issuer": self.issuer, "jwks_uri": self.url + JWKS_PATH, **discovery}
        )
        self.routes[JWKS_PATH] = document({"keys": list(jwks)})

    def count(self, path: str) -> int:
        with self.lock:
            return self.requests[path]


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    server: IssuerServer

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.requests[self.path] += 1
            route = server.routes.get(self.path, Route(status=404))
        server.release.wait(route.delay)
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        try:
            if route.endless:
                self._endless()
                return
            if "Content-Length" not in route.headers:
                self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            if not route.drip:
                self.wfile.write(route.body)
                return
            for index in range(len(route.body)):
                self.wfile.write(route.body[index : index + 1])
                self.wfile.flush()
                server.release.wait(route.drip)
        except OSError:  # the client hung up
            self.close_connection = True

    def _endless(self) -> None:
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b" " * 4096
        try:
            while self.server.endless_sent < IssuerServer.ENDLESS_CAP:
                self.wfile.write(b"1000\r\n" + chunk + b"\r\n")
                self.wfile.flush()
                self.server.endless_sent += len(chunk)
        except OSError:
            self.server.endless_stopped.set()
        self.close_connection = True


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("oidc-pki"))


def serve(tls: ssl.SSLContext | None) -> Iterator[IssuerServer]:
    with serving(IssuerServer(tls)) as server:
        try:
            yield server
        finally:
            server.release.set()


@pytest.fixture
def server(pki: Pki) -> Iterator[IssuerServer]:
    yield from serve(pki.server)


@pytest.fixture
def http_server() -> Iterator[IssuerServer]:
    yield from serve(None)


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def issuer_of(server: IssuerServer) -> TrustedIssuer:
    return TrustedIssuer(AWS_OIF, server.issuer, ACCOUNT)


def adapter(pki: Pki, clock: FakeClock, **options: Any) -> OidcIssuerKeys:
    return OidcIssuerKeys(
        clock=clock,
        refresh_seconds=REFRESH,
        min_refetch_seconds=MIN_REFETCH,
        ssl_context=pki.client,
        **options,
    )


def rsa_jwk(kid: str, key: rsa.RSAPrivateKey = RSA_KEY, **members: Any) -> dict[str, Any]:
    data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "use": "sig", "alg": "RS256", **members}


def ec_jwk(kid: str, key: ec.EllipticCurvePrivateKey = EC_KEY, **members: Any) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **members}


def unavailable(keys: OidcIssuerKeys, issuer: TrustedIssuer, kid: str = "k1") -> str:
    """The reason of the 503 that looking `kid` up raises."""
    with pytest.raises(TemporarilyUnavailable) as failed:
        keys.key(issuer, kid)
    assert "retry later" in failed.value.description
    return failed.value.reason


# --- fetching ----------------------------------------------------------------------------


def test_keys_are_fetched_over_verified_tls_and_bound_to_their_algorithm(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    server.publish(
        rsa_jwk("rsa"),
        ec_jwk("ec-no-alg"),
        rsa_jwk("use-null", use=None),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        rsa_jwk("encryption", use="enc"),
        rsa_jwk("rs512", alg="RS512"),
        rsa_jwk("verify-not-in-key-ops", key_ops=["encrypt"]),
        ec_jwk("p256", ec.generate_private_key(ec.SECP256R1())),
        ec_jwk("ec-said-rs256", alg="RS256"),
        rsa_jwk("weak", WEAK_RSA_KEY),
        rsa_jwk("private", d="AQAB"),
        rsa_jwk("dup"),
        ec_jwk("dup"),
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},  # no kid
        "not an object",
    )
    keys = adapter(pki, clock)
    issuer = issuer_of(server)

    found = keys.key(issuer, "rsa")
    assert isinstance(found, jwt.PyJWK)
    assert found.algorithm_name == "RS256"
    assert found.key.public_numbers() == RSA_KEY.public_key().public_numbers()
    ec_key = keys.key(issuer, "ec-no-alg")
    assert ec_key is not None and ec_key.algorithm_name == "ES384"
    assert ec_key.key.public_numbers() == EC_KEY.public_key().public_numbers()
    for skipped in (
        "use-null",
        "hmac",
        "encryption",
        "rs512",
        "verify-not-in-key-ops",
        "p256",
        "ec-said-rs256",
        "weak",
        "private",
        "dup",
        "broken",
    ):
        assert keys.key(issuer, skipped) is None, skipped
    # One discovery, one JWKS: the skipped kids are unknown within the refetch interval.
    assert (server.count(DISCOVERY), server.count(JWKS_PATH)) == (1, 1)


def test_an_rsa_key_without_use_or_alg_is_an_rs256_key(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    bare = {k: v for k, v in rsa_jwk("bare").items() if k not in ("use", "alg")}
    server.publish(bare)
    found = adapter(pki, clock).key(issuer_of(server), "bare")
    assert found is not None and found.algorithm_name == "RS256"


def test_each_fetch_runs_in_its_traced_call_named_by_the_host_alone(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    """urllib3 is no AWS SDK: the function's tracer sees the issuer's documents only
    through `traced` (tokex/adapters/tracing.py), which is told the call and the host."""
    calls: list[tuple[str, str, str]] = []

    @contextlib.contextmanager
    def traced(name: str, host: str) -> Iterator[None]:
        calls.append(("start", name, host))
        yield
        calls.append(("end", name, host))

    server.publish(rsa_jwk("rsa"))
    assert adapter(pki, clock, traced=traced).key(issuer_of(server), "rsa") is not None
    assert calls == [
        ("start", "jwks discovery", "127.0.0.1"),
        ("end", "jwks discovery", "127.0.0.1"),
        ("start", "jwks jwks", "127.0.0.1"),
        ("end", "jwks jwks", "127.0.0.1"),
    ]


def test_the_system_ca_store_does_not_trust_an_unknown_ca(
    server: IssuerServer, clock: FakeClock
) -> None:
    server.publish(rsa_jwk("k1"))
    keys = OidcIssuerKeys(clock=clock)  # no ssl_context: the system's CA store
    assert unavailable(keys, issuer_of(server)) == "jwks:127.0.0.1:discovery_unreachable"
    assert server.count(JWKS_PATH) == 0
    # The client refused the server's certificate: it never got to ask for anything.
    assert server.certificate_refused.wait(timeout=5)
    assert server.count(DISCOVERY) == 0


# --- the cache ---------------------------------------------------------------------------


def test_the_cache_answers_until_it_is_due_for_a_refresh(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    server.publish(rsa_jwk("k1"))
    keys, issuer = adapter(pki, clock), issuer_of(server)
    assert keys.key(issuer, "k1") is not None
    clock.now += REFRESH - 1
    assert keys.key(issuer, "k1") is not None
    assert (server.count(DISCOVERY), server.count(JWKS_PATH)) == (1, 1)

    clock.now += 1
    assert keys.key(issuer, "k1") is not None
    assert (server.count(DISCOVERY), server.count(JWKS_PATH)) == (2, 2)


def test_a_rotated_key_is_fetched_once_and_a_flood_of_random_kids_costs_one_fetch(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    server.publish(rsa_jwk("k1"))
    keys, issuer = adapter(pki, clock), issuer_of(server)
    assert keys.key(issuer, "k1") is not None

    server.publish(rsa_jwk("k1"), rsa_jwk("k2", ROTATED_KEY))
    # Within the interval the new kid is unknown, and asking costs nothing.
    assert keys.key(issuer, "k2") is None
    assert server.count(JWKS_PATH) == 1
    clock.now += MIN_REFETCH
    rotated = keys.key(issuer, "k2")
    assert rotated is not None
    assert rotated.key.public_numbers() == ROTATED_KEY.public_key().public_numbers()
    assert server.count(JWKS_PATH) == 2

    for number in range(200):
        assert keys.key(issuer, f"random-{number}") is None
    assert server.count(JWKS_PATH) == 2
    clock.now += MIN_REFETCH
    for number in range(200):
        assert keys.key(issuer, f"random-again-{number}") is None
    assert (server.count(DISCOVERY), server.count(JWKS_PATH)) == (3, 3)
    assert keys.key(issuer, "k1") is not None


def test_by_default_a_wall_clock_set_back_does_not_stop_the_refetch(
    server: IssuerServer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default clock, as wiring builds the adapter: the wall clock stepped back an hour
    (NTP, an operator) must not leave a rotated key unknown, nor a withdrawn one trusted,
    for that hour; the monotonic clock still counts."""
    monotonic, wall = [100.0], [1_800_000_000.0]
    monkeypatch.setattr(time, "monotonic", lambda: monotonic[0])
    monkeypatch.setattr(time, "time", lambda: wall[0])
    keys = OidcIssuerKeys(
        refresh_seconds=REFRESH, min_refetch_seconds=MIN_REFETCH, ssl_context=pki.client
    )
    server.publish(rsa_jwk("k1"))
    issuer = issuer_of(server)
    assert keys.key(issuer, "k1") is not None
    server.publish(rsa_jwk("k2", ROTATED_KEY))  # k1 withdrawn, k2 added
    wall[0] -= 3600
    monotonic[0] += MIN_REFETCH
    assert keys.key(issuer, "k2") is not None
    assert server.count(JWKS_PATH) == 2
    monotonic[0] += REFRESH
    assert keys.key(issuer, "k1") is None


def test_caches_are_per_issuer(pki: Pki, clock: FakeClock) -> None:
    servers = [serve(pki.server), serve(pki.server)]
    first, second = (next(generator) for generator in servers)
    try:
        first.publish(rsa_jwk("k1"))
        second.publish(rsa_jwk("k2", ROTATED_KEY))
        keys = adapter(pki, clock)
        assert keys.key(issuer_of(first), "k1") is not None
        # The other issuer's kid is not this issuer's, even when cached.
        assert keys.key(issuer_of(first), "k2") is None
        assert keys.key(issuer_of(second), "k2") is not None
        assert keys.key(issuer_of(second), "k1") is None
        assert [s.count(JWKS_PATH) for s in (first, second)] == [1, 1]
    finally:
        for generator in servers:
            next(generator, None)


def test_a_failed_refresh_keeps_the_cached_keys_for_a_day(
    server: IssuerServer, pki: Pki, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    server.publish(rsa_jwk("k1"))
    keys, issuer = adapter(pki, clock), issuer_of(server)
    assert keys.key(issuer, "k1") is not None

    server.routes[DISCOVERY] = Route(status=500)
    clock.now += REFRESH
    with caplog.at_level(logging.WARNING, logger="tokex.adapters.oidc_keys"):
        assert keys.key(issuer, "k1") is not None
    assert "keeping the keys fetched 3600 s ago" in caplog.text
    assert server.count(DISCOVERY) == 2
    # Its kids are still known; an unknown one cannot be told apart from a rotated one.
    assert unavailable(keys, issuer, "k9") == "jwks:127.0.0.1:discovery_http_500"
    # An issuer that is down is asked once per backoff, not once per request.
    assert keys.key(issuer, "k1") is not None
    assert server.count(DISCOVERY) == 2
    clock.now += FAILED_FETCH_BACKOFF_SECONDS
    assert keys.key(issuer, "k1") is not None
    assert server.count(DISCOVERY) == 3

    clock.now = START + MAX_STALE_SECONDS
    assert unavailable(keys, issuer) == "jwks:127.0.0.1:discovery_http_500"

    server.publish(rsa_jwk("k1"))  # the issuer is back
    clock.now += FAILED_FETCH_BACKOFF_SECONDS
    assert keys.key(issuer, "k1") is not None


def test_a_cold_cache_that_cannot_fetch_fails_and_retries_after_the_backoff(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    server.routes[DISCOVERY] = Route(status=503)
    keys, issuer = adapter(pki, clock), issuer_of(server)
    assert unavailable(keys, issuer) == "jwks:127.0.0.1:discovery_http_503"
    assert unavailable(keys, issuer) == "jwks:127.0.0.1:discovery_http_503"
    assert server.count(DISCOVERY) == 1

    server.publish(rsa_jwk("k1"))
    clock.now += FAILED_FETCH_BACKOFF_SECONDS
    assert keys.key(issuer, "k1") is not None
    assert server.count(DISCOVERY) == 2


def test_concurrent_callers_on_a_cold_cache_share_one_fetch(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    server.publish(rsa_jwk("k1"))
    server.routes[DISCOVERY].delay = 0.3  # every caller arrives while the fetch is on
    keys, issuer = adapter(pki, clock), issuer_of(server)
    start = threading.Barrier(16)
    found: list[jwt.PyJWK | None] = []
    errors: list[BaseException] = []

    def ask() -> None:
        start.wait()
        try:
            found.append(keys.key(issuer, "k1"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not errors
    assert len(found) == 16 and all(key is not None for key in found)
    assert (server.count(DISCOVERY), server.count(JWKS_PATH)) == (1, 1)


def test_concurrent_callers_after_a_rotation_share_one_refetch(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    """A warm cache, past the refetch interval, and the issuer has rotated to a new key:
    sixteen callers ask for its kid at once while the JWKS answer is slowed. One refetch
    serves them all (the issuer's lock); the callers that waited for it find the key in
    its result, none taking the kid for unknown (None) nor getting a 503."""
    server.publish(rsa_jwk("k1"))
    keys, issuer = adapter(pki, clock), issuer_of(server)
    assert keys.key(issuer, "k1") is not None
    server.publish(rsa_jwk("k2", ROTATED_KEY))
    server.routes[JWKS_PATH].delay = 0.3  # every caller arrives while the refetch is on
    clock.now += MIN_REFETCH
    start = threading.Barrier(16)
    found: list[jwt.PyJWK | None] = []
    errors: list[BaseException] = []

    def ask() -> None:
        start.wait()
        try:
            found.append(keys.key(issuer, "k2"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not errors
    rotated = ROTATED_KEY.public_key().public_numbers()
    assert len(found) == 16
    assert all(key is not None and key.key.public_numbers() == rotated for key in found)
    assert (server.count(DISCOVERY), server.count(JWKS_PATH)) == (2, 2)


# --- failures: 503, never the upstream's words -------------------------------------------


def test_an_unreachable_issuer(pki: Pki, clock: FakeClock, refused_port: int) -> None:
    issuer = TrustedIssuer(AWS_OIF, f"https://127.0.0.1:{refused_port}", ACCOUNT)
    assert unavailable(adapter(pki, clock), issuer) == "jwks:127.0.0.1:discovery_unreachable"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed(
    server: IssuerServer, pki: Pki, clock: FakeClock, status: int
) -> None:
    server.publish(rsa_jwk("k1"))
    elsewhere = server.url + "/elsewhere"
    server.routes[JWKS_PATH] = Route(status=status, headers={"Location": elsewhere})
    server.routes["/elsewhere"] = server.routes[DISCOVERY]
    reason = unavailable(adapter(pki, clock), issuer_of(server))
    assert reason == f"jwks:127.0.0.1:jwks_http_{status}"
    assert server.count("/elsewhere") == 0


def test_an_endless_document_is_read_no_further_than_the_limit(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    server.publish(rsa_jwk("k1"))
    server.routes[JWKS_PATH] = Route(endless=True)
    assert unavailable(adapter(pki, clock), issuer_of(server)) == "jwks:127.0.0.1:jwks_too_large"
    # The client hung up: the server's writes failed long before its own cap (a client
    # that read on, or drained the body to reuse the connection, would reach the cap).
    assert server.endless_stopped.wait(timeout=10)
    assert server.endless_sent < IssuerServer.ENDLESS_CAP


def test_a_declared_oversized_document_is_not_read(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    big = {"issuer": server.issuer, "jwks_uri": server.url + JWKS_PATH, "pad": "x" * 70_000}
    server.routes[DISCOVERY] = document(big)
    reason = unavailable(adapter(pki, clock), issuer_of(server))
    assert reason == "jwks:127.0.0.1:discovery_too_large"
    server.publish(rsa_jwk("k1"))
    limit = len(server.routes[DISCOVERY].body)
    assert len(server.routes[JWKS_PATH].body) > limit
    small = adapter(pki, clock, max_document_bytes=limit)
    assert unavailable(small, issuer_of(server)) == "jwks:127.0.0.1:jwks_too_large"


@pytest.mark.parametrize(
    ("discovery", "jwks", "what"),
    [
        pytest.param({"issuer": "https://other.example"}, None, "discovery_issuer", id="issuer"),
        pytest.param({"issuer": None}, None, "discovery_issuer", id="no-issuer"),
        pytest.param({"jwks_uri": None}, None, "jwks_uri", id="no-jwks-uri"),
        pytest.param({"jwks_uri": 7}, None, "jwks_uri", id="jwks-uri-number"),
        pytest.param(
            {"jwks_uri": "https://user:pw@127.0.0.1/keys"}, None, "jwks_uri", id="credentials"
        ),
        pytest.param({"jwks_uri": "file:///etc/passwd"}, None, "jwks_uri", id="file-uri"),
        pytest.param({"jwks_uri": "http://169.254.169.254/keys"}, None, "jwks_uri", id="http"),
        # An address of the exchange's own network, unless it is the issuer's own host.
        pytest.param(
            {"jwks_uri": "https://169.254.169.254/latest/meta-data"},
            None,
            "jwks_uri_internal",
            id="imds",
        ),
        pytest.param(
            {"jwks_uri": "https://10.0.0.5:8443/keys"}, None, "jwks_uri_internal", id="private"
        ),
        pytest.param(
            {"jwks_uri": "https://[fd00:ec2::254]/keys"}, None, "jwks_uri_internal", id="ula"
        ),
        pytest.param(
            {"jwks_uri": "https://127.0.0.2/keys"}, None, "jwks_uri_internal", id="loopback"
        ),
        # The same addresses in the spellings the resolver also reads as IPv4.
        pytest.param(
            {"jwks_uri": "https://2852039166/keys"}, None, "jwks_uri_internal", id="integer"
        ),
        pytest.param(
            {"jwks_uri": "https://0xa9.0xfe.0xa9.0xfe/keys"}, None, "jwks_uri_internal", id="hex"
        ),
        pytest.param(
            {"jwks_uri": "https://169.254.43518/keys"}, None, "jwks_uri_internal", id="short"
        ),
        pytest.param({"jwks_uri": "https://127.2/keys"}, None, "jwks_uri_internal", id="127.2"),
        # urllib3, which connects, ends the host at a backslash; urlsplit did not, and the
        # address check saw the name `127.0.0.2\.example.com`.
        pytest.param(
            {"jwks_uri": "https://127.0.0.2\\.attacker.example/keys"},
            None,
            "jwks_uri",
            id="backslash",
        ),
        pytest.param(None, {"keys": "none"}, "jwks_keys", id="keys-not-a-list"),
        pytest.param(None, {"nokeys": []}, "jwks_keys", id="keys-missing"),
        pytest.param(None, {"keys": [{}] * 101}, "jwks_too_many_keys", id="too-many-keys"),
    ],
)
def test_unusable_documents(
    server: IssuerServer,
    pki: Pki,
    clock: FakeClock,
    discovery: dict[str, Any] | None,
    jwks: dict[str, Any] | None,
    what: str,
) -> None:
    server.publish(rsa_jwk("k1"))
    if discovery is not None:
        base = {"issuer": server.issuer, "jwks_uri": server.url + JWKS_PATH}
        server.routes[DISCOVERY] = document({**base, **discovery})
    if jwks is not None:
        server.routes[JWKS_PATH] = document(jwks)
    assert unavailable(adapter(pki, clock), issuer_of(server)) == f"jwks:127.0.0.1:{what}"
    if discovery is not None:
        assert server.count(JWKS_PATH) == 0


@pytest.mark.parametrize(
    ("route", "what"),
    [
        pytest.param(Route(body=b"not json"), "discovery_json", id="not-json"),
        pytest.param(Route(body=b"[]"), "discovery_json", id="a-list"),
        pytest.param(Route(body=b'{"issuer":1,"issuer":2}'), "discovery_json", id="repeated"),
        pytest.param(Route(body=b"\xff{}"), "discovery_json", id="not-utf8"),
        pytest.param(
            Route(body=b"{}", headers={"Content-Encoding": "gzip"}),
            "discovery_encoded",
            id="gzip",
        ),
        pytest.param(
            Route(body=b"{}", headers={"Content-Length": "-1"}),
            "discovery_content_length",
            id="bad-length",
        ),
        pytest.param(
            Route(body=b"{}", headers={"Content-Length": "\u00b2"}),  # a digit to isdigit()
            "discovery_content_length",
            id="superscript-length",
        ),
        pytest.param(
            Route(body=b"{}", headers={"Content-Length": "9" * 5000}),  # past int()'s limit
            "discovery_too_large",
            id="5000-digit-length",
        ),
        pytest.param(
            Route(status=404, body=b"UPSTREAM-SECRET-BODY"), "discovery_http_404", id="404"
        ),
    ],
)
def test_malformed_answers(
    server: IssuerServer, pki: Pki, clock: FakeClock, route: Route, what: str
) -> None:
    server.routes[DISCOVERY] = route
    keys = adapter(pki, clock)
    with pytest.raises(TemporarilyUnavailable) as failed:
        keys.key(issuer_of(server), "k1")
    assert failed.value.reason == f"jwks:127.0.0.1:{what}"
    assert "UPSTREAM" not in failed.value.description


# --- plain http: loopback in local mode only ----------------------------------------------


def test_plain_http_only_on_loopback_and_only_when_allowed(
    http_server: IssuerServer, server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    http_server.publish(rsa_jwk("k1"))
    issuer = issuer_of(http_server)
    assert unavailable(adapter(pki, clock), issuer) == "jwks:127.0.0.1:issuer_url"
    assert http_server.count(DISCOVERY) == 0
    assert adapter(pki, clock, allow_http_loopback=True).key(issuer, "k1") is not None

    # An https issuer whose jwks_uri is plain http on loopback: refused unless allowed.
    server.publish(rsa_jwk("k1"), jwks_uri=http_server.url + JWKS_PATH)
    assert unavailable(adapter(pki, clock), issuer_of(server)) == "jwks:127.0.0.1:jwks_uri"
    allowed = adapter(pki, clock, allow_http_loopback=True)
    assert allowed.key(issuer_of(server), "k1") is not None
    # Never plain http elsewhere, even in local mode.
    server.publish(rsa_jwk("k1"), jwks_uri="http://example.com/keys")
    refused = adapter(pki, clock, allow_http_loopback=True)
    assert unavailable(refused, issuer_of(server)) == "jwks:127.0.0.1:jwks_uri"


# --- the request's deadline --------------------------------------------------------------


# How late a slow issuer's answer comes in the deadline tests: far past their request
# deadlines (0.5 s, 0.2 s), far short of the adapter's read timeout there (60 s). A fetch
# bounded by the deadline has given up long before; one bounded by its per-read timeouts
# only would get the late answer, and the test fails on what it got, never on a clock.
HOLD = 10.0
SLOW_READ_TIMEOUT = 60.0


@pytest.mark.parametrize("kind", ["dripping", "silent"])
def test_a_slow_issuer_fails_at_the_request_deadline_not_with_its_late_keys(
    server: IssuerServer, pki: Pki, clock: FakeClock, kind: str
) -> None:
    """The JWKS, a good one, comes HOLD seconds late: dripped a byte at a time over HOLD
    (every read returns well within the read timeout), or after HOLD of silence. The fetch
    ends at the 0.5 s deadline (503 deadline:jwks); with per-read timeouts only, it would
    return the late key. The JWKS, not the discovery document, is late: the adapter checks
    the deadline before it asks for the JWKS, which would hide a late discovery answer."""
    server.publish(rsa_jwk("k1"))
    late = server.routes[JWKS_PATH]
    if kind == "dripping":
        late.drip = HOLD / len(late.body)
    else:
        late.delay = HOLD
    keys = adapter(pki, clock, read_timeout=SLOW_READ_TIMEOUT)
    with deadline.request_deadline(0.5), pytest.raises(DeadlineExceeded) as failed:
        keys.key(issuer_of(server), "k1")
    assert failed.value.reason == "deadline:jwks"


def test_a_callers_own_short_budget_is_no_failure_of_the_issuer(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    """A fetch begun with less time left than the connect timeout says nothing of the
    issuer: the next request fetches at once (no backoff), and an unknown kid whose
    refetch was cut short is a 503, never taken for a kid the issuer does not publish."""
    server.publish(rsa_jwk("k1"))
    keys, issuer = adapter(pki, clock, connect_timeout=0.5), issuer_of(server)
    server.routes[DISCOVERY].delay = 1.0
    with deadline.request_deadline(0.3), pytest.raises(DeadlineExceeded):
        keys.key(issuer, "k1")
    server.routes[DISCOVERY].delay = 0
    assert keys.key(issuer, "k1") is not None  # the clock has not moved: no backoff
    clock.now += 60  # an unknown kid may be refetched again
    server.routes[DISCOVERY].delay = 1.0
    with deadline.request_deadline(0.3), pytest.raises(DeadlineExceeded):
        keys.key(issuer, "k2")
    assert keys.key(issuer, "k1") is not None  # the cached keys still answer


def test_an_issuer_too_slow_for_a_fair_budget_is_failing(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    """Given its connect timeout or more and still not answering in time, the issuer is
    failing: backed off, and keys it published before keep serving meanwhile."""
    server.publish(rsa_jwk("k1"))
    keys, issuer = adapter(pki, clock, connect_timeout=0.2), issuer_of(server)
    assert keys.key(issuer, "k1") is not None
    clock.now += 3600  # due for a refresh
    server.routes[DISCOVERY].delay = 1.5
    with deadline.request_deadline(0.6):
        assert keys.key(issuer, "k1") is not None  # the stale key, after the failed fetch
    fetches = server.count(DISCOVERY)
    with deadline.request_deadline(0.6):
        assert keys.key(issuer, "k1") is not None  # at once: backed off, not fetched
    assert server.count(DISCOVERY) == fetches == 2


def test_a_caller_waiting_for_a_slow_fetch_stops_at_its_own_deadline(
    server: IssuerServer, pki: Pki, clock: FakeClock
) -> None:
    """The one fetch in flight (no deadline of its own) outlives a second caller's
    budget: that caller gives up waiting for it by its own deadline (503 deadline:jwks).
    Waiting on for the fetch, it would have got the fetch's key once the discovery
    answer came, HOLD seconds late."""
    server.publish(rsa_jwk("k1"))
    server.routes[DISCOVERY].delay = HOLD
    keys, issuer = adapter(pki, clock, read_timeout=SLOW_READ_TIMEOUT), issuer_of(server)
    first = threading.Thread(target=keys.key, args=(issuer, "k1"))
    first.start()
    while server.count(DISCOVERY) == 0:
        time.sleep(0.01)
    with deadline.request_deadline(0.2), pytest.raises(DeadlineExceeded) as failed:
        keys.key(issuer, "k1")
    assert failed.value.reason == "deadline:jwks"
    server.release.set()  # the first fetch gets its answer now, not HOLD seconds late
    first.join(timeout=10)
    assert keys.key(issuer, "k1") is not None
    assert server.count(DISCOVERY) == 1


@pytest.mark.parametrize(
    "odd",
    [
        {"kid": "odd", "kty": ["RSA"]},
        {"kid": "odd", "kty": {"RSA": 1}},
        {"kid": "odd", "kty": "EC", "crv": ["P-384"]},
        {"kid": "odd", "kty": "EC", "crv": {}},
    ],
)
def test_a_key_whose_type_is_not_a_string_is_skipped_not_a_failure_of_the_set(
    server: IssuerServer, pki: Pki, clock: FakeClock, odd: dict[str, Any]
) -> None:
    """It raised TypeError (unhashable) out of the fetch: the cached keys stopped serving,
    the backoff never applied, and every exchange for the issuer was a 503 "bug"."""
    server.publish(rsa_jwk("k1"))
    keys, issuer = adapter(pki, clock), issuer_of(server)
    assert keys.key(issuer, "k1") is not None
    server.publish(rsa_jwk("k1"), odd)
    clock.now += REFRESH
    assert keys.key(issuer, "k1") is not None
    assert keys.key(issuer, "odd") is None
    assert server.count(JWKS_PATH) == 2
