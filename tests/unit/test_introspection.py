"""The introspection verifier with in-memory keys: every way a token can fail answers
exactly `{"active": false}`, with its own reason in the audit record; a client sees only
the audiences it serves."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.unit.test_jws import LocalSigner
from tokex.errors import Misconfigured, TemporarilyUnavailable
from tokex.introspection import (
    MAX_TOKEN_CHARS,
    IntrospectionAudit,
    Introspector,
    PublishedKeys,
)
from tokex.shared_load import FAILED_LOAD_HOLD_SECONDS
from tokex.tokens.jws import encode_jwt

ISSUER = "https://auth.example.com"
NOW = 1_800_000_000
PRINCIPAL = "arn:aws:iam::123456789012:role/demo-workload"
RSA_SIGNER = LocalSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
EC_SIGNER = LocalSigner(ec.generate_private_key(ec.SECP256R1()), "ES256")
UNPUBLISHED = LocalSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
INACTIVE = {"active": False}
# What the asking client serves, unless a test says otherwise: the tokens' audience.
SERVED = ("demo-api",)


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER,
        "sub": PRINCIPAL,
        "client_id": PRINCIPAL,
        "aud": "demo-api",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 890,
        "jti": "jti-0123456789abcdef",
        "scope": "demo:read",
        "policy": "demo-workload",
        "aws": {"account": "123456789012"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


class FakeRevocations:
    def __init__(self) -> None:
        self.jtis: set[str] = set()
        self.principals: dict[str, int] = {}
        self.calls = 0

    def revoked(self, *, jti: str, principal: str, issued_at: int) -> str | None:
        self.calls += 1
        if jti in self.jtis:
            return "jti"
        if principal in self.principals and issued_at <= self.principals[principal]:
            return "principal"
        return None


@pytest.fixture
def revocations() -> FakeRevocations:
    return FakeRevocations()


Introspect = Callable[..., tuple[dict[str, Any], str | None]]


@pytest.fixture
def introspect(revocations: FakeRevocations) -> Introspect:
    """(response, audit reason) for a token, asked by a client serving `audiences`."""
    keys = PublishedKeys(lambda: [RSA_SIGNER.public_jwk(), EC_SIGNER.public_jwk()])
    introspector = Introspector(
        issuer=ISSUER, keys=keys, revocations=revocations, ttl_cap_seconds=3600, clock=lambda: NOW
    )

    def run(token: str, audiences: tuple[str, ...] = SERVED) -> tuple[dict[str, Any], str | None]:
        audit = IntrospectionAudit()
        return introspector.introspect(token, audit, audiences=audiences), audit.reason

    return run


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def header(signer: LocalSigner = RSA_SIGNER, **overrides: Any) -> dict[str, Any]:
    return {
        k: v
        for k, v in {"alg": signer.alg, "typ": "at+jwt", "kid": signer.kid, **overrides}.items()
        if v is not None
    }


@pytest.mark.parametrize("signer", [RSA_SIGNER, EC_SIGNER], ids=["RS256", "ES256"])
def test_valid_token_is_active_with_its_claims(introspect, signer):
    token = encode_jwt(claims(), signer)
    response, reason = introspect(token)
    expected = claims()
    assert response == {
        "active": True,
        **expected,
        "token_type": "Bearer",
        "username": expected["sub"],
    }
    assert reason is None


def test_policy_claims_cannot_speak_for_active_or_token_type(introspect):
    forged = claims(active=False, token_type="mac", username="kong-admin")
    response, _ = introspect(encode_jwt(forged, RSA_SIGNER))
    assert response["active"] is True and response["token_type"] == "Bearer"
    assert response["username"] == forged["sub"]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": NOW}, "expired"),  # exp is exclusive (RFC 7519 §4.1.4), no leeway
        ({"exp": NOW - 1, "iat": NOW - 900, "nbf": NOW - 900}, "expired"),
        ({"nbf": NOW + 60, "iat": NOW + 60, "exp": NOW + 900}, "not_yet_valid"),
        ({"iat": NOW + 60}, "issued_in_future"),
        ({"iss": "https://other.example.com"}, "issuer"),
        ({"iss": None}, "issuer"),
        ({"iss": ISSUER + "/"}, "issuer"),
        ({"exp": NOW + 10_000, "iat": NOW - 10, "nbf": NOW - 10}, "lifetime"),  # > TTL cap
        ({"nbf": NOW - 20}, "lifetime"),  # nbf before iat: not what tokex writes
        ({"exp": float(NOW + 100)}, "claim_exp"),
        ({"exp": True}, "claim_exp"),
        ({"iat": str(NOW)}, "claim_iat"),
        ({"nbf": None}, "claim_nbf"),
        ({"jti": None}, "claim_jti"),
        ({"jti": ""}, "claim_jti"),
        ({"sub": None}, "claim_sub"),
        ({"aud": ["demo-api"]}, "claim_aud"),
    ],
)
def test_claims_that_make_a_signed_token_inactive(introspect, overrides, reason):
    response, got = introspect(encode_jwt(claims(**overrides), RSA_SIGNER))
    assert response == INACTIVE
    assert got == reason


def test_small_clock_skew_is_tolerated_for_iat_and_nbf_only(introspect):
    future = claims(iat=NOW + 3, nbf=NOW + 3, exp=NOW + 900)
    assert introspect(encode_jwt(future, RSA_SIGNER))[0]["active"] is True


def test_flipped_signature_byte_is_inactive(introspect):
    token = encode_jwt(claims(), RSA_SIGNER)
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    assert introspect(f"{head}.{payload}.{b64(bytes(raw))}") == (INACTIVE, "bad_signature")
    assert introspect(f"{head}.{payload}.") == (INACTIVE, "base64url")
    assert introspect(f"{head}.{payload}.{b64(bytes(raw[:-3]))}") == (INACTIVE, "bad_signature")


def test_changed_payload_is_inactive(introspect):
    head, _, signature = encode_jwt(claims(), RSA_SIGNER).split(".")
    payload = b64(json.dumps(claims(scope="demo:admin")).encode())
    assert introspect(f"{head}.{payload}.{signature}") == (INACTIVE, "bad_signature")


def test_token_signed_by_an_unpublished_key_is_inactive(introspect):
    assert introspect(encode_jwt(claims(), UNPUBLISHED)) == (INACTIVE, "unknown_kid")
    # ... and one that claims a published kid fails its signature.
    forged = compact(header(), claims(), lambda m: UNPUBLISHED.sign(m))
    assert introspect(forged) == (INACTIVE, "bad_signature")


def test_alg_none_is_inactive(introspect):
    unsigned = compact(header(alg="none"), claims(), lambda m: b"")
    assert introspect(unsigned) == (INACTIVE, "base64url")  # the empty signature
    assert introspect(unsigned + "AA") == (INACTIVE, "alg_mismatch")
    assert introspect(unsigned[: unsigned.rindex(".")]) == (INACTIVE, "not_compact_jws")


def test_hs256_signed_with_the_public_key_is_inactive(introspect):
    """The RS256/HS256 confusion (CVE-2015-9235 family): the public key as an HMAC secret."""
    jwk_secret = json.dumps(RSA_SIGNER.public_jwk()).encode()
    pem = RSA_SIGNER.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (jwk_secret, pem):
        forged = compact(
            header(alg="HS256"),
            claims(),
            lambda m, s=secret: hmac.new(s, m, hashlib.sha256).digest(),
        )
        assert introspect(forged) == (INACTIVE, "alg_mismatch")


def test_header_alg_must_match_the_published_key(introspect):
    # RS256 header naming the EC key's kid; PS256 signed with the RSA key.
    assert introspect(compact(header(EC_SIGNER, alg="RS256"), claims(), RSA_SIGNER.sign))[1] == (
        "alg_mismatch"
    )
    pss = lambda m: RSA_SIGNER.private_key.sign(  # noqa: E731
        m, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
    )
    assert introspect(compact(header(alg="PS256"), claims(), pss)) == (INACTIVE, "alg_mismatch")


def test_es256_der_signature_is_inactive(introspect):
    der = lambda m: EC_SIGNER.private_key.sign(m, ec.ECDSA(hashes.SHA256()))  # noqa: E731
    assert introspect(compact(header(EC_SIGNER), claims(), der)) == (INACTIVE, "bad_signature")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"typ": None}, "header_members"),
        ({"typ": "JWT"}, "typ"),
        ({"typ": "application/at+jwt"}, "typ"),
        ({"kid": None}, "header_members"),
        ({"kid": 7}, "header_types"),
        ({"jku": "https://attacker.example/jwks.json"}, "header_members"),
        ({"crit": ["exp"]}, "header_members"),
        ({"b64": False}, "header_members"),
    ],
)
def test_headers_tokex_never_writes_are_inactive(introspect, overrides, reason):
    token = compact(header(**overrides), claims(), RSA_SIGNER.sign)
    assert introspect(token) == (INACTIVE, reason)


def test_embedded_jwk_is_not_trusted(introspect):
    token = compact(
        header(jwk=UNPUBLISHED.public_jwk(), kid=UNPUBLISHED.kid), claims(), UNPUBLISHED.sign
    )
    assert introspect(token)[0] == INACTIVE


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "empty"),
        ("garbage", "not_compact_jws"),
        ("a.b.c.d", "not_compact_jws"),
        ("....", "not_compact_jws"),
        ("x" * (MAX_TOKEN_CHARS + 1), "too_large"),
        ("e30.e30.", "base64url"),  # empty signature
        ("e30.e30.AA", "header_members"),
        ("e30.\u00e9.AA", "base64url"),
        ("e30=.e30.AA", "base64url"),  # padding is not base64url
        ("e3+/.e30.AA", "base64url"),
        ("é.e30.AA", "base64url"),
        ("W10.e30.AA", "header_json"),  # [] is not an object
        ("bnVsbA.e30.AA", "header_json"),
    ],
)
def test_garbage_is_inactive(introspect, token, reason):
    assert introspect(token) == (INACTIVE, reason)


def test_no_mutation_of_a_valid_token_raises(introspect):
    token = encode_jwt(claims(), EC_SIGNER)
    for position in range(len(token)):
        for replacement in ("", ".", "=", "\u00e9", "\x00", "A", "w", "-"):
            mutated = token[:position] + replacement + token[position + 1 :]
            response, _ = introspect(mutated)
            assert response == INACTIVE or mutated == token


def test_non_canonical_base64url_is_inactive(introspect):
    token = encode_jwt(claims(), EC_SIGNER)  # 64-byte signature: 86 chars, 4 unused bits
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    same_bits = alphabet[alphabet.index(last) ^ 0x01]  # differs only in an unused bit
    assert introspect(token[:-1] + same_bits) == (INACTIVE, "base64url")


def test_duplicate_members_are_inactive(introspect):
    head = f'{{"alg":"RS256","typ":"at+jwt","kid":"{RSA_SIGNER.kid}","kid":"other"}}'
    signing_input = f"{b64(head.encode())}.{b64(json.dumps(claims()).encode())}"
    token = f"{signing_input}.{b64(RSA_SIGNER.sign(signing_input.encode()))}"
    assert introspect(token) == (INACTIVE, "header_json")
    payload = json.dumps(claims())[:-1] + ', "sub": "arn:aws:iam::123456789012:role/admin"}'
    signing_input = f"{b64(json.dumps(header()).encode())}.{b64(payload.encode())}"
    token = f"{signing_input}.{b64(RSA_SIGNER.sign(signing_input.encode()))}"
    assert introspect(token) == (INACTIVE, "payload_json")


def test_revoked_jti_and_principal(introspect, revocations):
    token = encode_jwt(claims(), RSA_SIGNER)
    revocations.jtis.add("jti-0123456789abcdef")
    assert introspect(token) == (INACTIVE, "revoked_jti")
    revocations.jtis.clear()
    revocations.principals[PRINCIPAL] = NOW - 10  # same second as iat: revoked
    assert introspect(token) == (INACTIVE, "revoked_principal")
    later = encode_jwt(claims(iat=NOW - 9, nbf=NOW - 9), RSA_SIGNER)
    assert introspect(later)[0]["active"] is True


def test_revocations_are_read_only_for_otherwise_valid_tokens(introspect, revocations):
    for token in (
        "garbage",
        encode_jwt(claims(exp=NOW), RSA_SIGNER),
        encode_jwt(claims(), UNPUBLISHED),
    ):
        introspect(token)
    assert revocations.calls == 0


def test_unreadable_revocations_or_keys_are_an_outage_not_inactive():
    def down() -> list[dict[str, Any]]:
        raise TemporarilyUnavailable("keys down")

    class DownRevocations:
        def revoked(self, **_: Any) -> str | None:
            raise TemporarilyUnavailable("store down")

    token = encode_jwt(claims(), RSA_SIGNER)
    for keys, revoked in (
        (PublishedKeys(down), None),
        (PublishedKeys(lambda: [RSA_SIGNER.public_jwk()]), DownRevocations()),
    ):
        introspector = Introspector(
            issuer=ISSUER, keys=keys, revocations=revoked, ttl_cap_seconds=3600, clock=lambda: NOW
        )
        with pytest.raises(TemporarilyUnavailable):
            introspector.introspect(token, IntrospectionAudit(), audiences=SERVED)


def test_published_keys_are_cached_and_refreshed_and_a_failure_is_held_briefly():
    calls: list[int] = []
    now = [0.0]
    results: list[Any] = [
        [RSA_SIGNER.public_jwk()],
        TemporarilyUnavailable("down"),
        [EC_SIGNER.public_jwk()],
    ]

    def fetch() -> list[dict[str, Any]]:
        calls.append(1)
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    keys = PublishedKeys(fetch, ttl_seconds=300, clock=lambda: now[0])
    assert keys.get(RSA_SIGNER.kid) is not None and keys.get(EC_SIGNER.kid) is None
    assert len(calls) == 1
    now[0] = 300
    for _ in range(3):  # the failure, then the same failure for its hold: no fetch
        with pytest.raises(TemporarilyUnavailable):
            keys.get(RSA_SIGNER.kid)
    assert len(calls) == 2
    now[0] = 300 + FAILED_LOAD_HOLD_SECONDS
    assert keys.get(EC_SIGNER.kid) is not None and keys.get(RSA_SIGNER.kid) is None
    assert len(calls) == 3


@pytest.mark.parametrize("fails", [False, True], ids=["fetched", "failed"])
def test_requests_at_once_on_no_keys_share_one_fetch_and_its_outcome(fails: bool):
    """Eight requests on a new environment's empty copy: one KMS fetch, its keys for all,
    or its failure for all (a Misconfigured one stays Misconfigured, each request raising
    its own); the next request after a failure's hold fetches again."""
    calls: list[int] = []
    release = threading.Event()

    def fetch() -> list[dict[str, Any]]:
        calls.append(1)
        release.wait(30)
        if fails and len(calls) == 1:
            raise Misconfigured("no key", reason="kms GetPublicKey: AccessDeniedException")
        return [RSA_SIGNER.public_jwk()]

    now = [0.0]
    keys = PublishedKeys(fetch, clock=lambda: now[0])
    outcomes: list[Any] = []
    asking = threading.Semaphore(0)

    def ask() -> None:
        asking.release()
        try:
            found = keys.get(RSA_SIGNER.kid)
            outcomes.append(found[0] if found else None)
        except TemporarilyUnavailable as err:
            outcomes.append(err)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    threads[0].start()
    while not calls:  # the first is fetching ...
        time.sleep(0.001)
    for thread in threads[1:]:
        thread.start()
    for _ in threads:  # ... while the others ask
        asking.acquire()
    time.sleep(0.2)  # for them to reach the lock
    release.set()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1 and len(outcomes) == 8
    if not fails:
        assert outcomes == ["RS256"] * 8
        return
    assert all(type(err) is Misconfigured for err in outcomes)
    assert {err.reason for err in outcomes} == {"kms GetPublicKey: AccessDeniedException"}
    assert len({id(err) for err in outcomes}) == 8
    now[0] += FAILED_LOAD_HOLD_SECONDS
    assert keys.get(RSA_SIGNER.kid) is not None and len(calls) == 2


