"""Property tests: hostile input anywhere a caller reaches gets a typed OAuth error (or
an inactive introspection answer), never another exception (which would be a 5xx) and
never a token.

Each target is a strategy of hostile inputs and a probe that says what became of one
input. The suite runs every target with the `suite` profile (tests/conftest.py);
`python -m benchmarks.fuzz` runs the same targets with the `fuzz` profile (10,000 inputs
each) plus two targets through the real Lambda handlers, and counts the outcomes.
"""

from __future__ import annotations

import base64
import enum
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_instance_identity import SAMPLE_NAMES, VARIANTS, load, variant_of
from tests.unit.test_introspection import EC_SIGNER, ISSUER, NOW, RSA_SIGNER
from tests.unit.test_sigv4_request import ENDPOINTS, sign, signed_at
from tokex import base64url
from tokex.errors import TokexError
from tokex.evidence.instance_identity import CertificateStore, verify_instance_identity
from tokex.evidence.sigv4_request import (
    decode_b64url_json,
    decode_subject_token,
    verify_sts_request,
)
from tokex.introspection import IntrospectionAudit, Introspector, PublishedKeys
from tokex.token_request import (
    JWT_TOKEN_TYPE,
    KNOWN_PARAMETERS,
    MAX_INSTANCE_EVIDENCE_CHARS,
    SIGV4_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    parse_token_request,
)
from tokex.tokens.jws import encode_jwt


class Outcome(enum.Enum):
    REFUSED = "refused"  # a typed 4xx, or introspection's `{"active": false}`
    ACCEPTED = "accepted"  # parsed or verified: allowed only where the probe says why


class TokenIssued(AssertionError):
    """Hostile input bought a token (or an `active: true` answer it has no right to)."""


class ServerError(AssertionError):
    """Hostile input got a 5xx: a TokexError of that status, or an untyped exception."""


@dataclass(frozen=True)
class FuzzTarget:
    name: str
    strategy: st.SearchStrategy[Any]
    # Says what became of one input; raises AssertionError (TokenIssued, ServerError or a
    # broken property) when the answer is wrong. Untyped exceptions propagate: in a
    # handler they become the "internal error" 503.
    probe: Callable[[Any], Outcome]


def typed_refusal(err: TokexError) -> Outcome:
    if err.status >= 500:
        raise ServerError(f"{err.status} {err.error}: {err.description}")
    assert 400 <= err.status < 500 and err.error and err.description
    return Outcome.REFUSED


FORM = "application/x-www-form-urlencoded"
B64URL = string.ascii_letters + string.digits + "-_"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
printable = st.text(alphabet=string.printable + "é\u2028\x00", max_size=120)
content_types = st.sampled_from([FORM, f"{FORM}; charset=utf-8", None, "text/plain"]) | printable


def mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """`original` after one to three byte edits: flip, insert, delete, replace, truncate."""
    edit = st.tuples(
        st.sampled_from(("flip", "insert", "delete", "replace", "truncate")),
        st.integers(min_value=0, max_value=max(len(original) - 1, 0)),
        st.binary(min_size=1, max_size=8),
    )

    def apply(edits: list[tuple[str, int, bytes]]) -> bytes:
        data = original
        for kind, at, chunk in edits:
            at = min(at, max(len(data) - 1, 0))
            if kind == "flip":
                if data:
                    data = data[:at] + bytes([data[at] ^ (chunk[0] or 1)]) + data[at + 1 :]
            elif kind == "insert":
                data = data[:at] + chunk + data[at:]
            elif kind == "delete":
                data = data[:at] + data[at + len(chunk) :]
            elif kind == "replace":
                data = data[:at] + chunk + data[at + len(chunk) :]
            else:
                data = data[:at]
        return data

    return st.lists(edit, min_size=1, max_size=3).map(apply)


# --- POST /token form ------------------------------------------------------------------


def probe_form_body(case: tuple[bytes, str | None]) -> Outcome:
    body, content_type = case
    try:
        parse_token_request(body, content_type)
    except TokexError as err:
        return typed_refusal(err)
    return Outcome.ACCEPTED  # a well-formed form: what it proves is evidence's business


