"""Verify EC2 instance identity documents (IMDS evidence) and bind them to the caller.

Rules (docs/security.md "IMDS evidence"): the signature is checked against AWS's published
certificate pinned for the document's region and the variant sent — never one embedded in
the PKCS7 — and the evidence only counts once bound to the SigV4 caller.

Certificate validity dates are not enforced. Trust is the pinned public key for a
(variant, region): AWS keeps signing with keys whose older certificate expired (the
`rsa_previous/` and `rsa_legacy/` files carry the current keys in expired certificates,
and documents signed before a certificate's notBefore still verify). The certificates
are only containers for the keys; `tests/unit/test_iid_certs.py` reports those nearing
expiry so we refresh the copies (see layers/core/tokex/evidence/certs/PROVENANCE.md).

Errors: `InvalidRequest` when the evidence object lacks the contract's shape (not an
object, unknown keys, not exactly one signature variant, non-string values, over the size
caps); `InvalidGrant` for everything about its content (base64, DER, signature, document
fields, region, binding).

Cold start: the exchange imports this module only for its types (under TYPE_CHECKING)
and at run time only when a request carries instance evidence, which most do not. Even
then `cryptography.x509`, `evidence.pkcs7` (and its asn1crypto) and the pinned
certificates load on first use, inside the functions below (issue 11, "Cold start close
to its dependencies"), not at import.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from tokex import identifiers
from tokex.errors import InvalidGrant, InvalidRequest
from tokex.evidence.identity import CallerIdentity, InstanceIdentity
from tokex.strict_json import DuplicateKeyError, StrictJsonError, loads_strict

if TYPE_CHECKING:
    from cryptography import x509

MAX_DOCUMENT_BYTES = 4 * 1024
MAX_SIGNATURE_CHARS = 8 * 1024
VARIANTS = ("rsa2048", "pkcs7", "signature")
# Which certs/ directory verifies each variant
# (layers/core/tokex/evidence/certs/PROVENANCE.md).
_VARIANT_DIRECTORIES = {
    "rsa2048": ("rsa2048",),
    "pkcs7": ("dsa",),
    "signature": ("rsa", "rsa_previous"),
}
_LEGACY_CERTIFICATE = "rsa_legacy/default.pem"
_PKCS7_DIGESTS = {"rsa2048": "sha256", "pkcs7": "sha1"}

# Document field -> the format required (re.fullmatch; [0-9], not \d, which is Unicode).
_DOCUMENT_FIELDS = {
    "instanceId": identifiers.INSTANCE_ID,
    "accountId": identifiers.ACCOUNT_ID,
    "region": identifiers.REGION,
    "availabilityZone": re.compile(r"[a-z0-9-]{4,64}"),
    "imageId": re.compile(r"ami-(?:[0-9a-f]{8}|[0-9a-f]{17})"),
    "instanceType": re.compile(r"[a-z0-9-]{1,32}\.[a-z0-9-]{1,32}"),
}
# Optional: when the instance last entered `pending` (its launch or last start), in the
# ISO-8601 UTC form AWS writes (`2021-09-03T21:25:44Z`). A document without it, or with
# another form, still verifies: its InstanceIdentity has no pending_time.
_PENDING_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_PENDING_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")


@dataclasses.dataclass(frozen=True)
class PinnedCertificate:
    """A certificate trusted for one (variant, region); `source` says where it came from."""

    variant: str
    region: str
    source: str
    certificate: x509.Certificate

    @functools.cached_property
    def public_key_der(self) -> bytes:
        return _public_key_der(self.certificate)


def _public_key_der(certificate: x509.Certificate) -> bytes:
    # Lazy: only instance evidence needs it (module docstring, "Cold start").
    from cryptography.hazmat.primitives import serialization

    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class CertificateStore:
    """Pinned certificates by (variant, region). Start empty, or from `default()`."""

    def __init__(self, certificates: Iterable[PinnedCertificate] = ()) -> None:
        self._by_key: dict[tuple[str, str], list[PinnedCertificate]] = {}
        for pinned in certificates:
            self._by_key.setdefault((pinned.variant, pinned.region), []).append(pinned)

    @classmethod
    def default(cls) -> CertificateStore:
        """AWS's published certificates shipped as package data (parsed once per process)."""
        return cls(_packaged_certificates())

    def add(self, variant: str, region: str, certificate: x509.Certificate) -> None:
        """Trust `certificate` for (variant, region): local mode's test CA, never deployed."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        if not identifiers.is_region(region):
            raise ValueError(f"not a region name: {region!r}")
        # Lazy: only instance evidence needs it (module docstring, "Cold start").
        from cryptography.hazmat.primitives.asymmetric import dsa, rsa

        key = certificate.public_key()
        if not isinstance(key, (rsa.RSAPublicKey, dsa.DSAPublicKey)) or (
            variant != "pkcs7" and not isinstance(key, rsa.RSAPublicKey)
        ):
            raise ValueError(f"{type(key).__name__} cannot verify {variant} evidence")
        pinned = PinnedCertificate(variant, region, "added", certificate)
        self._by_key.setdefault((variant, region), []).append(pinned)

    def certificates(self, variant: str, region: str) -> tuple[PinnedCertificate, ...]:
        return tuple(self._by_key.get((variant, region), ()))

    def regions(self, variant: str) -> frozenset[str]:
        return frozenset(region for (kind, region) in self._by_key if kind == variant)

    def __iter__(self) -> Iterator[PinnedCertificate]:
        for pinned in self._by_key.values():
            yield from pinned


@functools.cache
def _packaged_certificates() -> tuple[PinnedCertificate, ...]:
    # Lazy: only instance evidence needs it (module docstring, "Cold start").
    from cryptography import x509

    root = resources.files("tokex.evidence") / "certs"
    loaded: list[PinnedCertificate] = []
    for variant, directories in _VARIANT_DIRECTORIES.items():
        for directory in directories:
            for entry in sorted((root / directory).iterdir(), key=lambda item: item.name):
                if entry.name.endswith(".pem"):
                    certificate = x509.load_pem_x509_certificate(entry.read_bytes())
                    region = entry.name.removesuffix(".pem")
                    loaded.append(
                        PinnedCertificate(variant, region, f"{directory}/{entry.name}", certificate)
                    )
    # The legacy "other regions" certificate is not per region: it is pinned only where
    # the region's own /signature certificate carries the same key (no new trust).
    legacy = x509.load_pem_x509_certificate((root / _LEGACY_CERTIFICATE).read_bytes())
    for current in [p for p in loaded if p.source.startswith("rsa/")]:
        if current.public_key_der == _public_key_der(legacy):
            loaded.append(
                PinnedCertificate("signature", current.region, _LEGACY_CERTIFICATE, legacy)
            )
    return tuple(loaded)


def verify_instance_identity(
    evidence: Mapping[str, Any], store: CertificateStore
) -> InstanceIdentity:
    """Verify IMDS evidence ({"document", and one of rsa2048/pkcs7/signature}); unbound."""
    # Lazy: PKCS7 and asn1crypto only for instance evidence (module docstring, "Cold start").
    from tokex.evidence import pkcs7

    document, variant, blob = _read_evidence(evidence)
    fields = _parse_document(document)
    region = fields["region"]
    candidates = _distinct_keys(store.certificates(variant, region))
    if not candidates:
        raise InvalidGrant(
            f"no pinned AWS certificate for {variant} evidence from region {region}",
            reason="iid_unknown_region",
        )
    signature = _decode_base64(blob, variant)
    keys = [pinned.certificate.public_key() for pinned in candidates]
    document_bytes = document.encode("utf-8")
    try:
        if variant == "signature":
            verified = any(
                pkcs7.signature_is_valid(key, signature, document_bytes, "sha256") for key in keys
            )
            if not verified:
                raise pkcs7.SignatureError("does not verify")
        else:
            pkcs7.verify_signed_data(
                signature, content=document_bytes, digest=_PKCS7_DIGESTS[variant], public_keys=keys
            )
    except pkcs7.SignatureError as exc:
        raise InvalidGrant(
            f"{variant} evidence {exc} (pinned certificate {variant}/{region})",
            reason="iid_signature_invalid",
        ) from None
    except Exception:
        # Untrusted bytes met a library path we did not foresee: fail closed, never a 500.
        raise InvalidGrant(
            f"{variant} evidence could not be verified", reason="iid_malformed"
        ) from None
    return InstanceIdentity(
        instance_id=fields["instanceId"],
        account=fields["accountId"],
        region=region,
        availability_zone=fields["availabilityZone"],
        image_id=fields["imageId"],
        instance_type=fields["instanceType"],
        variant=variant,
        certificate=f"{variant}/{region}",
        pending_time=_pending_time(fields.get("pendingTime")),
    )


def bind_instance_to_caller(instance: InstanceIdentity, caller: CallerIdentity) -> InstanceIdentity:
    """Require the document to describe the caller's account in the caller's partition
    (an account number names an account within one partition only), and the caller's
    instance when the caller is an instance-profile session, whose session name is the
    instance id."""
    if identifiers.partition_of_region(instance.region) != caller.partition:
        raise InvalidGrant(
            f"instance identity document is for Region {instance.region}, not in the "
            f"signed request's partition {caller.partition}",
            reason="iid_partition_mismatch",
        )
    if instance.account != caller.account:
        raise InvalidGrant(
            f"instance identity document is for account {instance.account} "
            f"but the signed request is from account {caller.account}",
            reason="iid_account_mismatch",
        )
    session = caller.session_name
    if (
        session is not None
        and identifiers.INSTANCE_ID.fullmatch(session)
        and session != instance.instance_id
    ):
        raise InvalidGrant(
            f"instance identity document is for instance {instance.instance_id} "
            f"but the signed request is from a role session of instance {session}",
            reason="iid_instance_mismatch",
        )
    return dataclasses.replace(instance, bound=True)


def _read_evidence(evidence: Mapping[str, Any]) -> tuple[str, str, str]:
    """(document, variant, signature text), or InvalidRequest if the shape is wrong."""
    if not isinstance(evidence, Mapping):
        raise InvalidRequest("aws_instance_identity must be a JSON object")
    allowed = {"document", *VARIANTS}
    if any(key not in allowed for key in evidence):
        raise InvalidRequest(
            "aws_instance_identity has unknown keys; allowed: document, rsa2048, pkcs7, signature"
        )
    variants = [variant for variant in VARIANTS if variant in evidence]
    if len(variants) != 1:
        raise InvalidRequest("aws_instance_identity needs exactly one of rsa2048, pkcs7, signature")
    variant = variants[0]
    document, blob = evidence.get("document"), evidence[variant]
    if not isinstance(document, str) or not isinstance(blob, str):
        raise InvalidRequest(f"aws_instance_identity needs `document` and `{variant}` as strings")
    try:
        document_size = len(document.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest("aws_instance_identity `document` is not valid UTF-8") from None
    if document_size > MAX_DOCUMENT_BYTES:
        raise InvalidRequest(f"aws_instance_identity `document` exceeds {MAX_DOCUMENT_BYTES} bytes")
    if len(blob) > MAX_SIGNATURE_CHARS:
        raise InvalidRequest(
            f"aws_instance_identity `{variant}` exceeds {MAX_SIGNATURE_CHARS} chars"
        )
    return document, variant, blob


def _parse_document(document: str) -> dict[str, str]:
    """The required fields of the document, parsed strictly (no duplicate keys), and
    `pendingTime` when it has AWS's form."""
    try:
        parsed = loads_strict(document)
    except DuplicateKeyError as exc:
        raise InvalidGrant(f"instance identity document {exc}") from None
    except StrictJsonError:
        raise InvalidGrant("instance identity document is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidGrant("instance identity document is not a JSON object")
    fields: dict[str, str] = {}
    for name, pattern in _DOCUMENT_FIELDS.items():
        value = parsed.get(name)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise InvalidGrant(f"instance identity document has no valid `{name}`")
        fields[name] = value
    pending_time = parsed.get("pendingTime")
    if isinstance(pending_time, str) and _PENDING_TIME.fullmatch(pending_time):
        fields["pendingTime"] = pending_time
    if not fields["availabilityZone"].startswith(fields["region"]):
        raise InvalidGrant("instance identity document's availabilityZone is not in its region")
    return fields


def _pending_time(text: str | None) -> datetime | None:
    """`pendingTime` as a UTC time; None when absent or not a real date (`...-02-30...`)."""
    if text is None:
        return None
    try:
        return datetime.strptime(text, _PENDING_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _decode_base64(text: str, variant: str) -> bytes:
    """Standard base64 as IMDS serves it: line breaks allowed, canonical padding only."""
    compact = text.translate(_BASE64_WHITESPACE)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidGrant(f"{variant} evidence is not valid base64") from None
    if not raw or base64.b64encode(raw).decode("ascii") != compact:
        raise InvalidGrant(f"{variant} evidence is not canonical base64")
    return raw


def _distinct_keys(candidates: Iterable[PinnedCertificate]) -> list[PinnedCertificate]:
    """One candidate per public key: older certificates often carry the same key."""
    seen: set[bytes] = set()
    distinct = []
    for pinned in candidates:
        if pinned.public_key_der not in seen:
            seen.add(pinned.public_key_der)
            distinct.append(pinned)
    return distinct
