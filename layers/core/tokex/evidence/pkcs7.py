"""Verify the CMS SignedData (PKCS #7) blobs IMDS serves at `/rsa2048` and `/pkcs7`.

Only the shape AWS produces is accepted: one SignerInfo, embedded `data` content, signed
attributes with a content type of `data` and a message digest of that content (RFC 5652
§5.3, §5.4, §11). Certificates and CRLs inside the blob are never read: the caller passes
the pinned public keys, so a certificate smuggled into the bag cannot change the result.

The blobs are BER with indefinite lengths (as IMDS serves them); asn1crypto parses that,
and refuses trailing data with `strict=True`. The signature covers the DER encoding of the
signed attributes as a SET OF (RFC 5652 §5.4), which we rebuild ourselves rather than trust
the bytes as sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from asn1crypto import cms
from asn1crypto.core import Asn1Value
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

# Digest names (asn1crypto's) we verify with, and the hash each one means.
DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}

# SignerInfo signatureAlgorithm (asn1crypto names) -> (key kind, hash named by the OID).
# rsaEncryption and id-dsa name no hash; the digestAlgorithm field decides (RFC 5754 §3).
_SIGNATURE_ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "rsassa_pkcs1v15": ("rsa", None),
    "sha1_rsa": ("rsa", "sha1"),
    "sha256_rsa": ("rsa", "sha256"),
    "dsa": ("dsa", None),
    "sha1_dsa": ("dsa", "sha1"),
    "sha256_dsa": ("dsa", "sha256"),
}

# RFC 5652 §5.3: when signed attributes are present these two are required (§11.1, §11.2).
_REQUIRED_ATTRIBUTES = ("content_type", "message_digest")


class SignatureError(Exception):
    """The evidence's signature is refused; the message says why (safe to show)."""


def verify_signed_data(
    der: bytes,
    *,
    content: bytes,
    digest: str,
    public_keys: Sequence[CertificatePublicKeyTypes],
) -> int:
    """Check `der` signs exactly `content`; return the index of the key that verified.

    `digest` is the only digest algorithm accepted (the variant decides it). Raises
    `SignatureError` for anything malformed, unexpected or unverified.
    """
    try:
        return _verify(der, content, digest, public_keys)
    except SignatureError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        # asn1crypto parses lazily: malformed inner structures surface on first access,
        # anywhere below, so the whole walk is inside this boundary.
        raise SignatureError("is not a well-formed PKCS7 SignedData") from exc


def _verify(
    der: bytes, content: bytes, digest: str, public_keys: Sequence[CertificatePublicKeyTypes]
) -> int:
    signer, embedded = _parse(der, digest)
    if embedded != content:
        raise SignatureError("embeds a different document than `document`")

    # The signer's identifier (issuer and serial) is not used: the key is pinned.
    if signer["version"].native != "v1" or signer["sid"].name != "issuer_and_serial_number":
        raise SignatureError("has a SignerInfo of an unexpected version")
    _check_digest_algorithm(signer["digest_algorithm"], digest)
    signature_name = signer["signature_algorithm"]["algorithm"].native
    key_kind, named_hash = _SIGNATURE_ALGORITHMS.get(signature_name, ("", None))
    if not key_kind or named_hash not in (None, digest):
        raise SignatureError(f"uses an unsupported signature algorithm ({_name(signature_name)})")
    if signer["signature_algorithm"]["parameters"].native is not None:
        raise SignatureError("has unexpected signature algorithm parameters")

    signed_attributes = _check_signed_attributes(signer, content, digest, signature_name)
    signature = signer["signature"].native
    for index, key in enumerate(public_keys):
        if _key_kind(key) == key_kind and signature_is_valid(
            key, signature, signed_attributes, digest
        ):
            return index
    raise SignatureError("signature does not verify")


def signature_is_valid(
    key: CertificatePublicKeyTypes, signature: bytes, data: bytes, digest: str
) -> bool:
    """RSA PKCS #1 v1.5 or DSA signature check; any other key type never verifies."""
    algorithm = DIGESTS[digest]()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, data, algorithm)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _key_kind(key: CertificatePublicKeyTypes) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, dsa.DSAPublicKey):
        return "dsa"
    return "other"


