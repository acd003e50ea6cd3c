"""The KMS adapter: the only module that calls KMS (GetPublicKey and Sign): the signer
and the reading of the published public keys (for introspection and the publisher).

The private key never leaves KMS. The signer reads its key's public key once, when it is
first needed (a failed read is made again by the next request), and it pins everything a
token's header says: the algorithm (from the key spec), the `kid` (RFC 7638
thumbprint) and the key ARN that `Sign` then uses, so moving an alias during a rotation
can never make a warm signer sign with a key its `kid` does not name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tokex import identifiers
from tokex.adapters import errors
from tokex.errors import ConfigurationError, Misconfigured, TemporarilyUnavailable
from tokex.tokens.jwks import P256_COORDINATE_BYTES, jwk_from_spki_der
from tokex.tokens.jws import check_signing_input_size

log = logging.getLogger(__name__)

# KeySpec -> (JWS alg, KMS SigningAlgorithm), from identifiers.py.
_ALGORITHMS = {
    spec: (alg, identifiers.KMS_SIGNING_ALGORITHMS[alg])
    for spec, alg in identifiers.SIGNING_KEY_SPECS.items()
}
_RSA_2048_SIGNATURE_BYTES = 256
# Both sets below are KMS's part of errors.CONFIGURATION_ERRORS (the 503's class), split
# by what reading a key makes of them (tests/adapters/test_kms.py checks the subset).
# Errors that mean the configured key can never work, whatever the retry: a
# ConfigurationError (the publisher fails on it; a request that needs the key answers
# `unusable_key`'s 503), not an outage.
_CONFIGURATION_ERRORS = frozenset(
    {
        "NotFoundException",
        "InvalidArnException",
        "InvalidKeyUsageException",
        "UnsupportedOperationException",
    }
)
# Errors that mean KMS will not give this key out now, for as long as an operator leaves
# it so (disabled, scheduled for deletion, another account's grant withdrawn): a retry
# does not help, but the key may come back, so it is no ConfigurationError: a 503 that
# says `misconfigured` (UnreadableKey).
_UNREADABLE_KEY_ERRORS = frozenset(
    {"AccessDeniedException", "DisabledException", "KMSInvalidStateException"}
)
_UNAVAILABLE = "the signing service is unavailable, retry later"
_KEYS_UNAVAILABLE = "the signing keys are unavailable, retry later"


class UnreadableKey(Misconfigured):
    """KMS refuses to give out this key's public key (see `_UNREADABLE_KEY_ERRORS`)."""


def unusable_key(exc: ConfigurationError, description: str = _UNAVAILABLE) -> Misconfigured:
    """The 503 of a request that needs a key that cannot sign JWTs (not found, wrong
    usage or spec: the ConfigurationError of reading it), for as long as it is configured:
    its reason names the key and why, for the operator; the description neither."""
    return Misconfigured(description, reason=errors.reason("kms", "GetPublicKey", str(exc)))


def _unavailable(operation: str, exc_or_detail: Exception | str) -> TemporarilyUnavailable:
    # The description is generic on purpose: never a key ARN or an upstream message.
    return errors.unavailable(_UNAVAILABLE, "kms", operation, exc_or_detail)


def _describe_public_key(kms_client: Any, key_id: str) -> tuple[dict[str, Any], str, str]:
    """GetPublicKey, checked: (public JWK, KMS signing algorithm, key ARN or id).

    Raises ConfigurationError for a key that cannot sign JWTs (wrong usage or spec, not
    found), UnreadableKey when KMS refuses it (`_UNREADABLE_KEY_ERRORS`) and
    TemporarilyUnavailable when KMS cannot be reached or throttles us.
    """
    try:
        response = kms_client.get_public_key(KeyId=key_id)
    except errors.SDK_ERRORS as exc:
        if errors.is_client_error(exc, *_CONFIGURATION_ERRORS):
            code = errors.error_code(exc)
            raise ConfigurationError(f"KMS key {key_id!r} cannot sign tokens ({code})") from exc
        if errors.is_client_error(exc, *_UNREADABLE_KEY_ERRORS):
            reason = errors.reason("kms", "GetPublicKey", f"{errors.error_code(exc)} ({key_id})")
            raise UnreadableKey(_UNAVAILABLE, reason=reason) from exc
        raise _unavailable("GetPublicKey", exc) from exc

    usage = response.get("KeyUsage")
    # `CustomerMasterKeySpec` is the deprecated name, still the only one moto returns.
    spec = response.get("KeySpec") or response.get("CustomerMasterKeySpec")
    if usage != "SIGN_VERIFY":
        raise ConfigurationError(f"KMS key {key_id!r} has KeyUsage {usage!r}, not SIGN_VERIFY")
    if spec not in _ALGORITHMS:
        raise ConfigurationError(
            f"KMS key {key_id!r} has KeySpec {spec!r}; supported: {sorted(_ALGORITHMS)}"
        )
    alg, signing_algorithm = _ALGORITHMS[spec]
    if signing_algorithm not in response.get("SigningAlgorithms", [signing_algorithm]):
        raise ConfigurationError(f"KMS key {key_id!r} does not allow {signing_algorithm}")
    try:
        jwk = jwk_from_spki_der(response["PublicKey"], alg)
    except (KeyError, ValueError) as exc:
        raise ConfigurationError(f"KMS key {key_id!r}: unusable public key ({exc})") from exc
    return jwk, signing_algorithm, response.get("KeyId") or key_id