SIGNED = sign()
SIGNED_AT = signed_at(SIGNED)
SUBJECT_TOKEN = base64url.encode_json(SIGNED)
# Every parameter the exchange reads, and one it refuses as unsupported.
PARAMETERS = [*sorted(KNOWN_PARAMETERS), "resource"]
# Real values next to random ones, so that inputs get past the first checks.
form_values = (
    st.sampled_from(
        [TOKEN_EXCHANGE_GRANT, SIGV4_TOKEN_TYPE, JWT_TOKEN_TYPE, SUBJECT_TOKEN, "demo-api", ""]
    )
    | st.sampled_from(["demo:read", "demo:read demo:write", "a" * 257, "x y\tz"])
    | printable
)
VALID_FORM = {
    "grant_type": TOKEN_EXCHANGE_GRANT,
    "subject_token_type": SIGV4_TOKEN_TYPE,
    "subject_token": SUBJECT_TOKEN,
    "audience": "demo-api",
}
form_fields = st.one_of(
    st.lists(
        st.tuples(st.sampled_from(PARAMETERS) | st.text(max_size=12), form_values), max_size=24
    ),
    # A valid form with a few parameters replaced or added reaches the later checks.
    st.dictionaries(st.sampled_from(PARAMETERS), form_values, max_size=3).map(
        lambda changes: list({**VALID_FORM, **changes}.items())
    ),
)


def probe_form_fields(fields: list[tuple[str, str]]) -> Outcome:
    return probe_form_body((urlencode(fields).encode(), FORM))


# --- subject_token and the signed request inside it -------------------------------------

signed_request_shapes = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["POST", "GET"]) | printable,
        "url": st.sampled_from(["https://sts.us-east-1.amazonaws.com/", "https://x/"]) | printable,
        "headers": st.dictionaries(st.sampled_from(list(SIGNED["headers"])), printable)
        | json_values,
        "body": st.just(SIGNED["body"]) | json_values,
    }
)
subject_tokens = st.one_of(
    st.text(alphabet=B64URL + "=+/ .%", max_size=400),
    st.text(max_size=200),
    json_values.map(base64url.encode_json),
    signed_request_shapes.map(base64url.encode_json),
    mutations(SUBJECT_TOKEN.encode()).map(lambda raw: raw.decode("latin-1")),
)


def probe_subject_token(token: str) -> Outcome:
    try:
        signed = decode_subject_token(token)
        verify_sts_request(
            signed, issuer=ISSUER, endpoints=ENDPOINTS, now=SIGNED_AT, audience="demo-api"
        )
    except TokexError as err:
        return typed_refusal(err)
    # Only a spelling of the one real signed request passes the rules; STS then checks
    # its signature, which no edit of the signed parts survives.
    assert signed["url"] == SIGNED["url"] and signed["body"] == SIGNED["body"]
    return Outcome.ACCEPTED


signed_request_mutations = st.tuples(
    st.sampled_from(["method", "url", "body", "headers", "header", "authorization"]),
    json_values | printable,
)


def probe_signed_request(case: tuple[str, Any]) -> Outcome:
    where, value = case
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
        return typed_refusal(err)
    # Only an unchanged-in-effect request may pass.
    assert signed["url"] == SIGNED["url"] and signed["body"] == SIGNED["body"]
    return Outcome.ACCEPTED


# --- IMDS evidence (aws_instance_identity) ----------------------------------------------

STORE = CertificateStore.default()
evidence_objects = st.dictionaries(
    st.sampled_from(["document", *VARIANTS, "x"]), json_values | printable
)
# What a caller controls: the parameter's text, or the evidence object inside it.
evidence_parameters = st.one_of(
    evidence_objects,
    evidence_objects.map(base64url.encode_json),
    st.text(alphabet=B64URL + "=", max_size=300),
)


def probe_evidence(evidence: dict[str, Any] | str) -> Outcome:
    try:
        if isinstance(evidence, str):
            evidence = decode_b64url_json(
                evidence, name="aws_instance_identity", max_len=MAX_INSTANCE_EVIDENCE_CHARS
            )
        verify_instance_identity(evidence, STORE)
    except TokexError as err:
        return typed_refusal(err)
    raise AssertionError("random evidence verified")