def _name(value: object) -> str:
    """An algorithm or attribute name safe to echo: asn1crypto's names, not raw OIDs."""
    text = str(value)
    return text if text.isidentifier() and len(text) <= 40 else "unrecognised OID"


def _check_digest_algorithm(algorithm: cms.DigestAlgorithm, digest: str) -> None:
    name = algorithm["algorithm"].native
    if name != digest:
        raise SignatureError(f"uses digest {_name(name)}, expected {digest} for this variant")
    # Parameters are absent or NULL (RFC 5754 §2: both occur, AWS sends either).
    if algorithm["parameters"].native is not None:
        raise SignatureError("has unexpected digest algorithm parameters")


def _parse(der: bytes, digest: str) -> tuple[cms.SignerInfo, bytes]:
    """The single SignerInfo and the embedded content of a `data` SignedData."""
    info = cms.ContentInfo.load(der, strict=True)
    if info["content_type"].native != "signed_data":
        raise SignatureError("is not a PKCS7 SignedData")
    signed_data = info["content"]
    # RFC 5652 §5.1: version 1 for `data` content and v1 SignerInfos, as AWS sends.
    if signed_data["version"].native != "v1":
        raise SignatureError("has a SignedData of an unexpected version")
    digest_algorithms = signed_data["digest_algorithms"]
    if len(digest_algorithms) != 1:
        raise SignatureError("must list exactly one digest algorithm")
    _check_digest_algorithm(digest_algorithms[0], digest)
    signers = signed_data["signer_infos"]
    if len(signers) != 1:
        raise SignatureError(f"has {len(signers)} signers, expected exactly one")
    encapsulated = signed_data["encap_content_info"]
    if encapsulated["content_type"].native != "data":
        raise SignatureError("does not embed `data` content")
    embedded = encapsulated["content"].native
    if not isinstance(embedded, bytes):
        raise SignatureError("does not embed the document (detached signature)")
    return signers[0], embedded


def _check_signed_attributes(
    signer: cms.SignerInfo, content: bytes, digest: str, signature_name: str
) -> bytes:
    """Check the signed attributes and return their DER encoding as a SET OF."""
    attributes = signer["signed_attrs"]
    if not isinstance(attributes, cms.CMSAttributes) or len(attributes) == 0:
        raise SignatureError("has no signed attributes")
    values: dict[str, Asn1Value] = {}
    for attribute in attributes:
        name = attribute["type"].native
        if name in values:
            raise SignatureError(f"repeats the signed attribute {_name(name)}")
        if len(attribute["values"]) != 1:
            raise SignatureError(f"signed attribute {_name(name)} must have exactly one value")
        values[name] = attribute["values"][0]
    missing = [name for name in _REQUIRED_ATTRIBUTES if name not in values]
    if missing:
        raise SignatureError(f"lacks the signed attribute(s) {', '.join(missing)}")

    if values["content_type"].native != "data":
        raise SignatureError("signed content type is not `data`")
    expected_digest = hashlib.new(digest, content).digest()
    if values["message_digest"].native != expected_digest:
        raise SignatureError("signed message digest does not match the document")
    # RFC 6211: when present, the protected algorithms must be the ones in use.
    protection = values.get("cms_algorithm_protection")
    if protection is not None:
        protected = protection.native
        if (
            protected["digest_algorithm"]["algorithm"] != digest
            or (protected["signature_algorithm"] or {}).get("algorithm") != signature_name
        ):
            raise SignatureError("algorithm protection attribute does not match the algorithms")
    # Verify over our own DER encoding and refuse any other encoding of the same values,
    # so the bytes the signature covers are exactly the values we checked above.
    received = bytes(attributes.contents)
    encoded = sorted(attribute.dump(force=True) for attribute in attributes)
    if b"".join(encoded) != received:
        raise SignatureError("signed attributes are not DER encoded")
    return _der_set_of(encoded)


def _der_set_of(sorted_encodings: list[bytes]) -> bytes:
    """DER SET OF: elements sorted by their encodings (X.690 §11.6), tag 0x31."""
    body = b"".join(sorted_encodings)
    length = len(body)
    if length < 0x80:
        header = bytes([length])
    else:
        raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([0x80 | len(raw)]) + raw
    return b"\x31" + header + body
