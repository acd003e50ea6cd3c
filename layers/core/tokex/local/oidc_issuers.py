"""The JWT issuers of `tokex local`: an account's AWS outbound identity federation issuer
and an EKS cluster's OIDC issuer, each with its discovery document and JWKS.

Both live under reserved paths of the local front (`{tokex issuer}/_local/oif/<account>`,
`{tokex issuer}/_local/eks/<cluster>`), with keys made at start-up that never leave the
process. Only the local exchange trusts them: they are plain-http loopback issuers, which
the settings refuse for any https (deployed) tokex issuer, exactly as they refuse the local
instance identity certificate (docs/local.md "JWT evidence").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tokex.evidence.trusted_issuers import AWS_OIF, EKS, TrustedIssuer, TrustedIssuers
from tokex.local.provision import ACCOUNT_ID, DEMO_CLUSTER, REGION
from tokex.tokens.jwks import DISCOVERY_PATH, JWKS_PATH, rfc7638_thumbprint

LOCAL_PREFIX = "/_local"
# What AWS outbound identity federation signs with (STS GetWebIdentityToken
# `SigningAlgorithm`), and what EKS signs service-account tokens with.
OIF_ALGORITHMS = ("RS256", "ES384")
EKS_ALGORITHMS = ("RS256",)
# EKS publishes its keys at `{issuer}/keys`, AWS OIF at `{issuer}/.well-known/jwks.json`:
# a verifier must follow `jwks_uri`, never guess it.
EKS_JWKS_PATH = "/keys"
_RSA_BITS = 2048


@dataclass(frozen=True)
class IssuerKey:
    alg: str
    kid: str  # the RFC 7638 thumbprint of its public JWK
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    public_jwk: Mapping[str, str]


class LocalIssuer:
    """One issuer: its URL, one key per algorithm (made here), its documents."""

    def __init__(self, url: str, algorithms: Sequence[str], jwks_path: str) -> None:
        self.url = url
        self.jwks_uri = url + jwks_path
        self.keys = {alg: _new_key(alg) for alg in algorithms}

    def sign(self, claims: Mapping[str, Any], alg: str, *, typ: str | None = "JWT") -> str:
        """A compact JWS of `claims` with this issuer's key for `alg` (`kid` in the header)."""
        key = self.keys[alg]
        headers: dict[str, Any] = {"kid": key.kid, "typ": typ}  # typ None: no `typ` header
        return jwt.encode(dict(claims), key.private_key, algorithm=alg, headers=headers)

    def discovery(self) -> dict[str, Any]:
        """OpenID Connect Discovery 1.0 §3: what a verifier reads to find the keys."""
        return {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": list(self.keys),
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(key.public_jwk) for key in self.keys.values()]}

    def documents(self, origin: str) -> dict[str, bytes]:
        """The discovery document and the JWKS by their path on the front at `origin`."""
        discovery_url = self.url + DISCOVERY_PATH
        return {
            discovery_url.removeprefix(origin): _json(self.discovery()),
            self.jwks_uri.removeprefix(origin): _json(self.jwks()),
        }


def oif_issuer(tokex_issuer: str, account: str = ACCOUNT_ID) -> LocalIssuer:
    """The account's outbound identity federation issuer (in AWS,
    `https://<id>.tokens.sts.global.api.aws`)."""
    return LocalIssuer(oif_issuer_url(tokex_issuer, account), OIF_ALGORITHMS, JWKS_PATH)


def eks_issuer(tokex_issuer: str, cluster: str = DEMO_CLUSTER) -> LocalIssuer:
    """The cluster's OIDC issuer (in AWS, `https://oidc.eks.<region>.amazonaws.com/id/<id>`)."""
    return LocalIssuer(eks_issuer_url(tokex_issuer, cluster), EKS_ALGORITHMS, EKS_JWKS_PATH)


def local_trusted_issuers(tokex_issuer: str) -> TrustedIssuers:
    """What the local exchange trusts (its TOKEX_TRUSTED_ISSUERS): the demo account's OIF
    issuer, bound to the account, and the demo cluster's issuer, bound to the account,
    Region and cluster. The URLs follow from the tokex issuer alone."""
    return TrustedIssuers(
        (
            TrustedIssuer(AWS_OIF, oif_issuer_url(tokex_issuer), ACCOUNT_ID),
            TrustedIssuer(EKS, eks_issuer_url(tokex_issuer), ACCOUNT_ID, REGION, DEMO_CLUSTER),
        )
    )


def oif_issuer_url(tokex_issuer: str, account: str = ACCOUNT_ID) -> str:
    return f"{tokex_issuer}{LOCAL_PREFIX}/oif/{account}"


def eks_issuer_url(tokex_issuer: str, cluster: str = DEMO_CLUSTER) -> str:
    return f"{tokex_issuer}{LOCAL_PREFIX}/eks/{cluster}"


def _new_key(alg: str) -> IssuerKey:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if alg == "RS256":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
        jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    elif alg == "ES384":
        private_key = ec.generate_private_key(ec.SECP384R1())
        jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        raise ValueError(f"no local issuer key for {alg!r}")
    members = ("kty", "crv", "n", "e", "x", "y")
    public: dict[str, str] = {name: str(jwk[name]) for name in members if name in jwk}
    kid = rfc7638_thumbprint(public)
    return IssuerKey(alg, kid, private_key, {**public, "kid": kid, "use": "sig", "alg": alg})


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
