"""Public JWKs, their RFC 7638 thumbprints, the JWKS and the discovery document.

Pure functions: no AWS here. `adapters/kms.py` turns KMS public keys into JWKs with
these and `publish.py` publishes the documents built here (to S3: adapters/s3.py)
(docs/contract.md "Issuer").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from tokex import base64url, identifiers
from tokex.regions import DISCOVERY_MEMBER, regional_endpoints

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"

# The algorithms tokex signs with (identifiers.py), by the key type that signs them.
RSA_ALGS = frozenset(a for a, kty in identifiers.KEY_TYPES.items() if kty == "RSA")
EC_ALGS = frozenset(a for a, kty in identifiers.KEY_TYPES.items() if kty == "EC")
SUPPORTED_ALGS = RSA_ALGS | EC_ALGS
MIN_RSA_BITS = 2048
# P-256 coordinates are always 32 octets in a JWK, leading zeros included (RFC 7518 §6.2.1.2).
P256_COORDINATE_BYTES = 32

# RFC 7638 §3.2: the required members of each key type, and nothing else, are hashed.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
# Members that only a private or symmetric JWK has (RFC 7518 §6.2.2, §6.3.2, §6.4).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _uint_minimal(value: int) -> bytes:
    """Base64urlUInt octets: big-endian, the minimum number of octets (RFC 7518 §2)."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def rfc7638_thumbprint(jwk: dict[str, Any]) -> str:
    """SHA-256 JWK thumbprint, base64url without padding (RFC 7638 §3).

    Only the required members of the key type, in lexicographic order, serialized as
    JSON without whitespace, are hashed: `kid`, `use`, `alg` do not change it.
    """
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _THUMBPRINT_MEMBERS:
        raise ValueError(f"unsupported JWK key type {kty!r}")
    required: dict[str, str] = {}
    for name in _THUMBPRINT_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"JWK of type {kty} lacks the {name!r} member")
        required[name] = value
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return base64url.encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def jwk_from_public_key(
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, alg: str
) -> dict[str, Any]:
    """The public JWK (with `kid`, `use: sig`, `alg`) of an RSA or P-256 public key.

    Raises ValueError when the key does not fit `alg` (RSA for RS256, at least 2048
    bits; P-256 for ES256).
    """
    jwk: dict[str, Any]
    if isinstance(public_key, rsa.RSAPublicKey):
        if alg not in RSA_ALGS:
            raise ValueError(f"an RSA key cannot sign {alg!r}")
        if public_key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        numbers = public_key.public_numbers()
        members = {
            "n": base64url.encode(_uint_minimal(numbers.n)),
            "e": base64url.encode(_uint_minimal(numbers.e)),
        }
        jwk = {"kty": "RSA", "kid": "", "use": "sig", "alg": alg, **members}
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if alg not in EC_ALGS:
            raise ValueError(f"an EC key cannot sign {alg!r}")
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise ValueError("EC keys must be on P-256 for ES256")
        point = public_key.public_numbers()
        jwk = {
            "kty": "EC",
            "kid": "",
            "use": "sig",
            "alg": alg,
            "crv": "P-256",
            "x": base64url.encode(point.x.to_bytes(P256_COORDINATE_BYTES, "big")),
            "y": base64url.encode(point.y.to_bytes(P256_COORDINATE_BYTES, "big")),
        }
    else:
        raise ValueError(f"unsupported public key type {type(public_key).__name__}")
    jwk["kid"] = rfc7638_thumbprint(jwk)
    return jwk


def jwk_from_spki_der(der: bytes, alg: str) -> dict[str, Any]:
    """The public JWK of a DER SubjectPublicKeyInfo (what KMS GetPublicKey returns)."""
    public_key = load_der_public_key(der)
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"unsupported public key type {type(public_key).__name__}")
    return jwk_from_public_key(public_key, alg)


def build_jwks(jwks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """`{"keys": [...]}`: each `kid` once (first occurrence wins), in the order given.

    Refuses anything that is not a public signing key with a `kid`, so a mistake upstream
    can never publish private material.
    """
    keys: list[dict[str, Any]] = []
    seen: set[str] = set()
    for jwk in jwks:
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError("every published JWK needs a kid")
        if _PRIVATE_MEMBERS & jwk.keys():
            raise ValueError(f"JWK {kid} holds private or symmetric key material")
        if jwk.get("use", "sig") != "sig" or jwk.get("alg") not in SUPPORTED_ALGS:
            raise ValueError(f"JWK {kid} is not a supported signing key")
        if kid not in seen:
            seen.add(kid)
            keys.append(dict(jwk))
    return {"keys": keys}


def discovery_document(
    *,
    issuer: str,
    token_endpoint: str,
    jwks_uri: str | None = None,
    algs: Sequence[str],
    introspection_endpoint: str | None = None,
    regions: Sequence[str] = (),
) -> dict[str, Any]:
    """The `openid-configuration` document (docs/contract.md "Issuer"; RFC 8414 §2 field
    names). `regions`: a multi-Region deployment's Regions, home first, listed with their
    own endpoints (docs/multi-region.md)."""
    if not algs or any(alg not in SUPPORTED_ALGS for alg in algs):
        raise ValueError(f"signing algorithms must be among {sorted(SUPPORTED_ALGS)}")
    document: dict[str, Any] = {
        "issuer": issuer,
        "jwks_uri": jwks_uri or issuer + JWKS_PATH,
        "token_endpoint": token_endpoint,
        "grant_types_supported": [TOKEN_EXCHANGE_GRANT],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(dict.fromkeys(algs)),
        # The evidence is the signed STS request itself: there is no client secret.
        "token_endpoint_auth_methods_supported": ["none"],
    }
    if introspection_endpoint:
        document["introspection_endpoint"] = introspection_endpoint
        # Its clients authenticate with HTTP Basic only (docs/contract.md, introspection).
        document["introspection_endpoint_auth_methods_supported"] = ["client_secret_basic"]
    if regions:
        document[DISCOVERY_MEMBER] = regional_endpoints(issuer, regions)
    return document
