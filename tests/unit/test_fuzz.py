"""Property tests: hostile input anywhere a caller reaches gets a typed OAuth error (or
an inactive introspection answer), never another exception (which would be a 500)."""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_introspection import EC_SIGNER, ISSUER, NOW, RSA_SIGNER
from tests.unit.test_sigv4_request import ENDPOINTS, sign, signed_at
from tokex.errors import TokexError
from tokex.evidence.instance_identity import CertificateStore, verify_instance_identity
from tokex.evidence.sigv4_request import verify_sts_request
from tokex.introspection import IntrospectionAudit, Introspector, PublishedKeys
from tokex.token_request import parse_token_request
from tokex.tokens.jws import encode_jwt

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORM = "application/x-www-form-urlencoded"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
printable = st.text(alphabet=string.printable + "é\u2028\x00", max_size=120)


@FAST
@given(body=st.binary(max_size=2048), content_type=st.sampled_from([FORM, None, "text/plain"]))
def test_any_body_parses_or_is_refused(body: bytes, content_type: str | None) -> None:
    try:
        parse_token_request(body, content_type)
    except TokexError as err:
        assert 400 <= err.status < 500 and err.description


@FAST
@given(
    fields=st.dictionaries(
        st.sampled_from(
            ["grant_type", "subject_token_type", "subject_token", "audience", "scope", "x"]
        ),
        printable,
    )
)
def test_any_form_parses_or_is_refused(fields: dict[str, str]) -> None:
    from urllib.parse import urlencode

    try:
        parse_token_request(urlencode(fields).encode(), FORM)
    except TokexError as err:
        assert 400 <= err.status < 500


SIGNED = sign()
SIGNED_AT = signed_at(SIGNED)


@FAST
@given(
    where=st.sampled_from(["method", "url", "body", "headers", "header", "authorization"]),
    value=json_values | printable,
)
def test_any_mutation_of_a_signed_request_is_a_typed_refusal(where: str, value: Any) -> None:
    signed = json.loads(json.dumps(SIGNED))
    if where == "header":
        signed["headers"][str(value)[:30] or "X"] = str(value)
    elif where == "authorization":
        auth = signed["headers"]["Authorization"]
        cut = len(str(value)) % len(auth)
        signed["headers"]["Authorization"] = auth[:cut] + str(value) + auth[cut + 1 :]
    else:
        signed[where] = value
    try:
        verify_sts_request(signed, issuer=ISSUER, endpoints=ENDPOINTS, now=SIGNED_AT)
    except TokexError as err:
        assert err.status == 400
    else:  # only an unchanged-in-effect request may pass
        assert signed["url"] == SIGNED["url"] and signed["body"] == SIGNED["body"]


STORE = CertificateStore.default()


@FAST
@given(
    evidence=st.dictionaries(
        st.sampled_from(["document", "rsa2048", "pkcs7", "signature", "x"]), json_values | printable
    )
)
def test_any_instance_evidence_is_a_typed_refusal(evidence: dict[str, Any]) -> None:
    try:
        verify_instance_identity(evidence, STORE)
    except TokexError as err:
        assert err.status == 400
    else:
        raise AssertionError("random evidence verified")


INTROSPECTOR = Introspector(
    issuer=ISSUER,
    keys=PublishedKeys(lambda: [RSA_SIGNER.public_jwk(), EC_SIGNER.public_jwk()]),
    revocations=None,
    ttl_cap_seconds=3600,
    clock=lambda: NOW,
)
GOOD = encode_jwt(
    {"iss": ISSUER, "sub": "s", "aud": "a", "jti": "j", "iat": NOW, "nbf": NOW, "exp": NOW + 60},
    RSA_SIGNER,
)


@FAST
@given(
    position=st.integers(min_value=0, max_value=len(GOOD) - 1),
    replacement=st.text(alphabet=string.ascii_letters + string.digits + "-_.=+/ ", max_size=3),
)
def test_any_corrupted_token_is_inactive_and_only_inactive(position: int, replacement: str) -> None:
    token = GOOD[:position] + replacement + GOOD[position + 1 :]
    answer = INTROSPECTOR.introspect(token, IntrospectionAudit())
    if token != GOOD and answer["active"]:
        # Base64url has spare bits only in a final character; any other change must fail.
        assert token.split(".")[:2] == GOOD.split(".")[:2]
    else:
        assert answer == {"active": False} or token == GOOD


@FAST
@given(token=st.text(max_size=300))
def test_any_string_introspects_without_error(token: str) -> None:
    assert INTROSPECTOR.introspect(token, IntrospectionAudit()) == {"active": False}
