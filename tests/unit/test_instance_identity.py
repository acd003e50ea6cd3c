"""IMDS evidence: real AWS samples verify; docs/security.md "Known attacks", group 7, is refused."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tokex.errors import InvalidGrant, InvalidRequest, TokexError
from tokex.evidence.identity import CallerIdentity, InstanceIdentity
from tokex.evidence.instance_identity import (
    VARIANTS,
    CertificateStore,
    PinnedCertificate,
    bind_instance_to_caller,
    verify_instance_identity,
)
from tokex.local.imds_signing import create_local_signing_certificate, sign_document_for_local_mode

SAMPLES = Path(__file__).parents[1] / "data" / "aws-iid" / "samples"
SAMPLE_NAMES = sorted(path.name for path in SAMPLES.iterdir() if path.is_dir())
PKCS7_SAMPLES = [name for name in SAMPLE_NAMES if "_signature_" not in name]
RSA2048_SAMPLE = "us-west-2_2021-09_rsa2048_teleport-instance1"


def load(name: str) -> dict[str, str]:
    """Evidence exactly as a client would send it (file bytes, decoded as UTF-8)."""
    directory = SAMPLES / name
    evidence = {"document": (directory / "document").read_bytes().decode("utf-8")}
    for variant in VARIANTS:
        if (directory / variant).exists():
            evidence[variant] = (directory / variant).read_bytes().decode("ascii")
    return evidence


def variant_of(evidence: dict[str, str]) -> str:
    return next(name for name in VARIANTS if name in evidence)


def der_of(evidence: dict[str, str]) -> bytes:
    return base64.b64decode("".join(evidence[variant_of(evidence)].split()))


def with_blob(evidence: dict[str, str], raw: bytes, variant: str | None = None) -> dict[str, str]:
    return {"document": evidence["document"], variant or variant_of(evidence): b64(raw)}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def flip(raw: bytes, index: int) -> bytes:
    return raw[:index] + bytes([raw[index] ^ 0x01]) + raw[index + 1 :]


def refused(
    evidence: object, store: CertificateStore, error: type[TokexError] = InvalidGrant
) -> str:
    with pytest.raises(error) as caught:
        verify_instance_identity(evidence, store)  # type: ignore[arg-type]
    return caught.value.reason


@pytest.fixture(scope="module")
def store() -> CertificateStore:
    return CertificateStore.default()


@pytest.fixture(scope="module")
def local_ca() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, create_local_signing_certificate(key)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_real_sample_verifies(name: str, store: CertificateStore) -> None:
    evidence = load(name)
    document = json.loads(evidence["document"])
    identity = verify_instance_identity(evidence, store)
    assert identity.bound is False
    assert identity.variant == variant_of(evidence)
    assert identity.certificate == f"{identity.variant}/{document['region']}"
    assert identity.claims() == {
        "id": document["instanceId"],
        "account": document["accountId"],
        "region": document["region"],
        "availability_zone": document["availabilityZone"],
        "image_id": document["imageId"],
        "instance_type": document["instanceType"],
    }
    assert identity.pending_time == datetime.fromisoformat(document["pendingTime"])
    # Line breaks are IMDS's, not part of the base64: any of them is fine.
    assert verify_instance_identity(with_blob(evidence, der_of(evidence)), store) == identity
    crlf = dict(evidence, **{identity.variant: evidence[identity.variant].replace("\n", "\r\n")})
    assert verify_instance_identity(crlf, store) == identity


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_one_flipped_document_byte_is_refused(name: str, store: CertificateStore) -> None:
    evidence = load(name)
    # Still valid JSON with valid fields: only the signature can catch it.
    evidence["document"] = evidence["document"].replace('"172.', '"173.', 1)
    if evidence["document"] == load(name)["document"]:
        evidence["document"] = evidence["document"].replace('"10.', '"11.', 1)
    assert evidence["document"] != load(name)["document"]
    assert refused(evidence, store) == "iid_signature_invalid"


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_one_flipped_signature_byte_is_refused(name: str, store: CertificateStore) -> None:
    evidence = load(name)
    raw = der_of(evidence)
    if variant_of(evidence) == "signature":
        position = len(raw) // 2
    else:
        signer = cms.ContentInfo.load(raw)["content"]["signer_infos"][0]
        signature = signer["signature"].native
        position = raw.index(signature) + len(signature) // 2
    assert refused(with_blob(evidence, flip(raw, position)), store) == "iid_signature_invalid"


@pytest.mark.parametrize("name", PKCS7_SAMPLES)
@pytest.mark.parametrize("attribute", ["signing_time", "message_digest", "content_type"])
def test_one_flipped_signed_attribute_byte_is_refused(
    name: str, attribute: str, store: CertificateStore
) -> None:
    evidence = load(name)
    raw = der_of(evidence)
    signer = cms.ContentInfo.load(raw)["content"]["signer_infos"][0]
    value = next(a["values"][0] for a in signer["signed_attrs"] if a["type"].native == attribute)
    encoded = value.contents  # the value bytes, inside the signed attributes region
    position = raw.index(encoded) + len(encoded) - 1
    assert refused(with_blob(evidence, flip(raw, position)), store) == "iid_signature_invalid"


@pytest.mark.parametrize("name", PKCS7_SAMPLES)
def test_embedded_content_must_equal_document(name: str, store: CertificateStore) -> None:
    evidence = load(name)
    raw = der_of(evidence)
    position = raw.index(evidence["document"].encode()[:40]) + 20
    assert refused(with_blob(evidence, flip(raw, position)), store) == "iid_signature_invalid"


def smuggle(raw: bytes, certificate: x509.Certificate) -> bytes:
    """The same SignedData with `certificate` in its certificate bag (re-encoded as DER)."""
    info = cms.ContentInfo.load(raw)
    signed = info["content"]
    bag = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    rebuilt = cms.SignedData(
        {
            "version": signed["version"],
            "digest_algorithms": signed["digest_algorithms"],
            "encap_content_info": {
                "content_type": "data",
                "content": signed["encap_content_info"]["content"].native,
            },
            "certificates": [bag],
            "signer_infos": signed["signer_infos"],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": rebuilt}).dump()


@pytest.mark.parametrize("name", PKCS7_SAMPLES)
def test_smuggled_certificate_does_not_break_a_valid_blob(
    name: str, store: CertificateStore, local_ca: tuple[rsa.RSAPrivateKey, x509.Certificate]
) -> None:
    evidence = load(name)
    expected = verify_instance_identity(evidence, store)
    smuggled = smuggle(der_of(evidence), local_ca[1])
    assert verify_instance_identity(with_blob(evidence, smuggled), store) == expected


def test_smuggled_certificate_does_not_help_a_forgery(store: CertificateStore) -> None:
    evidence = load(RSA2048_SAMPLE)
    aws = store.certificates("rsa2048", "us-west-2")[0].certificate
    # The attacker's certificate copies AWS's names and serial; only the key differs.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    lookalike = (
        x509.CertificateBuilder()
        .subject_name(aws.subject)
        .issuer_name(aws.issuer)
        .serial_number(aws.serial_number)
        .public_key(key.public_key())
        .not_valid_before(aws.not_valid_before_utc)
        .not_valid_after(aws.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    forged_document = evidence["document"].replace('"278576220453"', '"111122223333"')
    blob = sign_document_for_local_mode(forged_document, key, lookalike)
    forged = smuggle(base64.b64decode(blob), lookalike)
    assert refused({"document": forged_document, "rsa2048": b64(forged)}, store) == (
        "iid_signature_invalid"
    )


def test_wrong_regions_certificate_is_refused(store: CertificateStore) -> None:
    evidence = load(RSA2048_SAMPLE)  # us-west-2
    other = store.certificates("rsa2048", "us-west-1")[0].certificate
    wrong = CertificateStore([PinnedCertificate("rsa2048", "us-west-2", "test", other)])
    assert refused(evidence, wrong) == "iid_signature_invalid"
    only_other_regions = CertificateStore(p for p in store if p.region != "us-west-2")
    assert refused(evidence, only_other_regions) == "iid_unknown_region"


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_variant_confusion_is_refused(name: str, store: CertificateStore) -> None:
    evidence = load(name)
    for other in VARIANTS:
        if other != variant_of(evidence):
            relabelled = {"document": evidence["document"], other: evidence[variant_of(evidence)]}
            refused(relabelled, store)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_truncated_padded_and_trailing_data_are_refused(name: str, store: CertificateStore) -> None:
    evidence = load(name)
    raw = der_of(evidence)
    for length in range(0, len(raw), 23):
        refused(with_blob(evidence, raw[:length] or b"\x00"), store)
    for suffix in (b"\x00", b"\x00\x00", b"\x00\x00\x00\x00", b"junk"):
        refused(with_blob(evidence, raw + suffix), store)
    compact = b64(raw)
    text_variant = variant_of(evidence)
    for bad in (
        compact + "=",
        compact + "==",
        compact.rstrip("=") + "A",
        compact + "!",
        "-" + compact,
    ):
        refused({"document": evidence["document"], text_variant: bad}, store)


@pytest.mark.parametrize("variant", ["rsa2048", "pkcs7", "signature"])
def test_garbage_is_refused_without_crashing(variant: str, store: CertificateStore) -> None:
    document = load(RSA2048_SAMPLE)["document"]
    rng = random.Random(7)
    garbage = [rng.randbytes(size) for size in (1, 2, 16, 300, 1100, 6000)] + [
        b"\x30\x80" * 3000,
        b"\x30\x84\xff\xff\xff\xff",
        b"\x24\x80" * 100,
        b"\x30\x00",
    ]
    for raw in garbage:
        refused({"document": document, variant: b64(raw)}, store)


def test_shape_errors_are_invalid_request(store: CertificateStore) -> None:
    evidence = load(RSA2048_SAMPLE)
    blob = evidence["rsa2048"]
    document = evidence["document"]
    for bad in (
        [document, blob],
        "document",
        {"document": document},
        {"rsa2048": blob},
        {"document": document, "rsa2048": blob, "pkcs7": blob},
        {"document": document, "rsa2048": blob, "certificate": "x"},
        {"document": document, "rsa2048": ["x"]},
        {"document": 7, "rsa2048": blob},
        {"document": "\ud800", "rsa2048": blob},
        {"document": document + " " * 4096, "rsa2048": blob},
        {"document": document, "rsa2048": "A" * (8 * 1024 + 4)},
    ):
        refused(bad, store, InvalidRequest)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.replace('"accountId" :', '"accountId" : "1", "accountId" :'), "repeats"),
        (lambda d: d.replace('"278576220453"', '"27857622045"'), "accountId"),
        (lambda d: d.replace('"278576220453"', '"٢٧٨٥٧٦٢٢٠٤٥٣"'), "accountId"),
        (lambda d: d.replace('"i-078517ca8a70a1dde"', '"i-078517CA8A70A1DDE"'), "instanceId"),
        (lambda d: d.replace('"i-078517ca8a70a1dde"', "null"), "instanceId"),
        (lambda d: d.replace('"ami-0fa9e1f64142cde17"', '"ami-0fa9e1f64142cde17\\n"'), "imageId"),
        (lambda d: d.replace('"us-west-2a"', '"us-east-1a"'), "availabilityZone"),
        (lambda d: d.replace('"t2.medium"', '"t2"'), "instanceType"),
        (lambda d: d.replace('"region" : "us-west-2"', '"region" : "US-WEST-2"'), "region"),
        (lambda d: d.replace('"kernelId" : null', '"kernelId" : NaN'), "JSON"),
        (lambda d: "[" + d + "]", "object"),
        (lambda d: d + "x", "JSON"),
    ],
)
def test_document_is_parsed_strictly(
    change: Callable[[str], str], expected: str, store: CertificateStore
) -> None:
    evidence = load(RSA2048_SAMPLE)
    evidence["document"] = change(evidence["document"])
    with pytest.raises(InvalidGrant, match=expected):
        verify_instance_identity(evidence, store)


@pytest.mark.parametrize(
    "pending_time",
    [
        None,  # no pendingTime at all
        "null",
        "1630704344",
        '"2021-09-03T21:25:44.000Z"',
        '"2021-09-03T21:25:44+00:00"',
        '"2021-09-03 21:25:44Z"',
        '"2021-9-3T21:25:44Z"',
        '"2021-02-30T21:25:44Z"',
        '"٢٠٢١-09-03T21:25:44Z"',
    ],
)
def test_document_without_a_pending_time_in_aws_form_still_verifies(
    pending_time: str | None, local_ca: tuple[rsa.RSAPrivateKey, x509.Certificate]
) -> None:
    key, certificate = local_ca
    document = load(RSA2048_SAMPLE)["document"]
    aws_form = '  "pendingTime" : "2021-09-03T21:25:44Z",\n'
    assert aws_form in document
    replacement = "" if pending_time is None else f'  "pendingTime" : {pending_time},\n'
    document = document.replace(aws_form, replacement)
    local = CertificateStore()
    local.add("rsa2048", "us-west-2", certificate)
    evidence = {
        "document": document,
        "rsa2048": sign_document_for_local_mode(document, key, certificate),
    }
    identity = verify_instance_identity(evidence, local)
    assert identity.pending_time is None
    assert identity.instance_id == "i-078517ca8a70a1dde"


def test_unknown_region_is_refused(store: CertificateStore) -> None:
    evidence = load(RSA2048_SAMPLE)
    evidence["document"] = evidence["document"].replace("us-west-2", "xx-nowhere-9")
    assert refused(evidence, store) == "iid_unknown_region"


def test_local_ca_verifies_only_where_added(
    store: CertificateStore, local_ca: tuple[rsa.RSAPrivateKey, x509.Certificate]
) -> None:
    key, certificate = local_ca
    document = load(RSA2048_SAMPLE)["document"]
    evidence = {
        "document": document,
        "rsa2048": sign_document_for_local_mode(document, key, certificate),
    }
    local = CertificateStore()
    local.add("rsa2048", "us-west-2", certificate)
    identity = verify_instance_identity(evidence, local)
    assert (identity.certificate, identity.account) == ("rsa2048/us-west-2", "278576220453")
    assert refused(evidence, store) == "iid_signature_invalid"
    assert refused({"document": document, "pkcs7": evidence["rsa2048"]}, local) == (
        "iid_unknown_region"
    )
    other = dict(evidence, document=document.replace('"10.0.0.209"', '"10.0.0.210"'))
    assert refused(other, local) == "iid_signature_invalid"
    with pytest.raises(ValueError):
        local.add("dsa", "us-west-2", certificate)
    with pytest.raises(ValueError):
        local.add("rsa2048", "us-west-2 ", certificate)
    assert store.certificates("rsa2048", "us-west-2")[0].source != "added"


def der_set(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    if len(body) < 0x80:
        return b"\x31" + bytes([len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return b"\x31" + bytes([0x80 | len(size)]) + size + body


def long_form(element: bytes) -> bytes:
    """The same attribute with a non-minimal (BER-only) length."""
    assert element[1] < 0x80
    return element[:1] + b"\x81" + element[1:]


def attribute_named(elements: list[bytes], name: str) -> bytes:
    return next(e for e in elements if cms.CMSAttribute.load(e)["type"].native == name)


@pytest.mark.parametrize(
    ("mutate", "signers", "expected"),
    [
        (lambda e: sorted(e), 1, None),  # the control: re-signed DER verifies
        (lambda e: sorted(e, reverse=True), 1, "not DER encoded"),
        (lambda e: [long_form(e[0]), *e[1:]], 1, "not DER encoded"),
        (lambda e: [x for x in e if b"\x2a\x86\x48\x86\xf7\x0d\x01\x09\x04" not in x], 1, "lacks"),
        (lambda e: sorted([*e, attribute_named(e, "content_type")]), 1, "repeats"),
        (lambda e: None, 1, "no signed attributes"),
        (lambda e: sorted(e), 2, "2 signers"),
    ],
)
def test_signed_data_shape_is_strict(
    mutate: Callable[[list[bytes]], list[bytes] | None],
    signers: int,
    expected: str | None,
    local_ca: tuple[rsa.RSAPrivateKey, x509.Certificate],
) -> None:
    """Validly signed by a trusted key, yet refused unless shaped exactly as AWS does."""
    key, certificate = local_ca
    document = load(RSA2048_SAMPLE)["document"]
    blob = base64.b64decode(sign_document_for_local_mode(document, key, certificate))
    signed = cms.ContentInfo.load(blob)["content"]
    signer = signed["signer_infos"][0]
    elements = mutate([a.dump() for a in signer["signed_attrs"]])
    fields = {name: signer[name] for name in ("version", "sid", "digest_algorithm")}
    fields["signature_algorithm"] = signer["signature_algorithm"]
    if elements is None:
        fields["signature"] = key.sign(document.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        to_sign = der_set(elements)
        fields["signed_attrs"] = cms.CMSAttributes.load(to_sign)
        fields["signature"] = key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
    rebuilt = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": signed["digest_algorithms"],
            "encap_content_info": {"content_type": "data", "content": document.encode()},
            "signer_infos": [cms.SignerInfo(fields)] * signers,
        }
    )
    raw = cms.ContentInfo({"content_type": "signed_data", "content": rebuilt}).dump()
    local = CertificateStore()
    local.add("rsa2048", "us-west-2", certificate)
    evidence = {"document": document, "rsa2048": b64(raw)}
    if expected is None:
        assert verify_instance_identity(evidence, local).account == "278576220453"
    else:
        with pytest.raises(InvalidGrant, match=expected):
            verify_instance_identity(evidence, local)


def caller(account: str, session_name: str | None = None) -> CallerIdentity:
    if session_name is None:
        arn = f"arn:aws:iam::{account}:user/alice"
        return CallerIdentity(arn, arn, account, "AIDAEXAMPLE", "AIDAEXAMPLE", "aws")
    arn = f"arn:aws:sts::{account}:assumed-role/app/{session_name}"
    role = f"arn:aws:iam::{account}:role/app"
    user_id = f"AROAEXAMPLE:{session_name}"
    return CallerIdentity(role, arn, account, user_id, "AROAEXAMPLE", "aws", session_name)


@pytest.fixture(scope="module")
def instance(store: CertificateStore) -> InstanceIdentity:
    return verify_instance_identity(load(RSA2048_SAMPLE), store)


@pytest.mark.parametrize(
    "session_name",
    [
        None,
        "i-078517ca8a70a1dde",
        "botocore-session-1700000000",
        "i-xyz",
        "I-0123456789abcdef0",
        "i-078517ca8a70a1dde0",
        "i-078517ca8a70a1dd",
    ],
)
def test_binding_accepts_same_account(instance: InstanceIdentity, session_name: str | None) -> None:
    bound = bind_instance_to_caller(instance, caller("278576220453", session_name))
    assert bound.bound is True and instance.bound is False
    assert bound.claims() == instance.claims()


def test_binding_refuses_another_account(instance: InstanceIdentity) -> None:
    with pytest.raises(InvalidGrant) as caught:
        bind_instance_to_caller(instance, caller("111122223333", "i-078517ca8a70a1dde"))
    assert caught.value.description == (
        "instance identity document is for account 278576220453 "
        "but the signed request is from account 111122223333"
    )


def test_binding_refuses_a_caller_of_another_partition(instance: InstanceIdentity) -> None:
    """An account number names an account within one partition: the same twelve digits in
    aws-cn are another owner's."""
    china = dataclasses.replace(caller("278576220453"), partition="aws-cn")
    with pytest.raises(InvalidGrant) as caught:
        bind_instance_to_caller(instance, china)
    assert (caught.value.reason, caught.value.description) == (
        "iid_partition_mismatch",
        f"instance identity document is for Region {instance.region}, not in the signed "
        "request's partition aws-cn",
    )


@pytest.mark.parametrize("other", ["i-0123456789abcdef0", "i-de0f1344"])
def test_binding_refuses_another_instances_session(instance: InstanceIdentity, other: str) -> None:
    with pytest.raises(InvalidGrant, match=f"instance i-078517ca8a70a1dde .* instance {other}"):
        bind_instance_to_caller(instance, caller("278576220453", other))


@pytest.mark.parametrize("name", [RSA2048_SAMPLE, "us-east-1_2016-04_pkcs7_vault-verify-dsa-test"])
def test_every_single_bit_flip_outside_the_signer_id_is_refused(
    name: str, store: CertificateStore
) -> None:
    """Only the SignerInfo's issuer-and-serial is unsigned and unused (the key is pinned)."""
    evidence = load(name)
    raw = der_of(evidence)
    sid = cms.ContentInfo.load(raw)["content"]["signer_infos"][0]["sid"].dump()
    unused = range(raw.index(sid) + 2, raw.index(sid) + len(sid))
    for position in range(len(raw)):
        if position not in unused:
            refused(with_blob(evidence, flip(raw, position)), store)
