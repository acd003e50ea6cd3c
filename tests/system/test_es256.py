"""ES256: a KMS ECC_NIST_P256 key signs; the signature is raw R||S (RFC 7518 §3.4), and
two independent libraries verify it using only the JWKS the system serves."""

from __future__ import annotations

import base64
import json
import urllib.request

import jwt
import pytest
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import KeySet

from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tests.system.endpoints import sign, verify


@pytest.fixture(scope="module")
def es256_handler(local_system):
    key_arn = local_system.deployment.key_ids["ECC_NIST_P256"]
    return cold_exchange_handler(local_system, TOKEX_SIGNING_KEY_ID=key_arn)


def test_es256_token_is_raw_r_s_and_verifies_with_pyjwt_and_joserfc(local_system, es256_handler):
    status, _, body = invoke_exchange(es256_handler, sign(local_system))
    assert status == 200, body
    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt"
    signature = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    assert len(signature) == 64  # never the DER that KMS returns

    claims = verify(local_system, token)
    assert 0 < body["expires_in"] <= claims["exp"] - claims["iat"]

    jwks = json.loads(urllib.request.urlopen(local_system.issuer + "/.well-known/jwks.json").read())
    decoded = joserfc_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert decoded.claims["jti"] == claims["jti"]
    assert decoded.header["kid"] == header["kid"]