def test_published_keys_ignore_algorithms_tokex_never_signs_with():
    ps256 = {**RSA_SIGNER.public_jwk(), "alg": "PS256"}
    keys = PublishedKeys(lambda: [ps256])
    assert keys.get(RSA_SIGNER.kid) is None


def test_audit_names_the_token_but_never_holds_it(introspect):
    token = encode_jwt(claims(), RSA_SIGNER)
    keys = PublishedKeys(lambda: [RSA_SIGNER.public_jwk()])
    audit = IntrospectionAudit()
    Introspector(
        issuer=ISSUER, keys=keys, revocations=None, ttl_cap_seconds=3600, clock=lambda: NOW
    ).introspect(token, audit, audiences=SERVED)
    assert (audit.subject, audit.audience, audit.jti, audit.kid) == (
        PRINCIPAL,
        "demo-api",
        "jti-0123456789abcdef",
        RSA_SIGNER.kid,
    )
    assert token not in repr(audit)


# --- RFC 7662 §4: a client sees only the audiences it serves ------------------------------


def test_a_token_of_an_audience_the_client_does_not_serve_is_inactive(introspect):
    billing = encode_jwt(claims(aud="billing-api"), RSA_SIGNER)
    assert introspect(billing) == (INACTIVE, "audience_not_served")
    # The same token, asked by a client that serves its audience (among others).
    assert introspect(billing, ("demo-api", "billing-api"))[0]["active"] is True
    # Exact match only: no prefix, case or substring of a served audience.
    for near in ("demo-api/", "Demo-api", "demo", "demo-api2", "xdemo-api"):
        assert introspect(encode_jwt(claims(aud=near), RSA_SIGNER)) == (
            INACTIVE,
            "audience_not_served",
        )


