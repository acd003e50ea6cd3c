"""KmsSigner, public_jwk_for_key and KmsPublicKeys against moto's KMS (in process)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import boto3
import jwt
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from cryptography.hazmat.primitives.serialization import load_der_public_key
from jwcrypto import jwk as jwcrypto_jwk
from moto import mock_aws
from moto.server import ThreadedMotoServer

from tests.support.ports import free_port
from tokex.adapters.kms import KmsPublicKeys, KmsSigner, UnreadableKey, public_jwk_for_key
from tokex.errors import ConfigurationError, Misconfigured, TemporarilyUnavailable
from tokex.tokens.jwks import rfc7638_thumbprint
from tokex.tokens.jws import TokenTooLarge, encode_jwt
from tokex.tokens.signer import MAX_SIGNING_INPUT_BYTES, Signer
from tokex.wiring import kms_signer

REGION = "us-east-1"
CLAIMS = {"iss": "https://auth.example.com", "sub": "arn:aws:iam::123456789012:role/x",
          "aud": "demo-api", "iat": 1, "nbf": 1, "exp": 2, "jti": "j"}  # fmt: skip
FAST_FAIL = Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1})


@pytest.fixture(scope="module")
def kms() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


@pytest.fixture(scope="module")
def keys(kms: Any) -> dict[str, str]:
    def create(spec: str, usage: str = "SIGN_VERIFY") -> str:
        return kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Arn"]

    return {
        "RS256": create("RSA_2048"),
        "ES256": create("ECC_NIST_P256"),
        "rsa-encrypt": create("RSA_2048", "ENCRYPT_DECRYPT"),
        "symmetric": create("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        "secp256k1": create("ECC_SECG_P256K1"),
        "rsa-4096": create("RSA_4096"),
    }


def count_sign_calls(client: Any) -> list[Any]:
    calls: list[Any] = []
    client.meta.events.register("before-call.kms.Sign", lambda **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_token_verifies_with_the_published_jwk(kms: Any, keys: dict[str, str], alg: str) -> None:
    signer: Signer = KmsSigner(kms, keys[alg])
    assert signer.alg == alg
    token = encode_jwt(CLAIMS, signer)
    published = public_jwk_for_key(kms, keys[alg])
    assert published == signer.public_jwk()
    header = {"alg": alg, "typ": "at+jwt", "kid": published["kid"]}
    assert jwt.get_unverified_header(token) == header
    decoded = jwt.decode(
        token, jwt.PyJWK(published), algorithms=[alg], audience="demo-api",
        options={"verify_exp": False, "verify_iat": False},
    )  # fmt: skip
    assert decoded == CLAIMS
    signature = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    assert len(signature) == (64 if alg == "ES256" else 256)  # ES256: raw R||S, not DER


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_kid_is_stable_and_is_the_thumbprint(kms: Any, keys: dict[str, str], alg: str) -> None:
    first, second = KmsSigner(kms, keys[alg]), KmsSigner(kms, keys[alg])
    jwk = first.public_jwk()
    assert first.kid == second.kid == jwk["kid"] == rfc7638_thumbprint(jwk)
    der = kms.get_public_key(KeyId=keys[alg])["PublicKey"]
    # An independent implementation derives the same kid from KMS's DER.
    assert jwcrypto_jwk.JWK.from_pyca(load_der_public_key(der)).thumbprint() == first.kid


def test_alias_resolves_to_the_same_key(kms: Any, keys: dict[str, str]) -> None:
    kms.create_alias(AliasName="alias/tokex-test", TargetKeyId=keys["ES256"])
    assert KmsSigner(kms, "alias/tokex-test").kid == KmsSigner(kms, keys["ES256"]).kid


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_oversized_input_refused_without_calling_kms(
    kms: Any, keys: dict[str, str], alg: str
) -> None:
    signer = KmsSigner(kms, keys[alg])
    calls = count_sign_calls(kms)
    with pytest.raises(TokenTooLarge):
        signer.sign(b"x" * (MAX_SIGNING_INPUT_BYTES + 1))
    with pytest.raises(TokenTooLarge):
        encode_jwt({**CLAIMS, "pad": "x" * MAX_SIGNING_INPUT_BYTES}, signer)
    assert calls == []
    signer.sign(b"x" * MAX_SIGNING_INPUT_BYTES)  # the limit itself is allowed
    assert len(calls) == 1


@pytest.mark.parametrize("key", ["rsa-encrypt", "symmetric", "secp256k1", "rsa-4096"])
def test_keys_that_cannot_sign_jwts_are_configuration_errors(
    kms: Any, keys: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigurationError):
        KmsSigner(kms, keys[key])
    with pytest.raises(ConfigurationError):
        public_jwk_for_key(kms, keys[key])


def test_unknown_key_is_a_configuration_error(kms: Any) -> None:
    with pytest.raises(ConfigurationError):
        KmsSigner(kms, "alias/does-not-exist")


@pytest.mark.parametrize("key", ["rsa-encrypt", "secp256k1", "alias/does-not-exist"])
def test_the_exchange_signer_of_a_key_that_cannot_sign_jwts_is_a_misconfigured_503(
    kms: Any, keys: dict[str, str], key: str
) -> None:
    """Built on a request (a cold environment's first), a key that cannot sign JWTs is that
    request's 503, as a warm signer's Sign of a key gone, never a crash: the reason names
    the key and why, the description neither."""
    key_id = keys.get(key, key)
    with pytest.raises(Misconfigured) as caught:
        kms_signer(kms, key_id)
    assert caught.value.status == 503 and caught.value.headers() == {"Retry-After": "60"}
    assert caught.value.reason.startswith(f"kms GetPublicKey: KMS key {key_id!r}")
    assert caught.value.description == "the signing service is unavailable, retry later"
    assert kms_signer(kms, keys["ES256"]).alg == "ES256"


def test_unreachable_kms_is_temporarily_unavailable() -> None:
    closed = boto3.client(
        "kms", region_name=REGION, endpoint_url="http://127.0.0.1:1", config=FAST_FAIL,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    arn = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    for attempt in (lambda: KmsSigner(closed, arn), lambda: public_jwk_for_key(closed, arn)):
        with pytest.raises(TemporarilyUnavailable) as caught:
            attempt()
        assert caught.value.status == 503 and not isinstance(caught.value, Misconfigured)
        assert "arn:" not in caught.value.description
        assert "11111111" not in caught.value.description


def test_kms_going_away_after_cold_start_is_temporarily_unavailable() -> None:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client(
            "kms", region_name=REGION, endpoint_url=f"http://127.0.0.1:{port}", config=FAST_FAIL,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        key = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        signer = KmsSigner(client, key["Arn"])
        assert len(signer.sign(b"header.payload")) == 64
    finally:
        server.stop()
    with pytest.raises(TemporarilyUnavailable) as caught:
        signer.sign(b"header.payload")
    assert key["KeyId"] not in caught.value.description


@pytest.mark.parametrize(
    ("code", "lasting"),
    [
        ("ThrottlingException", False),
        ("KMSInternalException", False),
        ("DependencyTimeoutException", False),
        ("KeyUnavailableException", False),
        ("DisabledException", True),
        ("KMSInvalidStateException", True),
        ("NotFoundException", True),
        ("AccessDeniedException", True),
        ("InvalidKeyUsageException", True),
    ],
)
def test_kms_sign_errors_are_temporarily_unavailable(
    kms: Any, keys: dict[str, str], code: str, lasting: bool
) -> None:
    """Each a 503; one that lasts until an operator acts (the key disabled, pending
    deletion, gone, or a policy denying tokex) is Misconfigured: Retry-After 60, not 5."""
    # moto signs with disabled keys (real KMS answers DisabledException /
    # KMSInvalidStateException), so KMS's answers are stubbed on the real client.
    signer = KmsSigner(kms, keys["RS256"])
    with Stubber(kms) as stubber:
        stubber.add_client_error("sign", service_error_code=code, service_message=keys["RS256"])
        with pytest.raises(TemporarilyUnavailable) as caught:
            signer.sign(b"header.payload")
    assert caught.value.status == 503
    assert isinstance(caught.value, Misconfigured) is lasting
    assert caught.value.headers() == {"Retry-After": "60" if lasting else "5"}
    assert "arn:" not in caught.value.description
    assert caught.value.reason == f"kms Sign: {code}"


class RefusingKms:
    """moto's KMS client, but GetPublicKey of `refused` answers `code`, as KMS answers for
    a key that is disabled, scheduled for deletion, or whose grant another account
    withdrew (moto does not enforce those states for GetPublicKey)."""

    def __init__(self, kms: Any, refused: str, code: str) -> None:
        self._kms, self._refused, self._code = kms, refused, code

    def get_public_key(self, KeyId: str) -> Any:
        if KeyId == self._refused:
            error = {"Error": {"Code": self._code, "Message": "refused by the test"}}
            raise ClientError(error, "GetPublicKey")
        return self._kms.get_public_key(KeyId=KeyId)


@pytest.mark.parametrize(
    "code", ["AccessDeniedException", "DisabledException", "KMSInvalidStateException"]
)
def test_a_published_key_kms_refuses_is_left_out_of_introspection_only(
    kms: Any, keys: dict[str, str], code: str
) -> None:
    """The active key's tokens stay introspectable when another published key (a previous
    one, another account's) can no longer be read; the publisher fails closed, naming it."""
    signing, previous = keys["ES256"], keys["RS256"]
    published = KmsPublicKeys(RefusingKms(kms, previous, code), [signing, previous])
    assert published.for_introspection() == [public_jwk_for_key(kms, signing)]
    with pytest.raises(UnreadableKey) as publishing:
        published.jwks()
    assert code in publishing.value.reason and previous in publishing.value.reason
    assert previous not in publishing.value.description


def test_a_published_key_that_cannot_sign_jwts_is_left_out_of_introspection(
    kms: Any, keys: dict[str, str]
) -> None:
    published = KmsPublicKeys(kms, [keys["ES256"], keys["rsa-encrypt"]])
    assert published.for_introspection() == [public_jwk_for_key(kms, keys["ES256"])]


@pytest.mark.parametrize("code", ["AccessDeniedException", "ThrottlingException"])
def test_the_signing_key_unread_or_kms_unreachable_is_a_503_never_fewer_keys(
    kms: Any, keys: dict[str, str], code: str
) -> None:
    signing, previous = keys["ES256"], keys["RS256"]
    for refused in (signing, previous) if code == "ThrottlingException" else (signing,):
        published = KmsPublicKeys(RefusingKms(kms, refused, code), [signing, previous])
        with pytest.raises(TemporarilyUnavailable) as caught:
            published.for_introspection()
        assert caught.value.status == 503
        assert isinstance(caught.value, Misconfigured) is (code == "AccessDeniedException")


def test_a_signing_key_that_cannot_sign_jwts_is_a_misconfigured_503_of_introspection(
    kms: Any, keys: dict[str, str]
) -> None:
    published = KmsPublicKeys(kms, [keys["rsa-encrypt"], keys["ES256"]])
    with pytest.raises(Misconfigured) as caught:
        published.for_introspection()
    assert caught.value.reason.startswith(f"kms GetPublicKey: KMS key {keys['rsa-encrypt']!r}")
    assert "arn:" not in caught.value.description


def test_every_key_error_the_adapter_reads_is_a_configuration_error_of_the_one_mapping() -> None:
    """kms.py splits KMS's codes by what reading a key makes of them; each must also be in
    errors.CONFIGURATION_ERRORS, so that a Sign or a GetPublicKey failing with it is the
    same `misconfigured` 503 wherever it is met (a code added to one list alone would not)."""
    from tokex.adapters import errors, kms

    assert kms._CONFIGURATION_ERRORS | kms._UNREADABLE_KEY_ERRORS <= errors.CONFIGURATION_ERRORS
