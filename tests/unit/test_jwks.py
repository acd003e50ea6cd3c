"""JWK encoding, RFC 7638 thumbprints, the JWKS and the discovery document."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk as jwcrypto_jwk
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tokex.tokens.jwks import (
    build_jwks,
    discovery_document,
    jwk_from_public_key,
    jwk_from_spki_der,
    rfc7638_thumbprint,
)

# RFC 7638 §3.1: the example RSA key and the thumbprint the RFC gives for it.
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_thumbprint_matches_rfc7638_example() -> None:
    assert rfc7638_thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_thumbprint_ignores_optional_members_and_member_order() -> None:
    bare = {"n": RFC7638_JWK["n"], "kty": "RSA", "e": "AQAB"}
    decorated = {**bare, "use": "sig", "kid": "x", "alg": "PS256", "x5t": "y"}
    assert rfc7638_thumbprint(bare) == rfc7638_thumbprint(decorated) == RFC7638_THUMBPRINT


@pytest.mark.parametrize(
    "bad",
    [
        {"kty": "oct", "k": "AAAA"},
        {"kty": "RSA", "n": RFC7638_JWK["n"]},
        {"kty": "EC", "crv": "P-256", "x": "AAAA"},
        {"n": RFC7638_JWK["n"], "e": "AQAB"},
        {"kty": "RSA", "n": RFC7638_JWK["n"], "e": 65537},
    ],
)
def test_thumbprint_refuses_incomplete_or_unknown_keys(bad: dict) -> None:
    with pytest.raises(ValueError):
        rfc7638_thumbprint(bad)


def test_rsa_jwk(rsa_key: rsa.RSAPrivateKey) -> None:
    public = rsa_key.public_key()
    jwk = jwk_from_public_key(public, "RS256")
    assert list(jwk) == ["kty", "kid", "use", "alg", "n", "e"]
    assert (jwk["kty"], jwk["use"], jwk["alg"], jwk["e"]) == ("RSA", "sig", "RS256", "AQAB")
    assert len(b64url_decode(jwk["n"])) == 256  # no leading zero octet (RFC 7518 §6.3.1.1)
    assert int.from_bytes(b64url_decode(jwk["n"]), "big") == public.public_numbers().n
    assert jwk["kid"] == rfc7638_thumbprint(jwk)
    # Independent implementations agree on the key and on the thumbprint.
    assert jwcrypto_jwk.JWK(**jwk).thumbprint() == jwk["kid"]
    assert RSAAlgorithm.from_jwk(jwk).public_numbers() == public.public_numbers()


def _p256_key_with_short_x() -> ec.EllipticCurvePrivateKey:
    """The first private scalar whose public x needs fewer than 32 octets minimally."""
    for scalar in range(1, 5000):
        key = ec.derive_private_key(scalar, ec.SECP256R1())
        if key.public_key().public_numbers().x.bit_length() <= 248:
            return key
    raise AssertionError("no short coordinate found")


def test_ec_jwk_has_fixed_length_coordinates() -> None:
    public = _p256_key_with_short_x().public_key()
    jwk = jwk_from_public_key(public, "ES256")
    assert list(jwk) == ["kty", "kid", "use", "alg", "crv", "x", "y"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    x, y = b64url_decode(jwk["x"]), b64url_decode(jwk["y"])
    assert len(x) == len(y) == 32  # RFC 7518 §6.2.1.2, even with a leading zero octet
    assert x[0] == 0
    assert int.from_bytes(x, "big") == public.public_numbers().x
    assert jwk["kid"] == rfc7638_thumbprint(jwk) == jwcrypto_jwk.JWK(**jwk).thumbprint()
    assert ECAlgorithm.from_jwk(jwk).public_numbers() == public.public_numbers()


def test_jwk_from_spki_der_matches_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    der = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert jwk_from_spki_der(der, "RS256") == jwk_from_public_key(rsa_key.public_key(), "RS256")
    with pytest.raises(ValueError):
        jwk_from_spki_der(b"\x30\x03garbage", "RS256")


def test_jwk_refuses_mismatched_or_weak_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError):
        jwk_from_public_key(rsa_key.public_key(), "ES256")
    with pytest.raises(ValueError):
        jwk_from_public_key(rsa_key.public_key(), "HS256")
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ValueError):
        jwk_from_public_key(p384, "ES256")
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ValueError):
        jwk_from_public_key(p256, "RS256")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 (refused)
    with pytest.raises(ValueError):
        jwk_from_public_key(weak, "RS256")


def test_build_jwks_dedupes_by_kid_in_stable_order(rsa_key: rsa.RSAPrivateKey) -> None:
    a = jwk_from_public_key(rsa_key.public_key(), "RS256")
    b = jwk_from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key(), "ES256")
    assert build_jwks([b, a, dict(b), a]) == {"keys": [b, a]}
    assert build_jwks([]) == {"keys": []}


def test_build_jwks_refuses_private_or_unnamed_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    public = jwk_from_public_key(rsa_key.public_key(), "RS256")
    with pytest.raises(ValueError):
        build_jwks([{**public, "d": "secret"}])
    with pytest.raises(ValueError):
        build_jwks([{k: v for k, v in public.items() if k != "kid"}])
    with pytest.raises(ValueError):
        build_jwks([{**public, "alg": "HS256"}])
    with pytest.raises(ValueError):
        build_jwks([{**public, "use": "enc"}])


def test_discovery_document() -> None:
    doc = discovery_document(
        issuer="https://auth.example.com",
        token_endpoint="https://api.example.com/token",
        algs=["ES256", "RS256", "ES256"],
    )
    assert doc == {
        "issuer": "https://auth.example.com",
        "jwks_uri": "https://auth.example.com/.well-known/jwks.json",
        "token_endpoint": "https://api.example.com/token",
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
        "token_endpoint_auth_methods_supported": ["none"],
    }


def test_discovery_document_optional_fields() -> None:
    doc = discovery_document(
        issuer="https://auth.example.com",
        token_endpoint="https://auth.example.com/token",
        jwks_uri="https://cdn.example.com/jwks.json",
        algs=("RS256",),
        introspection_endpoint="https://auth.example.com/introspect",
    )
    assert doc["jwks_uri"] == "https://cdn.example.com/jwks.json"
    assert doc["introspection_endpoint"] == "https://auth.example.com/introspect"
    # RFC 8414 §2: how its clients authenticate (HTTP Basic only, docs/contract.md).
    assert doc["introspection_endpoint_auth_methods_supported"] == ["client_secret_basic"]


@pytest.mark.parametrize("algs", [[], ["none"], ["HS256"], ["RS256", "RS512"]])
def test_discovery_document_refuses_unsupported_algs(algs: list[str]) -> None:
    with pytest.raises(ValueError):
        discovery_document(issuer="https://a.example", token_endpoint="https://a/t", algs=algs)


def test_discovery_document_lists_a_multi_region_deployments_regions() -> None:
    """docs/multi-region.md: each Region's own endpoints, home first, in the given order."""
    doc = discovery_document(
        issuer="https://auth.example.com",
        token_endpoint="https://auth.example.com/token",
        algs=("RS256",),
        regions=("us-east-1", "eu-west-1"),
    )
    assert doc["token_endpoint"] == "https://auth.example.com/token"
    assert doc["tokex_regions"] == [
        {
            "region": "us-east-1",
            "token_endpoint": "https://auth.example.com/regions/us-east-1/token",
            "introspection_endpoint": "https://auth.example.com/regions/us-east-1/introspect",
        },
        {
            "region": "eu-west-1",
            "token_endpoint": "https://auth.example.com/regions/eu-west-1/token",
            "introspection_endpoint": "https://auth.example.com/regions/eu-west-1/introspect",
        },
    ]
    single = discovery_document(
        issuer="https://auth.example.com", token_endpoint="https://auth.example.com/token",
        algs=("RS256",),
    )  # fmt: skip
    assert "tokex_regions" not in single


@pytest.mark.parametrize("regions", [("us-east-1", "us-east-1"), ("us-east-1", "Europe")])
def test_discovery_document_refuses_bad_regions(regions: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"twice|not a region name"):
        discovery_document(
            issuer="https://a.example.com", token_endpoint="https://a.example.com/token",
            algs=("RS256",), regions=regions,
        )  # fmt: skip