SAMPLES = {name: load(name) for name in SAMPLE_NAMES}


def sample_signature(name: str) -> bytes:
    evidence = SAMPLES[name]
    return base64.b64decode("".join(evidence[variant_of(evidence)].split()))


# Real AWS signatures (PKCS #7 SignedData, BER, and raw RSA) with edits: the parser meets
# almost-valid structures that random bytes never reach.
edited_signatures = st.sampled_from(SAMPLE_NAMES).flatmap(
    lambda name: st.tuples(st.just(name), mutations(sample_signature(name)))
)


def probe_edited_signature(case: tuple[str, bytes]) -> Outcome:
    name, raw = case
    original = SAMPLES[name]
    variant = variant_of(original)
    evidence = {"document": original["document"], variant: base64.b64encode(raw).decode()}
    try:
        identity = verify_instance_identity(evidence, STORE)
    except TokexError as err:
        return typed_refusal(err)
    # The certificate bag and unsigned parts are never read (evidence/pkcs7.py): an edit
    # there still verifies, and can only describe the original instance.
    assert identity == verify_instance_identity(original, STORE)
    return Outcome.ACCEPTED


edited_documents = st.sampled_from(SAMPLE_NAMES).flatmap(
    lambda name: st.tuples(st.just(name), mutations(SAMPLES[name]["document"].encode()))
)


def probe_edited_document(case: tuple[str, bytes]) -> Outcome:
    name, raw = case
    original = SAMPLES[name]
    evidence = {**original, "document": raw.decode("utf-8", errors="replace")}
    try:
        verify_instance_identity(evidence, STORE)
    except TokexError as err:
        return typed_refusal(err)
    assert evidence["document"] == original["document"], "an edited document verified"
    return Outcome.ACCEPTED


# --- introspection ----------------------------------------------------------------------

INTROSPECTOR = Introspector(
    issuer=ISSUER,
    keys=PublishedKeys(lambda: [RSA_SIGNER.public_jwk(), EC_SIGNER.public_jwk()]),
    revocations=None,
    ttl_cap_seconds=3600,
    clock=lambda: NOW,
)
# The audiences the asking client serves: the good token's, and one the fuzzer also picks.
SERVED = ("a", "demo-api")
GOOD_CLAIMS = {
    "iss": ISSUER,
    "sub": "s",
    "aud": "a",
    "jti": "j",
    "iat": NOW,
    "nbf": NOW,
    "exp": NOW + 60,
}
GOOD = encode_jwt(GOOD_CLAIMS, RSA_SIGNER)
corrupted_tokens = st.tuples(
    st.integers(min_value=0, max_value=len(GOOD) - 1),
    st.text(alphabet=B64URL + ".=+/ ", max_size=3),
)


def probe_corrupted_token(case: tuple[int, str]) -> Outcome:
    position, replacement = case
    token = GOOD[:position] + replacement + GOOD[position + 1 :]
    answer = INTROSPECTOR.introspect(token, IntrospectionAudit(), audiences=SERVED)
    if not answer["active"]:
        assert answer == {"active": False}
        return Outcome.REFUSED
    # Base64url has spare bits only in a final character, and decoding is canonical:
    # only the unchanged token may be active.
    if token != GOOD:
        raise TokenIssued(f"corrupted token is active: {token!r}")
    return Outcome.ACCEPTED


def probe_any_string(token: str) -> Outcome:
    answer = INTROSPECTOR.introspect(token, IntrospectionAudit(), audiences=SERVED)
    if answer != {"active": False}:
        raise TokenIssued(f"random string is active: {token!r}")
    return Outcome.REFUSED