def test_a_client_serving_no_audience_sees_every_token_inactive(introspect):
    """Clients registered before audiences existed: fail closed until updated."""
    for signer in (RSA_SIGNER, EC_SIGNER):
        assert introspect(encode_jwt(claims(), signer), ()) == (INACTIVE, "audience_not_served")


def test_the_audience_is_tested_only_once_the_token_is_verified(introspect):
    """A forged, expired or foreign-issuer token of another audience is refused for what is
    wrong with it: the audience rule never speaks for an unverified claim."""
    other = {"aud": "billing-api"}
    forged = compact(header(), claims(**other), lambda m: UNPUBLISHED.sign(m))
    assert introspect(forged) == (INACTIVE, "bad_signature")
    assert introspect(encode_jwt(claims(**other), UNPUBLISHED)) == (INACTIVE, "unknown_kid")
    assert introspect(encode_jwt(claims(exp=NOW, **other), RSA_SIGNER)) == (INACTIVE, "expired")
    foreign = claims(iss="https://other.example.com", **other)
    assert introspect(encode_jwt(foreign, RSA_SIGNER)) == (INACTIVE, "issuer")


def test_a_token_the_client_may_not_see_costs_no_revocation_read(introspect, revocations):
    introspect(encode_jwt(claims(aud="billing-api"), RSA_SIGNER))
    assert revocations.calls == 0
    revocations.jtis.add("jti-0123456789abcdef")  # revoked *and* served: revoked
    assert introspect(encode_jwt(claims(), RSA_SIGNER)) == (INACTIVE, "revoked_jti")


def test_the_audit_names_the_audience_that_was_not_served():
    keys = PublishedKeys(lambda: [RSA_SIGNER.public_jwk()])
    introspector = Introspector(
        issuer=ISSUER, keys=keys, revocations=None, ttl_cap_seconds=3600, clock=lambda: NOW
    )
    audit = IntrospectionAudit()
    token = encode_jwt(claims(aud="billing-api"), RSA_SIGNER)
    assert introspector.introspect(token, audit, audiences=SERVED) == INACTIVE
    assert (audit.reason, audit.audience, audit.subject) == (
        "audience_not_served",
        "billing-api",
        PRINCIPAL,
    )
    with pytest.raises(TypeError):  # no default that could serve every audience
        introspector.introspect(token, IntrospectionAudit())  # type: ignore[call-arg]
    with pytest.raises(TypeError):  # "billing-api-v2" would contain "billing-api"
        introspector.introspect(token, IntrospectionAudit(), audiences="billing-api-v2")
