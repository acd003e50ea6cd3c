"""`tokex.client.TokexAuth`: requests with a cached tokex token, one exchange in flight."""

from __future__ import annotations

import threading
from collections.abc import Iterator

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
