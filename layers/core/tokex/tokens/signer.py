"""The signer boundary: the core never knows which key store signs."""

from __future__ import annotations

from typing import Any, Protocol

# KMS Sign with MessageType=RAW accepts at most 4096 bytes (KMS API reference, Sign).
MAX_SIGNING_INPUT_BYTES = 4096


class Signer(Protocol):
    """Signs JWS signing input with a key whose private part it never reveals."""

    @property
    def alg(self) -> str:
        """JWS algorithm (RFC 7518 §3.1): `RS256` or `ES256`."""
        ...

    @property
    def kid(self) -> str:
        """RFC 7638 SHA-256 thumbprint of the public JWK (base64url)."""
        ...

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK with `kid`, `use` and `alg`."""
        ...

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature (RS256: PKCS#1 v1.5; ES256: raw 64-byte R||S)."""
        ...
