"""Compact JWS encoding of access tokens through a `Signer` (RFC 7515 §7.1, RFC 9068 §2.1).

pyjwt does the encoding; the signature comes from a `Signer` (KMS in production), whose
private key tokex never holds. The algorithm and key id come from the signer, which is
fixed by configuration: nothing in a request can choose them (docs/security.md "Tokens").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jwt
from jwt.algorithms import Algorithm

from tokex import identifiers
from tokex.errors import InvalidRequest
from tokex.tokens.signer import MAX_SIGNING_INPUT_BYTES, Signer

# RFC 9068 §2.1: access tokens are typed `at+jwt`.
ACCESS_TOKEN_TYP = "at+jwt"
# The only algorithms tokex signs with (identifiers.py).
SIGNING_ALGS = identifiers.SIGNING_ALGS


class TokenTooLarge(InvalidRequest):
    """The token's signing input would exceed what KMS can sign (400 `invalid_request`).

    Its size grows with what was asked for and granted (audience, scopes, the policy's
    static claims), so it is a refusal of this request, never a 500 or a 503: retrying
    cannot help, asking for less can. The description says what is large — the scopes
    only when some were granted (`scopes`), else the policy's claims for this caller and
    audience, which no request can make smaller — never the claims themselves.
    """

    def __init__(self, size: int, *, scopes: bool = True) -> None:
        if scopes:
            what = "its scopes and the policy's claims make it too large; request fewer scopes"
        else:
            what = (
                "no scope was granted: the policy's claims for this caller and audience "
                "make it too large"
            )
        super().__init__(
            f"the token would exceed the {MAX_SIGNING_INPUT_BYTES}-byte signing limit; {what}",
            reason=f"token_too_large: signing input {size} bytes",
        )
        self.size = size


def check_signing_input_size(signing_input: bytes) -> None:
    """KMS Sign with MessageType=RAW takes at most 4096 bytes; moto does not enforce it."""
    if len(signing_input) > MAX_SIGNING_INPUT_BYTES:
        raise TokenTooLarge(len(signing_input))


class _SignerAlgorithm(Algorithm):
    """A pyjwt algorithm whose "key" is a `Signer`: signing is delegated, never local.

    Registered only on this module's private `PyJWS`, so the global `jwt.encode` and
    `jwt.decode` never see it, and it cannot verify: verification is the resource
    server's business, with the published JWKS.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def prepare_key(self, key: Any) -> Signer:
        if getattr(key, "alg", None) != self.name or not callable(getattr(key, "sign", None)):
            raise TypeError(f"{self.name} tokens are signed by a Signer for {self.name}")
        return key  # type: ignore[no-any-return]

    def sign(self, msg: bytes, key: Signer) -> bytes:
        check_signing_input_size(msg)
        return key.sign(msg)

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        raise NotImplementedError("tokex signs tokens; verifiers use the published JWKS")

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError("the public JWK comes from Signer.public_jwk()")

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError("the signing key never leaves the key store")


_jws = jwt.PyJWS(algorithms=[])
for _alg in SIGNING_ALGS:
    _jws.register_algorithm(_alg, _SignerAlgorithm(_alg))


def encode_jwt(claims: Mapping[str, Any], signer: Signer) -> str:
    """The compact JWS `header.payload.signature` of `claims`, signed by `signer`.

    Header `{"alg": signer.alg, "typ": "at+jwt", "kid": signer.kid}`; payload compact JSON.
    Raises TokenTooLarge before any signing call when the signing input exceeds 4096 bytes;
    the signer's own errors (e.g. TemporarilyUnavailable) pass through.
    """
    alg = signer.alg
    if alg not in SIGNING_ALGS:
        raise ValueError(f"unsupported signing algorithm {alg!r}")
    payload = json.dumps(dict(claims), separators=(",", ":"), allow_nan=False).encode("utf-8")
    try:
        return _jws.encode(
            payload,
            signer,  # type: ignore[arg-type]  # _SignerAlgorithm.prepare_key takes a Signer
            algorithm=alg,
            headers={"typ": ACCESS_TOKEN_TYP, "kid": signer.kid},
        )
    except TokenTooLarge as too_large:
        if "scope" in claims:
            raise
        # No scope granted: "request fewer scopes" would send the caller looking for
        # a request that cannot help.
        raise TokenTooLarge(too_large.size, scopes=False) from None
