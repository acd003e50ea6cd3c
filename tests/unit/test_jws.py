"""encode_jwt through the Signer interface, checked by independent JOSE libraries."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import KeySet
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from tokex.errors import InvalidRequest
from tokex.tokens.jwks import build_jwks, jwk_from_public_key
from tokex.tokens.jws import TokenTooLarge, encode_jwt
from tokex.tokens.signer import MAX_SIGNING_INPUT_BYTES

CLAIMS = {
    "iss": "https://auth.example.com",
    "sub": "arn:aws:iam::123456789012:role/demo-workload",
    "aud": "demo-api",
    "iat": 1_800_000_000,
    "nbf": 1_800_000_000,
    "exp": 1_800_000_900,
    "jti": "jti-1",
    "scope": "demo:read",
}


class LocalSigner:
    """A test double of the Signer interface, backed by an in-memory private key."""

    def __init__(self, private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, alg: str):
        self.private_key = private_key
        self.alg = alg
        self.jwk = jwk_from_public_key(private_key.public_key(), alg)
        self.kid = self.jwk["kid"]
        self.calls: list[bytes] = []

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.jwk)

    def sign(self, signing_input: bytes) -> bytes:
        self.calls.append(signing_input)
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def signer(request: pytest.FixtureRequest) -> LocalSigner:
    if request.param == "RS256":
        return LocalSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    return LocalSigner(ec.generate_private_key(ec.SECP256R1()), "ES256")


def segments(token: str) -> list[bytes]:
    return [base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in token.split(".")]


def test_header_and_payload(signer: LocalSigner) -> None:
    token = encode_jwt(CLAIMS, signer)
    header, payload, _ = segments(token)
    assert json.loads(header) == {"alg": signer.alg, "typ": "at+jwt", "kid": signer.kid}
    assert json.loads(payload) == CLAIMS
    assert b" " not in payload  # compact JSON
    assert signer.calls[-1] == token.rsplit(".", 1)[0].encode()


def test_pyjwt_verifies(signer: LocalSigner) -> None:
    token = encode_jwt(CLAIMS, signer)
    key = jwt.PyJWK(signer.public_jwk())
    decoded = jwt.decode(
        token,
        key,
        algorithms=[signer.alg],
        audience="demo-api",
        issuer="https://auth.example.com",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert decoded == CLAIMS
    assert jwt.get_unverified_header(token)["kid"] == signer.kid


def test_jwcrypto_verifies(signer: LocalSigner) -> None:
    token = encode_jwt(CLAIMS, signer)
    verifier = jwcrypto_jws.JWS()
    verifier.deserialize(token)
    verifier.verify(jwcrypto_jwk.JWK(**signer.public_jwk()), alg=signer.alg)
    assert json.loads(verifier.payload) == CLAIMS
    forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    tampered = jwcrypto_jws.JWS()
    tampered.deserialize(forged)
    with pytest.raises(jwcrypto_jws.InvalidJWSSignature):
        tampered.verify(jwcrypto_jwk.JWK(**signer.public_jwk()), alg=signer.alg)


def test_joserfc_verifies_with_the_jwks(signer: LocalSigner) -> None:
    token = encode_jwt(CLAIMS, signer)
    key_set = KeySet.import_key_set(build_jwks([signer.public_jwk()]))  # type: ignore[arg-type]
    decoded = joserfc_jwt.decode(token, key_set, algorithms=[signer.alg])
    assert decoded.header["kid"] == signer.kid
    assert decoded.claims == CLAIMS


def test_es256_signature_is_raw_64_bytes(signer: LocalSigner) -> None:
    signature = segments(encode_jwt(CLAIMS, signer))[2]
    # RFC 7518 §3.4: R || S, 32 octets each, never DER; RS256: the 2048-bit modulus size.
    assert len(signature) == (64 if signer.alg == "ES256" else 256)


def test_alg_and_kid_come_from_the_signer_only(signer: LocalSigner) -> None:
    token = encode_jwt({**CLAIMS, "alg": "none", "kid": "attacker", "typ": "JWT"}, signer)
    assert jwt.get_unverified_header(token) == {
        "alg": signer.alg,
        "typ": "at+jwt",
        "kid": signer.kid,
    }


def test_oversized_token_refused_before_signing(signer: LocalSigner) -> None:
    calls = len(signer.calls)
    with pytest.raises(TokenTooLarge) as caught:
        encode_jwt({**CLAIMS, "pad": "x" * MAX_SIGNING_INPUT_BYTES}, signer)
    assert len(signer.calls) == calls
    assert isinstance(caught.value, InvalidRequest)
    assert caught.value.status == 400
    assert caught.value.body()["error"] == "invalid_request"
    assert "4096" in caught.value.description
    assert "xxx" not in caught.value.description


def test_too_large_names_scopes_only_when_some_were_granted(signer: LocalSigner) -> None:
    """With no scope granted, "request fewer scopes" sent the caller after a request that
    cannot help: the policy's claims for this caller and audience make it large."""
    padded = {**CLAIMS, "pad": "x" * MAX_SIGNING_INPUT_BYTES}
    with pytest.raises(TokenTooLarge) as with_scopes:
        encode_jwt(padded, signer)
    assert with_scopes.value.description.endswith("; request fewer scopes")
    without = {name: value for name, value in padded.items() if name != "scope"}
    with pytest.raises(TokenTooLarge) as without_scopes:
        encode_jwt(without, signer)
    description = without_scopes.value.description
    assert "fewer scopes" not in description
    assert "4096" in description and "the policy's claims" in description
    assert "xxx" not in description
    assert (without_scopes.value.status, without_scopes.value.error) == (400, "invalid_request")
    assert without_scopes.value.reason == with_scopes.value.reason.replace(
        str(with_scopes.value.size), str(without_scopes.value.size)
    )


