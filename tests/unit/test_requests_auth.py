"""`tokex.client.TokexAuth`: requests with a cached tokex token, one exchange in flight."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from tests.support.fake_issuer import (
    FakeIssuer,
    fake_issuer,
    sa_token_file,
    use_static_credentials,
)
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex.client import TokenClient, TokexAuth


@pytest.fixture
def issuer(monkeypatch) -> Iterator[FakeIssuer]:
    use_static_credentials(monkeypatch)
    with fake_issuer(expires_in=900) as running:
        yield running


def authorization(auth: TokexAuth) -> str:
    prepared = requests.Request("GET", "https://orders.example.com/orders").prepare()
    return auth(prepared).headers["Authorization"]


def test_attaches_a_bearer_token_for_the_audience_and_scopes(issuer) -> None:
    auth = TokexAuth(issuer.url, "orders-api", scopes=["orders:read"])
    assert isinstance(auth, requests.auth.AuthBase)
    assert authorization(auth) == "Bearer token-1"
    assert authorization(auth) == "Bearer token-1"
    assert issuer.exchanges == 1
    assert issuer.forms[0]["audience"] == ["orders-api"]
    assert issuer.forms[0]["scope"] == ["orders:read"]


def test_refreshes_ahead_of_expiry(issuer) -> None:
    now = [0.0]
    auth = TokexAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")
    assert authorization(auth) == "Bearer token-1"
    now[0] = 0.79 * 900
    assert authorization(auth) == "Bearer token-1"
    now[0] = 0.8 * 900
    assert authorization(auth) == "Bearer token-2"


def test_threads_at_expiry_make_one_exchange(issuer) -> None:
    issuer.delay = 0.3
    now = [0.0]
    auth = TokexAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")
    assert authorization(auth) == "Bearer token-1"
    now[0] = 900.0  # expired
    barrier = threading.Barrier(8)
    seen: list[str] = []

    def send() -> None:
        barrier.wait()
        seen.append(authorization(auth))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert seen == ["Bearer token-2"] * 8
    assert issuer.exchanges == 2


def test_eks_evidence_and_its_refresh(issuer, tmp_path) -> None:
    """The evidence choice goes to the auth's own TokenClient; a refresh reads the (rotated)
    token file again."""
    now = [0.0]
    path = sa_token_file(tmp_path, issuer.url)
    auth = TokexAuth(
        TokenClient(issuer.url, evidence="eks", token_file=path, clock=lambda: now[0]), "orders-api"
    )
    assert authorization(auth) == "Bearer token-1"
    sa_token_file(tmp_path, issuer.url, sub="system:serviceaccount:a:rotated")
    now[0] = 0.8 * 900
    assert authorization(auth) == "Bearer token-2"
    first, second = (form["subject_token"][0] for form in issuer.forms)
    assert first != second and second == path.read_text().strip()
    assert {form["subject_token_type"][0] for form in issuer.forms} == {
        "urn:ietf:params:oauth:token-type:jwt"
    }
    made = TokexAuth(issuer.url, "orders-api", evidence="eks", token_file=path)
    assert authorization(made) == "Bearer token-3"
    assert issuer.forms[-1]["subject_token"] == [second]


def test_a_401_forgets_the_token_once_it_is_old_enough(issuer) -> None:
    """The API no longer accepts token-1 (revoked, or its key rotated out)."""

    class Api(QuietHandler):
        def do_GET(self) -> None:
            authorization = self.headers.get("Authorization", "")
            status = 401 if authorization == "Bearer token-1" else 200
            self.send_document(status, authorization.encode(), {"Content-Type": "text/plain"})

    now = [0.0]
    auth = TokexAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")
    with serving(LoopbackServer(Api)) as api, requests.Session() as session:
        session.auth = auth
        # Refused as soon as it was issued: a new one would be too (wrong audience, say).
        assert [session.get(api.url).status_code for _ in range(2)] == [401, 401]
        assert issuer.exchanges == 1
        now[0] = 60.0
        assert session.get(api.url).status_code == 401  # forgets it
        answer = session.get(api.url)
        assert (answer.status_code, answer.text) == (200, "Bearer token-2")


@contextmanager
def serving_redirecting_api() -> Iterator[tuple[str, list[str]]]:
    """An API whose `/away` redirects to another origin (a login page, say) that answers
    401, whose `/back` redirects to its own `/refused`, which answers 401; and what
    Authorization each 401 came with."""
    seen: list[str] = []

    class Elsewhere(QuietHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", "none"))
            self.send_document(401, b"log in", {"Content-Type": "text/plain"})

    with serving(LoopbackServer(Elsewhere)) as elsewhere:

        class Api(QuietHandler):
            def do_GET(self) -> None:
                if self.path == "/refused":
                    seen.append(self.headers.get("Authorization", "none"))
                    self.send_document(401, b"no", {"Content-Type": "text/plain"})
                    return
                target = f"{elsewhere.url}/login" if self.path == "/away" else "/refused"
                self.send_document(302, b"", {"Location": target})

        with serving(LoopbackServer(Api)) as api:
            yield api.url, seen


@pytest.fixture
def redirecting_api() -> Iterator[tuple[str, list[str]]]:
    with serving_redirecting_api() as running:
        yield running


def test_a_401_after_a_redirect_to_another_origin_forgets_nothing(issuer, redirecting_api) -> None:
    """requests sends no Authorization across origins, so that 401 refused no token: the
    token was forgotten all the same, an exchange per request."""
    url, seen = redirecting_api
    now = [0.0]
    auth = TokexAuth(TokenClient(issuer.url, clock=lambda: now[0]), "orders-api")
    with requests.Session() as session:
        session.auth = auth
        for _ in range(5):
            now[0] += 60.0  # old enough to be forgotten
            assert session.get(f"{url}/away").status_code == 401
        assert seen == ["none"] * 5
        assert issuer.exchanges == 1
        # A 401 of the token's own origin, after a redirect there, still forgets it.
        assert session.get(f"{url}/back").status_code == 401
        assert seen[-1] == "Bearer token-1"
        session.get(f"{url}/back")
        assert seen[-1] == "Bearer token-2"
    assert issuer.exchanges == 2