CLAIM_NAMES = ["iss", "sub", "aud", "jti", "iat", "nbf", "exp", "scope", "active", "token_type"]
claim_values = (
    st.sampled_from([ISSUER, "demo-api", "s", "", True, False])
    | st.integers(min_value=NOW - 4000, max_value=NOW + 4000)
    | json_values
)
# Tokens our own published key signed, with any claims: the signature holds, so every
# rule about the claims has to. Small enough to sign (tokens/jws.py caps the input).
signed_claims = st.one_of(
    st.dictionaries(st.sampled_from(CLAIM_NAMES) | st.text(max_size=8), claim_values, max_size=12),
    # Valid claims with a few replaced: each rule meets values just either side of it.
    st.dictionaries(st.sampled_from(CLAIM_NAMES), claim_values, max_size=3).map(
        lambda changes: {**GOOD_CLAIMS, **changes}
    ),
).filter(lambda claims: len(json.dumps(claims, separators=(",", ":"))) < 2800)


# Which audiences the asking client serves, none included (a client registered before
# audiences existed: fail closed).
served_audiences = st.sampled_from([SERVED, SERVED[:1], ()])


def probe_signed_claims(case: tuple[dict[str, Any], tuple[str, ...]]) -> Outcome:
    claims, served = case
    token = encode_jwt(claims, RSA_SIGNER)
    answer = INTROSPECTOR.introspect(token, IntrospectionAudit(), audiences=served)
    if not answer["active"]:
        assert answer == {"active": False}
        return Outcome.REFUSED
    assert answer["active"] is True and answer["token_type"] == "Bearer"
    assert claims["iss"] == ISSUER and all(
        isinstance(claims[name], str) and claims[name] for name in ("sub", "aud", "jti")
    )
    assert claims["aud"] in served  # RFC 7662 §4: only the client's own audiences
    iat, nbf, exp = (claims[name] for name in ("iat", "nbf", "exp"))
    assert all(type(value) is int for value in (iat, nbf, exp))
    assert iat <= nbf < exp and exp - iat <= 3600 and exp > NOW
    return Outcome.ACCEPTED


TARGETS = [
    FuzzTarget("form-body", st.tuples(st.binary(max_size=2048), content_types), probe_form_body),
    FuzzTarget("form-fields", form_fields, probe_form_fields),
    FuzzTarget("subject-token", subject_tokens, probe_subject_token),
    FuzzTarget("signed-request", signed_request_mutations, probe_signed_request),
    FuzzTarget("imds-evidence", evidence_parameters, probe_evidence),
    FuzzTarget("imds-signature", edited_signatures, probe_edited_signature),
    FuzzTarget("imds-document", edited_documents, probe_edited_document),
    FuzzTarget("introspection-corrupted", corrupted_tokens, probe_corrupted_token),
    FuzzTarget("introspection-string", st.text(max_size=300), probe_any_string),
    FuzzTarget(
        "introspection-claims", st.tuples(signed_claims, served_audiences), probe_signed_claims
    ),
]


def run_target(target: FuzzTarget, observe: Callable[[Outcome], None] = lambda _: None) -> None:
    """Run `target` under the loaded profile; `observe` sees each input's outcome."""

    def check(value: Any) -> None:
        observe(target.probe(value))

    given(target.strategy)(check)()


@pytest.mark.parametrize("target", TARGETS, ids=[target.name for target in TARGETS])
def test_hostile_input_gets_a_typed_answer_and_no_token(target: FuzzTarget) -> None:
    run_target(target)


def test_every_target_reaches_past_the_first_check() -> None:
    """The strategies are worth their inputs only if some get deep: each target that may
    accept anything has an input that is accepted."""
    assert (
        probe_form_fields(
            [
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("subject_token_type", SIGV4_TOKEN_TYPE),
                ("subject_token", SUBJECT_TOKEN),
                ("audience", "demo-api"),
            ]
        )
        == Outcome.ACCEPTED
    )
    assert probe_subject_token(SUBJECT_TOKEN) == Outcome.ACCEPTED
    assert probe_signed_request(("method", "POST")) == Outcome.ACCEPTED
    name = SAMPLE_NAMES[0]
    assert probe_edited_signature((name, sample_signature(name))) == Outcome.ACCEPTED
    assert probe_edited_document((name, SAMPLES[name]["document"].encode())) == Outcome.ACCEPTED
    assert probe_corrupted_token((0, GOOD[0])) == Outcome.ACCEPTED
    assert probe_signed_claims((dict(GOOD_CLAIMS), SERVED)) == Outcome.ACCEPTED
