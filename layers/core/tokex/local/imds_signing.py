"""Sign instance identity documents the way IMDS does, for local mode and tests.

Local mode's IMDS emulator serves `/rsa2048` blobs made here with a local test CA; the
exchange verifies them with that CA's certificate added to its `CertificateStore`
(`store.add("rsa2048", region, certificate)`). The structure matches AWS's: CMS
SignedData embedding the document, SHA-256 + RSA PKCS #1 v1.5, signed attributes
contentType, signingTime, CMS algorithm protection (RFC 6211) and messageDigest, no
certificates. It is DER (AWS sends indefinite-length BER; the verifier takes both).
Never used by a deployment: a deployed store holds only AWS's pinned certificates.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import textwrap

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

# IMDS serves the base64 in lines of 64 characters, without PEM armour.
_LINE_LENGTH = 64


def sign_document_for_local_mode(
    document: str, private_key: rsa.RSAPrivateKey, certificate: x509.Certificate
) -> str:
    """The `/rsa2048` text (base64 of the PKCS7) for `document`, signed by `private_key`."""
    content = document.encode("utf-8")
    issuer = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    digest_algorithm = cms.DigestAlgorithm({"algorithm": "sha256", "parameters": None})
    signature_algorithm = cms.SignedDigestAlgorithm({"algorithm": "sha256_rsa"})
    attributes = [
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": _now()})]}),
        cms.CMSAttribute(
            {
                "type": "cms_algorithm_protection",
                "values": [
                    {
                        "digest_algorithm": digest_algorithm,
                        "signature_algorithm": signature_algorithm,
                    }
                ],
            }
        ),
        cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(content).digest()]}),
    ]
    # DER orders a SET OF by the elements' encodings (X.690 §11.6); the verifier insists.
    attributes.sort(key=lambda attribute: attribute.dump())
    signed_attributes = cms.CMSAttributes(attributes)
    signature = private_key.sign(signed_attributes.dump(), padding.PKCS1v15(), hashes.SHA256())
    signer = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": issuer.issuer,
                        "serial_number": issuer.serial_number,
                    }
                }
            ),
            "digest_algorithm": digest_algorithm,
            "signed_attrs": signed_attributes,
            "signature_algorithm": signature_algorithm,
            "signature": signature,
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": "data", "content": content},
            "signer_infos": [signer],
        }
    )
    blob = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
    return "\n".join(textwrap.wrap(base64.b64encode(blob).decode("ascii"), _LINE_LENGTH))


def create_local_signing_certificate(
    private_key: rsa.RSAPrivateKey, *, common_name: str = "tokex local IMDS (not AWS)"
) -> x509.Certificate:
    """A self-signed certificate for `private_key`, to add to a local CertificateStore."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)