def public_jwk_for_key(kms_client: Any, key_id: str) -> dict[str, Any]:
    """The public JWK (`kid` = RFC 7638 thumbprint, `use`, `alg`) of a KMS signing key.

    For the JWKS publisher, which lists every configured key (current, next, previous).
    """
    jwk, _, _ = _describe_public_key(kms_client, key_id)
    return jwk


class KmsPublicKeys:
    """The public JWKs of the published signing keys (the signing key first, then every
    other published key), read from KMS on each call: what the publisher writes to the
    JWKS and what introspection verifies against (through its cache, PublishedKeys)."""

    def __init__(self, kms_client: Any, key_ids: Sequence[str]) -> None:
        self._kms = kms_client
        self._key_ids = tuple(key_ids)

    def jwks(self) -> list[dict[str, Any]]:
        """Raises ConfigurationError (a key that cannot sign JWTs) or
        TemporarilyUnavailable (KMS unreachable, throttling)."""
        return [public_jwk_for_key(self._kms, key_id) for key_id in self._key_ids]

    def for_introspection(self) -> list[dict[str, Any]]:
        """As `jwks`, but a misconfigured signing key is a 503 raised per request, not at
        import, that names the cause in the log; and another published key that KMS
        refuses to give out, or that cannot sign JWTs, is left out (logged): its tokens
        introspect as inactive, while the signing key's tokens stay introspectable. A key
        KMS merely could not be asked about (unreachable, throttling) is a 503, as ever:
        never "inactive" for a token that is not."""
        keys: list[dict[str, Any]] = []
        for index, key_id in enumerate(self._key_ids):
            signing = index == 0  # the signing key: nothing works without it
            try:
                keys.append(public_jwk_for_key(self._kms, key_id))
            except UnreadableKey as exc:
                if signing:
                    raise
                log.warning("published key %s left out of introspection: %s", key_id, exc.reason)
            except ConfigurationError as exc:
                if signing:
                    raise unusable_key(exc, _KEYS_UNAVAILABLE) from None
                log.warning("published key %s left out of introspection: %s", key_id, exc)
        return keys


class KmsSigner:
    """A `Signer` backed by an asymmetric KMS key (RSA_2048 -> RS256, ECC_NIST_P256 -> ES256).

    Construct once per cold start: it calls GetPublicKey once. `sign` is one KMS Sign call
    with MessageType=RAW (moto mishandles DIGEST, and RAW lets KMS hash what it signs).
    """

    def __init__(self, kms_client: Any, key_id: str) -> None:
        self._kms = kms_client
        jwk, self._signing_algorithm, self._key_arn = _describe_public_key(kms_client, key_id)
        self._jwk = jwk
        self._alg: str = jwk["alg"]
        self._kid: str = jwk["kid"]

    @property
    def alg(self) -> str:
        return self._alg

    @property
    def kid(self) -> str:
        return self._kid

    def public_jwk(self) -> dict[str, Any]:
        return dict(self._jwk)

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature of `signing_input`.

        Raises TokenTooLarge (400) above 4096 bytes without calling KMS: real KMS refuses
        larger RAW messages and moto silently accepts them. Any KMS or network failure
        (throttling, internal error, key disabled or unavailable, access denied, timeout)
        is TemporarilyUnavailable (503): Misconfigured for a lasting one (errors.py).
        """
        check_signing_input_size(signing_input)
        try:
            response = self._kms.sign(
                KeyId=self._key_arn,
                Message=signing_input,
                MessageType="RAW",
                SigningAlgorithm=self._signing_algorithm,
            )
            signature = response["Signature"]
        except (*errors.SDK_ERRORS, KeyError) as exc:
            raise _unavailable("Sign", exc) from exc
        if self._alg == "ES256":
            return _der_to_raw_p256(signature)
        if len(signature) != _RSA_2048_SIGNATURE_BYTES:
            raise _unavailable("Sign", "bad length")
        return bytes(signature)


def _der_to_raw_p256(der: bytes) -> bytes:
    """KMS returns ECDSA signatures as DER; JWS wants R || S, 32 octets each (RFC 7518 §3.4)."""
    try:
        r, s = decode_dss_signature(der)
        return r.to_bytes(P256_COORDINATE_BYTES, "big") + s.to_bytes(P256_COORDINATE_BYTES, "big")
    except (ValueError, OverflowError) as exc:
        raise _unavailable("Sign", "malformed ECDSA signature") from exc
