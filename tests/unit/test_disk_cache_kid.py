"""`tokex token --cache-dir`: a cached token is served only while the issuer still
publishes the key that signed it. The cache key (endpoint, audience, principal...) is the
same after `tokex local` restarts with new signing keys, or after an emergency rotation
removed a key from the JWKS: the old token, which no verifier accepts, was served for up to
80 % of its lifetime."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support.fake_issuer import use_static_credentials
from tests.support.loopback import LoopbackServer, QuietHandler, refusing_port, serving
from tokex import base64url
from tokex.cli.main import main
from tokex.client import disk_cache
from tokex.tokens.jwks import JWKS_PATH, build_jwks, jwk_from_public_key
from tokex.tokens.jws import encode_jwt


class Key:
    """An ES256 signing key, as tokex's signers are: its `kid` the RFC 7638 thumbprint."""

    alg = "ES256"

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = jwk_from_public_key(self.private_key.public_key(), self.alg)
        self.kid = self.jwk["kid"]

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.jwk)

    def sign(self, signing_input: bytes) -> bytes:
        r, s = decode_dss_signature(self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class KeyedIssuer:
    """A loopback tokex issuer: discovery, a JWKS that lists `published`, and `POST /token`
    answering a JWT signed by `signing` (tokex's own encoder). `jwks_failure`: the JWKS
    answers 503 (an error page) or a JSON object that is no JWKS instead."""

    signing: Key
    published: list[Key]
    url: str = ""
    jwks_failure: str | None = None
    failing: bool = False  # POST /token answers 503 (counted)
    jwks_reads: int = 0
    forms: list[dict[str, list[str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def exchanges(self) -> int:
        with self._lock:
            return len(self.forms)

    def jwks(self) -> dict[str, Any]:
        return build_jwks(key.public_jwk() for key in self.published)

    def token(self, form: dict[str, list[str]], issuer: str) -> str:
        with self._lock:
            self.forms.append(form)
            number = len(self.forms)
        now = int(time.time())
        claims = {"iss": issuer, "aud": form["audience"][0], "jti": f"jti-{number}"}
        return encode_jwt({**claims, "iat": now, "exp": now + 900}, self.signing)


@contextmanager
def keyed_issuer(signing: Key, published: list[Key], *, issuer: str = "") -> Iterator[KeyedIssuer]:
    """`issuer`: the `iss` of its tokens, when it is not this server (`--issuer`)."""
    state = KeyedIssuer(signing, published)

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            if self.path == JWKS_PATH:
                with state._lock:
                    state.jwks_reads += 1
                if state.jwks_failure == "503":
                    html = {"Content-Type": "text/html"}
                    return self.send_document(503, b"<html>503</html>", html)
                if state.jwks_failure == "not a JWKS":
                    return self._json({"message": "Service Unavailable"})
                return self._json(state.jwks())
            return self._json({"issuer": state.url, "token_endpoint": state.url + "/token"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            token = state.token(parse_qs(body), issuer or state.url)
            if state.failing:
                return self._json({"error": "temporarily_unavailable"}, 503)
            return self._json({"access_token": token, "token_type": "Bearer", "expires_in": 900})

        def _json(self, document: dict[str, Any], status: int = 200) -> None:
            data = json.dumps(document).encode()
            self.send_document(status, data, {"Content-Type": "application/json"})

    with serving(LoopbackServer(Handler)) as server:
        state.url = server.url
        yield state


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["token", *argv])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def verified_kid(token: str, issuer: KeyedIssuer, audience: str = "orders-api") -> str:
    """What a verifier does (Kong, PyJWT's PyJWKClient): the key the token's `kid` names
    from the issuer's JWKS now, the signature and claims checked; that `kid`."""
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in issuer.jwks()["keys"] if k["kid"] == kid]  # else: no verifier can
    jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience=audience, issuer=issuer.url
    )
    return str(kid)


@pytest.fixture(autouse=True)
def credentials(monkeypatch) -> None:
    use_static_credentials(monkeypatch)


A, B = Key(), Key()


def test_a_cached_token_whose_key_the_issuer_no_longer_publishes_is_replaced(
    capsys, tmp_path
) -> None:
    """`tokex local` restarted (new keys, the same endpoint and principal), or a key
    removed from the JWKS: the next run gets a token a verifier accepts."""
    with keyed_issuer(A, [A]) as issuer:
        ask = ("--endpoint", issuer.url, "--audience", "orders-api", "--cache-dir", str(tmp_path))
        code, first, _ = run(capsys, *ask)
        assert (code, verified_kid(first, issuer), issuer.exchanges) == (0, A.kid, 1)
        issuer.signing, issuer.published = B, [B]  # A is gone from the JWKS
        code, second, err = run(capsys, *ask, "-v")
        assert (code, issuer.exchanges) == (0, 2)
        assert second != first and verified_kid(second, issuer) == B.kid
        assert "signed by a key the issuer no longer publishes: getting a new one" in err
        [file] = tmp_path.glob("*" + disk_cache.FILE_SUFFIX)
        assert json.loads(file.read_text())["response"]["access_token"] == second
        assert run(capsys, *ask)[:2] == (0, second)  # the new one is cached in turn
        assert issuer.exchanges == 2


def test_a_cached_token_whose_key_is_still_published_is_served(capsys, tmp_path) -> None:
    """A rotation publishes the next key beside the old one: the old one's tokens still
    verify, and are served from the cache, for one GET of the JWKS per run."""
    with keyed_issuer(A, [A]) as issuer:
        ask = ("--endpoint", issuer.url, "--audience", "orders-api", "--cache-dir", str(tmp_path))
        code, first, _ = run(capsys, *ask)
        assert (code, issuer.jwks_reads) == (0, 0)  # nothing cached: nothing to check
        issuer.signing, issuer.published = B, [B, A]
        assert run(capsys, *ask)[:2] == (0, first)
        assert run(capsys, *ask)[:2] == (0, first)
        assert (issuer.exchanges, issuer.jwks_reads) == (1, 2)
        assert verified_kid(first, issuer) == A.kid


@pytest.mark.parametrize("failure", ["503", "not a JWKS"])
def test_a_jwks_that_cannot_be_read_serves_the_cached_token(capsys, tmp_path, failure) -> None:
    """No JWKS, no verdict: the cache does not turn a JWKS outage into an exchange per
    run (-v says why the token was not checked)."""
    with keyed_issuer(A, [A]) as issuer:
        ask = ("--endpoint", issuer.url, "--audience", "orders-api", "--cache-dir", str(tmp_path))
        code, first, _ = run(capsys, *ask)
        assert code == 0
        issuer.signing, issuer.published, issuer.jwks_failure = B, [B], failure
        code, out, err = run(capsys, *ask, "-v")
        assert (code, out, issuer.exchanges, issuer.jwks_reads) == (0, first, 1, 1)
        assert f"cannot check the cached token's key: {issuer.url}{JWKS_PATH}" in err


def test_with_issuer_the_issuers_jwks_is_read_and_one_unreachable_serves_the_cache(
    capsys, tmp_path
) -> None:
    """`--issuer` runs read no discovery: the JWKS is the issuer's own
    (`{iss}/.well-known/jwks.json`), not the endpoint's."""
    with keyed_issuer(A, [A]) as published_by, keyed_issuer(A, [A], issuer=published_by.url) as at:
        ask = ("--endpoint", at.url, "--issuer", published_by.url, "--audience", "orders-api")
        ask += ("--cache-dir", str(tmp_path))
        code, first, _ = run(capsys, *ask)
        assert (code, verified_kid(first, published_by)) == (0, A.kid)
        at.signing, published_by.published = B, [B]  # the endpoint's own JWKS still lists A
        code, second, _ = run(capsys, *ask)
        assert (code, at.exchanges, published_by.jwks_reads, at.jwks_reads) == (0, 2, 1, 0)
        assert verified_kid(second, published_by) == B.kid
    with keyed_issuer(A, [A]) as at, refusing_port() as port:
        ask = ("--endpoint", at.url, "--issuer", f"http://127.0.0.1:{port}")
        ask += ("--audience", "orders-api", "--cache-dir", str(tmp_path / "unreachable"))
        code, first, _ = run(capsys, *ask)
        at.signing, at.published = B, [B]
        assert run(capsys, *ask)[:2] == (0, first)
        assert at.exchanges == 1


def test_auto_a_token_kept_without_instance_evidence_is_checked_too(
    capsys, tmp_path, monkeypatch
) -> None:
    """With `--instance-identity auto` off EC2 the second run serves the token kept as
    `missed` after its IMDS read: only while its key is published."""
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    with keyed_issuer(A, [A]) as issuer, refusing_port() as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{imds}")
        ask = ("--endpoint", issuer.url, "--audience", "orders-api")
        ask += ("--instance-identity", "auto", "--cache-dir", str(tmp_path))
        code, first, _ = run(capsys, *ask)
        assert (code, verified_kid(first, issuer)) == (0, A.kid)
        issuer.signing, issuer.published = B, [B]
        code, second, _ = run(capsys, *ask)
        assert (code, issuer.exchanges, issuer.jwks_reads) == (0, 2, 1)
        assert verified_kid(second, issuer) == B.kid
        assert run(capsys, *ask)[:2] == (0, second)  # kept as `missed again`, checked
        assert (issuer.exchanges, issuer.jwks_reads) == (2, 2)


@pytest.mark.parametrize(
    ("token", "kid"),
    [
        (base64url.encode_json({"alg": "ES256", "kid": "k1"}) + ".e30.c2ln", "k1"),
        (base64url.encode_json({"alg": "ES256"}) + ".e30.c2ln", None),
        (base64url.encode_json({"alg": "ES256", "kid": 7}) + ".e30.c2ln", None),
        (base64url.encode_json(["kid"]) + ".e30.c2ln", None),
        ("opaque-token", None),
        ("bm90IGpzb24.e30.c2ln", None),  # "not json"
        ("/w.e30.c2ln", None),  # no base64url
        (base64url.encode(b"{\xc3(}") + ".e30.c2ln", None),  # no UTF-8
    ],
)
def test_token_kid(token: str, kid: str | None) -> None:
    assert disk_cache.token_kid(token) == kid


def test_published_kids_reads_the_jwks_under_the_issuer(tmp_path) -> None:
    with keyed_issuer(A, [A, B]) as issuer:
        assert disk_cache.published_kids(issuer.url + "/", timeout=5) == {A.kid, B.kid}
        issuer.jwks_failure = "not a JWKS"
        with pytest.raises(disk_cache.TokenError, match="no JWKS"):
            disk_cache.published_kids(issuer.url, timeout=5)


def test_a_file_dropped_for_its_key_is_removed(capsys, tmp_path) -> None:
    """Even when the run then gets no token: the file no longer offers one nothing accepts."""
    with keyed_issuer(A, [A]) as issuer:
        ask = ("--endpoint", issuer.url, "--audience", "orders-api", "--cache-dir", str(tmp_path))
        assert run(capsys, *ask)[0] == 0
        [file] = tmp_path.glob("*" + disk_cache.FILE_SUFFIX)
        issuer.published, issuer.failing = [B], True
        assert run(capsys, *ask)[0] == 1
        assert not file.exists()
        assert issuer.exchanges == 2