def _b64_len(data: bytes) -> int:
    return len(base64.urlsafe_b64encode(data).rstrip(b"="))


def test_signing_input_up_to_the_limit_is_signed(signer: LocalSigner) -> None:
    header = {"alg": signer.alg, "kid": signer.kid, "typ": "at+jwt"}
    header_len = _b64_len(json.dumps(header, separators=(",", ":")).encode())

    def signing_input_len(pad: str) -> int:
        payload = json.dumps({**CLAIMS, "pad": pad}, separators=(",", ":")).encode()
        return header_len + 1 + _b64_len(payload)

    pad = ""
    while signing_input_len(pad + "x") <= MAX_SIGNING_INPUT_BYTES:
        pad += "x"
    token = encode_jwt({**CLAIMS, "pad": pad}, signer)
    # base64url lengths skip 1 mod 4, so the largest reachable size is 4094..4096.
    assert MAX_SIGNING_INPUT_BYTES - 2 <= len(token.rsplit(".", 1)[0]) <= MAX_SIGNING_INPUT_BYTES
    with pytest.raises(TokenTooLarge):
        encode_jwt({**CLAIMS, "pad": pad + "x"}, signer)


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", ""])
def test_unsupported_signer_alg_refused(alg: str) -> None:
    signer = LocalSigner(ec.generate_private_key(ec.SECP256R1()), "ES256")
    signer.alg = alg
    with pytest.raises(ValueError):
        encode_jwt(CLAIMS, signer)
    assert signer.calls == []


def test_signer_and_alg_must_agree() -> None:
    signer = LocalSigner(ec.generate_private_key(ec.SECP256R1()), "ES256")

    class Mislabelled:
        alg = "ES256"
        kid = signer.kid

        def public_jwk(self) -> dict[str, Any]:
            return signer.public_jwk()

    with pytest.raises(TypeError):
        encode_jwt(CLAIMS, Mislabelled())  # type: ignore[arg-type]


def test_global_pyjwt_is_untouched(signer: LocalSigner) -> None:
    # The delegating algorithm lives on a private PyJWS: the global one cannot use a Signer.
    calls = len(signer.calls)
    with pytest.raises((TypeError, ValueError, jwt.InvalidKeyError)):
        jwt.encode({"a": 1}, signer, algorithm=signer.alg)  # type: ignore[arg-type]
    assert len(signer.calls) == calls
    token = jwt.encode({"a": 1}, signer.private_key, algorithm=signer.alg)
    assert jwt.decode(token, signer.private_key.public_key(), algorithms=[signer.alg]) == {"a": 1}
