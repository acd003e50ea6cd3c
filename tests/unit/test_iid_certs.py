"""The pinned AWS instance identity certificates shipped as package data."""

from __future__ import annotations

import datetime
import hashlib
import json
from importlib import resources

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from tokex.evidence.instance_identity import VARIANTS, CertificateStore

CERTS = resources.files("tokex.evidence") / "certs"
INDEX = json.loads((CERTS / "index.json").read_text(encoding="utf-8"))
FILES = sorted(entry["file"] for variant in INDEX.values() for entry in variant.values())


def certificate(file: str) -> x509.Certificate:
    # index.json names files as "certs/<dir>/<region>.pem", relative to the certs dir's parent.
    return x509.load_pem_x509_certificate((CERTS / file.removeprefix("certs/")).read_bytes())


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_every_shipped_certificate_matches_the_index() -> None:
    on_disk = sorted(
        f"certs/{directory.name}/{entry.name}"
        for directory in CERTS.iterdir()
        if directory.is_dir()
        for entry in directory.iterdir()
        if entry.name.endswith(".pem")
    )
    assert on_disk == FILES
    for entries in INDEX.values():
        for entry in entries.values():
            cert = certificate(entry["file"])
            der = cert.public_bytes(serialization.Encoding.DER)
            assert hashlib.sha256(der).hexdigest() == entry["sha256"], entry["file"]
            assert hashlib.sha256(spki(cert)).hexdigest() == entry["spki_sha256"], entry["file"]
            key = cert.public_key()
            assert isinstance(key, (rsa.RSAPublicKey, dsa.DSAPublicKey)), entry["file"]
            assert key.key_size == entry["key_bits"], entry["file"]


def test_default_store_covers_each_variant_with_the_right_key_types() -> None:
    store = CertificateStore.default()
    assert len(store.regions("rsa2048")) == 39
    assert len(store.regions("signature")) == 39
    assert len(store.regions("pkcs7")) == 36
    for pinned in store:
        key = pinned.certificate.public_key()
        assert pinned.variant in VARIANTS
        if pinned.variant == "pkcs7" and not pinned.region.startswith("cn-"):
            assert isinstance(key, dsa.DSAPublicKey), pinned.source
        else:
            # The two China files under dsa/ hold RSA-2048 keys
            # (layers/core/tokex/evidence/certs/PROVENANCE.md).
            assert isinstance(key, rsa.RSAPublicKey), pinned.source
        if pinned.variant == "rsa2048":
            assert key.key_size == 2048


def test_older_certificates_carry_their_regions_current_keys() -> None:
    """rsa_previous/ and rsa_legacy/ add candidates, never a key AWS did not publish for
    that region's /signature."""
    store = CertificateStore.default()
    for region in store.regions("signature"):
        pinned = store.certificates("signature", region)
        assert pinned[0].source == f"rsa/{region}.pem"
        assert {p.public_key_der for p in pinned} == {pinned[0].public_key_der}
    legacy = [p for p in store if p.source == "rsa_legacy/default.pem"]
    assert {p.region for p in legacy} >= {"us-east-1", "eu-west-1"}
    assert "cn-north-1" not in {p.region for p in legacy}
    previous = store.certificates("signature", "cn-north-1")
    assert [p.source for p in previous] == ["rsa/cn-north-1.pem", "rsa_previous/cn-north-1.pem"]


def self_signed(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_default_returns_independent_stores_over_parsed_once_data() -> None:
    first, second = CertificateStore.default(), CertificateStore.default()
    assert (
        first.certificates("rsa2048", "us-east-1")[0]
        is second.certificates("rsa2048", "us-east-1")[0]
    )
    first.add("rsa2048", "us-east-1", self_signed(rsa.generate_private_key(65537, 2048)))
    assert len(first.certificates("rsa2048", "us-east-1")) == 2
    assert len(second.certificates("rsa2048", "us-east-1")) == 1
    assert len(CertificateStore.default().certificates("rsa2048", "us-east-1")) == 1


def test_add_refuses_keys_that_cannot_verify_the_variant() -> None:
    with pytest.raises(ValueError, match="cannot verify"):
        CertificateStore().add(
            "rsa2048", "us-east-1", self_signed(ec.generate_private_key(ec.SECP256R1()))
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_store_knows_no_region(variant: str) -> None:
    assert CertificateStore().regions(variant) == frozenset()
