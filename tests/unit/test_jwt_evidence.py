"""The rules of JWT evidence (evidence/jwt_evidence.py): every attack refused by the rule
meant for it (type and audit reason), offline ones before any key lookup, and both kinds'
happy paths.

Tokens are real: RSA 2048 and EC P-384 keys made here, headers and payloads written byte
for byte and signed with pyjwt's algorithm objects, so a test can forge what no honest
encoder would produce. The issuers' keys come from an in-memory `IssuerKeys`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

from tokex import base64url
from tokex.errors import InvalidGrant, InvalidRequest, TemporarilyUnavailable, TokexError
from tokex.evidence.jwt_claims import STS_NAMESPACE
from tokex.evidence.jwt_evidence import (
    CLOCK_SKEW_SECONDS,
    MAX_LIFETIME_SECONDS,
    MAX_SUBJECT_JWT_CHARS,
    VerifiedJwt,
    is_compact_jws,
    verify_jwt_evidence,
)
from tokex.evidence.trusted_issuers import AWS_OIF, EKS, TrustedIssuer, TrustedIssuers

ACCOUNT = "123456789012"
OIF_ISSUER = "https://abc123.tokens.sts.global.api.aws"
EKS_ISSUER = "https://oidc.eks.us-west-2.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
# The exchange's own issuer URL: the audience JWT evidence must be minted for.
AUDIENCE = "https://tokex.example.com"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/worker"
NOW = 1_750_000_000
JTI = "5b1c1a0e-0bd7-4c39-9f1a-7d0f1c3e2a11"
OIF = TrustedIssuer(AWS_OIF, OIF_ISSUER, ACCOUNT)
EKS_CLUSTER = TrustedIssuer(EKS, EKS_ISSUER, ACCOUNT, "us-west-2", "prod")
ISSUERS = TrustedIssuers((OIF, EKS_CLUSTER))

OIF_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OIF_EC = ec.generate_private_key(ec.SECP384R1())
EKS_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
DROP = object()  # a claim or header member to leave out


def public_jwk(private_key: Any, alg: str, kid: str) -> jwt.PyJWK:
    algorithm = get_default_algorithms()[alg]
    data = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    return jwt.PyJWK({**data, "kid": kid, "use": "sig"}, alg)


class FakeIssuerKeys:
    """What each issuer publishes, by kid; counts the lookups."""

    def __init__(self) -> None:
        self.published = {
            OIF_ISSUER: {
                "oif-rsa": public_jwk(OIF_RSA, "RS256", "oif-rsa"),
                "oif-ec": public_jwk(OIF_EC, "ES384", "oif-ec"),
                "shared-kid": public_jwk(OIF_RSA, "RS256", "shared-kid"),
            },
            EKS_ISSUER: {
                "eks-1": public_jwk(EKS_RSA, "RS256", "eks-1"),
                "shared-kid": public_jwk(EKS_RSA, "RS256", "shared-kid"),
            },
        }
        self.lookups: list[tuple[str, str]] = []

    def key(self, issuer: TrustedIssuer, kid: str) -> jwt.PyJWK | None:
        self.lookups.append((issuer.issuer, kid))
        return self.published.get(issuer.issuer, {}).get(kid)


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = {**base, **changes}
    return {name: value for name, value in result.items() if value is not DROP}


def segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64url.encode(raw)


def forge(header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes, key: Any) -> str:
    """A compact JWS signed with `key` (a private key; bytes: an HMAC secret; None: no
    signature) under the header's `alg`."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    if key is None:
        signature = b""
    elif isinstance(key, bytes):
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    else:
        # A header without an alg pyjwt knows is still signed (RS256): only the rules differ.
        alg = header.get("alg") if isinstance(header, dict) else None
        algorithms = get_default_algorithms()
        algorithm = algorithms.get(alg if isinstance(alg, str) else "", algorithms["RS256"])
        signature = algorithm.sign(signing_input.encode(), key)
    return f"{signing_input}.{base64url.encode(signature)}"


def oif_claims(sts: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """An AWS outbound identity federation token's claims (IAM User Guide,
    "Understanding token claims"), for a Lambda function's role session."""
    base = {
        "iss": OIF_ISSUER,
        "sub": ROLE,
        "aud": AUDIENCE,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 290,
        "jti": JTI,
        STS_NAMESPACE: changed(
            {
                "aws_account": ACCOUNT,
                "principal_id": ROLE,
                "source_region": "us-east-1",
                "lambda_source_function_arn": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:fn",
            },
            sts or {},
        ),
    }
    return changed(base, changes)


def eks_claims(**changes: Any) -> dict[str, Any]:
    """A projected service-account token of an EKS pod."""
    base = {
        "iss": EKS_ISSUER,
        "sub": "system:serviceaccount:payments:api",
        "aud": [AUDIENCE],
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 3590,
        "kubernetes.io": {
            "namespace": "payments",
            "serviceaccount": {"name": "api", "uid": "2f0e8f3c-0000-4000-8000-000000000001"},
            "pod": {"name": "api-7d4b9c-xk2lp", "uid": "2f0e8f3c-0000-4000-8000-000000000002"},
        },
    }
    return changed(base, changes)


def oif_token(claims: dict[str, Any] | None = None, key: Any = OIF_RSA, **header: Any) -> str:
    base = {"alg": "RS256", "kid": "oif-rsa", "typ": "JWT"}
    return forge(changed(base, header), oif_claims() if claims is None else claims, key)


def eks_token(claims: dict[str, Any] | None = None, key: Any = EKS_RSA, **header: Any) -> str:
    base = {"alg": "RS256", "kid": "eks-1"}
    return forge(changed(base, header), eks_claims() if claims is None else claims, key)


def verify(token: str, keys: FakeIssuerKeys | None = None) -> VerifiedJwt:
    return verify_jwt_evidence(
        token, issuers=ISSUERS, keys=keys or FakeIssuerKeys(), audience=AUDIENCE, now=NOW
    )


def replace_segment(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


def with_raw_claims(text: str) -> str:
    """An OIF token whose payload is `text` byte for byte (validly signed)."""
    header = {"alg": "RS256", "kid": "oif-rsa", "typ": "JWT"}
    return forge(header, text.encode(), OIF_RSA)


def with_header(raw: bytes) -> str:
    """An OIF token whose header is `raw` byte for byte (signed with RS256)."""
    return forge(raw, oif_claims(), OIF_RSA)


def pem_of(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def case(
    name: str,
    make_token: Callable[[], str],
    reason: str,
    *,
    error: type[TokexError] = InvalidGrant,
    looked_up_key: bool = False,
) -> Any:
    """One refusal: the token, the error and reason expected, and whether the issuer's
    keys may be consulted before it (only for the rules after the key lookup)."""
    return pytest.param(make_token, error, reason, looked_up_key, id=name)


def shape(name: str, make_token: Callable[[], str]) -> Any:
    return case(name, make_token, "subject_token", error=InvalidRequest)


def after_key(name: str, make_token: Callable[[], str], reason: str) -> Any:
    return case(name, make_token, reason, looked_up_key=True)


HEADER_KEY_SOURCES: dict[str, Any] = {
    "jku": "https://attacker.example/jwks.json",
    "x5u": "https://attacker.example/cert.pem",
    "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
    "x5c": ["MIIB"],
}
HEADER_UNSUPPORTED: dict[str, Any] = {"crit": ["exp"], "b64": False, "zip": "DEF", "enc": "A256GCM"}
OTHER_AUDIENCE = "https://other.example.com"
MAX_OIF = MAX_LIFETIME_SECONDS[AWS_OIF]
MAX_EKS = MAX_LIFETIME_SECONDS[EKS]
SKEW = CLOCK_SKEW_SECONDS

REFUSALS = [
    # --- size and shape: invalid_request, like the form's other shape errors
    shape("oversized", lambda: "a" * (MAX_SUBJECT_JWT_CHARS + 1)),
    shape("oversized-jws", lambda: oif_token() + "A" * MAX_SUBJECT_JWT_CHARS),
    shape("jwe-five-segments", lambda: "eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVy.dGFn"),
    shape("two-segments", lambda: "abc.def"),
    shape("padding", lambda: oif_token() + "="),
    shape("base64-not-url", lambda: replace_segment(oif_token(), 1, "e30+")),
    shape("whitespace", lambda: " " + oif_token()),
    # --- the header
    case(
        "header-non-canonical-base64", lambda: replace_segment(oif_token(), 0, "e31"), "jwt_header"
    ),
    case("header-truncated-json", lambda: replace_segment(oif_token(), 0, "eyJ"), "jwt_header"),
    case("header-not-utf8", lambda: with_header(b"\xff\xfe{}"), "jwt_header"),
    case("header-a-list", lambda: with_header(b'["RS256"]'), "jwt_header"),
    case("header-a-string", lambda: with_header(b'"RS256"'), "jwt_header"),
    case(
        "header-repeated-alg",
        lambda: with_header(b'{"alg":"none","alg":"RS256","kid":"oif-rsa"}'),
        "jwt_header",
    ),
    case("alg-none", lambda: oif_token(alg="none", key=None), "jwt_alg"),
    case("alg-None-capitalised", lambda: oif_token(alg="None", key=None), "jwt_alg"),
    case("alg-missing", lambda: oif_token(alg=DROP), "jwt_alg"),
    case("alg-a-list", lambda: oif_token(alg=["RS256"]), "jwt_alg"),
    case(
        "hs256-with-the-rsa-public-key-as-secret",
        lambda: oif_token(alg="HS256", key=pem_of(OIF_RSA)),
        "jwt_alg",
    ),
    case("alg-ps256", lambda: oif_token(alg="PS256"), "jwt_alg"),
    case("es384-for-an-eks-issuer", lambda: eks_token(alg="ES384", key=OIF_EC), "jwt_alg"),
    case("kid-missing", lambda: oif_token(kid=DROP), "jwt_kid"),
    case("kid-empty", lambda: oif_token(kid=""), "jwt_kid"),
    case("kid-a-number", lambda: oif_token(kid=7), "jwt_kid"),
    case("kid-too-long", lambda: oif_token(kid="k" * 257), "jwt_kid"),
    *[
        case(f"header-{name}", partial(oif_token, **{name: value}), f"jwt_header:{name}")
        for name, value in (HEADER_KEY_SOURCES | HEADER_UNSUPPORTED).items()
    ],
    case("nested-jwt-cty", lambda: oif_token(cty="JWT"), "jwt_header:cty"),
    case("tokex-access-token-typ", lambda: oif_token(typ="at+jwt"), "jwt_header:typ"),
    case("typ-jose", lambda: oif_token(typ="JOSE"), "jwt_header:typ"),
    case("typ-a-number", lambda: oif_token(typ=1), "jwt_header:typ"),
    # --- the payload and the issuer
    case("payload-not-json", lambda: with_raw_claims("not json"), "jwt_payload"),
    case("payload-a-list", lambda: with_raw_claims(f'["{OIF_ISSUER}"]'), "jwt_payload"),
    case(
        "payload-repeated-iss",
        lambda: with_raw_claims(f'{{"iss":"{AUDIENCE}","iss":"{OIF_ISSUER}"}}'),
        "jwt_payload",
    ),
    case(
        "payload-nan", lambda: with_raw_claims(f'{{"iss":"{OIF_ISSUER}","exp":NaN}}'), "jwt_payload"
    ),
    case(
        "payload-5000-digit-number",
        lambda: with_raw_claims(f'{{"iss":"{OIF_ISSUER}","exp":{"9" * 5000}}}'),
        "jwt_payload",
    ),
    case(
        "payload-nested-3000-deep",
        lambda: with_raw_claims('{"a":' + "[" * 3000 + "]" * 3000 + "}"),
        "jwt_payload",
    ),
    case(
        "untrusted-issuer",
        lambda: oif_token(oif_claims(iss="https://attacker.example")),
        "jwt_issuer",
    ),
    case(
        "issuer-trailing-slash", lambda: oif_token(oif_claims(iss=OIF_ISSUER + "/")), "jwt_issuer"
    ),
    case("issuer-a-list", lambda: oif_token(oif_claims(iss=[OIF_ISSUER])), "jwt_issuer"),
    case("issuer-missing", lambda: oif_token(oif_claims(iss=DROP)), "jwt_issuer"),
    case(
        "tokex-access-token-iss",
        lambda: oif_token(oif_claims(iss=AUDIENCE), typ=DROP),
        "jwt_issuer",
    ),
    # --- the audience
    case("wrong-aud", lambda: oif_token(oif_claims(aud=OTHER_AUDIENCE)), "jwt_audience"),
    case("missing-aud", lambda: oif_token(oif_claims(aud=DROP)), "jwt_audience"),
    case("empty-aud-list", lambda: oif_token(oif_claims(aud=[])), "jwt_audience"),
    case(
        "multi-valued-aud-containing-ours",
        lambda: oif_token(oif_claims(aud=[AUDIENCE, OTHER_AUDIENCE])),
        "jwt_audience",
    ),
    case("aud-ours-twice", lambda: oif_token(oif_claims(aud=[AUDIENCE, AUDIENCE])), "jwt_audience"),
    case("aud-with-a-suffix", lambda: oif_token(oif_claims(aud=AUDIENCE + "/")), "jwt_audience"),
    case(
        "eks-token-for-another-audience",
        lambda: eks_token(eks_claims(aud=["sts.amazonaws.com"])),
        "jwt_audience",
    ),
    # --- the times
    case(
        "expired",
        lambda: oif_token(oif_claims(iat=NOW - 400, nbf=NOW - 400, exp=NOW - SKEW)),
        "jwt_expired",
    ),
    case(
        "nbf-in-the-future", lambda: oif_token(oif_claims(nbf=NOW + SKEW + 1)), "jwt_not_yet_valid"
    ),
    case(
        "iat-in-the-future",
        lambda: oif_token(oif_claims(iat=NOW + SKEW + 1, nbf=DROP)),
        "jwt_iat",
    ),
    case(
        "oif-lifetime-over-an-hour",
        lambda: oif_token(oif_claims(iat=NOW, nbf=NOW, exp=NOW + MAX_OIF + 1)),
        "jwt_lifetime",
    ),
    case(
        "oif-lifetime-from-nbf",
        lambda: oif_token(oif_claims(iat=NOW, nbf=NOW - 3000, exp=NOW + 3000)),
        "jwt_lifetime",
    ),
    case(
        "eks-lifetime-over-a-day",
        lambda: eks_token(eks_claims(iat=NOW, nbf=NOW, exp=NOW + MAX_EKS + 1)),
        "jwt_lifetime",
    ),
    case(
        "exp-equal-to-iat",
        lambda: oif_token(oif_claims(iat=NOW + 10, nbf=DROP, exp=NOW + 10)),
        "jwt_lifetime",
    ),
    case("exp-missing", lambda: oif_token(oif_claims(exp=DROP)), "jwt_claims:exp"),
    case("iat-missing", lambda: oif_token(oif_claims(iat=DROP)), "jwt_claims:iat"),
    case("exp-a-string", lambda: oif_token(oif_claims(exp=str(NOW + 290))), "jwt_claims:exp"),
    case("iat-a-boolean", lambda: oif_token(oif_claims(iat=True)), "jwt_claims:iat"),
    case("nbf-a-list", lambda: oif_token(oif_claims(nbf=[NOW])), "jwt_claims:nbf"),
    case("exp-400-digits", lambda: oif_token(oif_claims(exp=10**400)), "jwt_claims:exp"),
    case(
        "exp-infinite-float",
        lambda: with_raw_claims(json.dumps(oif_claims(exp="EXP")).replace('"EXP"', "1e400")),
        "jwt_claims:exp",
    ),
    case("iat-hugely-negative", lambda: oif_token(oif_claims(iat=-(2**63))), "jwt_claims:iat"),
    # --- jti: an aws-oif token is single use by it
    case("oif-jti-missing", lambda: oif_token(oif_claims(jti=DROP)), "jwt_jti"),
    case("oif-jti-empty", lambda: oif_token(oif_claims(jti="")), "jwt_jti"),
    case("oif-jti-too-long", lambda: oif_token(oif_claims(jti="j" * 257)), "jwt_jti"),
    case("oif-jti-a-number", lambda: oif_token(oif_claims(jti=12345)), "jwt_jti"),
    case("eks-jti-an-object", lambda: eks_token(eks_claims(jti={"a": 1})), "jwt_jti"),
    # --- the key: looked up only now
    after_key("unknown-kid", lambda: oif_token(kid="unknown"), "jwt_kid"),
    after_key(
        "foreign-kid-of-another-trusted-issuer",
        lambda: oif_token(kid="eks-1", key=EKS_RSA),
        "jwt_kid",
    ),
    after_key(
        "kid-both-issuers-use-signed-by-the-other",
        lambda: oif_token(kid="shared-kid", key=EKS_RSA),
        "jwt_signature",
    ),
    after_key(
        "rsa-key-with-an-es384-header",
        lambda: oif_token(alg="ES384", kid="oif-rsa", key=OIF_EC),
        "jwt_alg",
    ),
    after_key(
        "ec-key-with-an-rs256-header",
        lambda: oif_token(alg="RS256", kid="oif-ec", key=OIF_RSA),
        "jwt_alg",
    ),
    after_key("signed-by-another-key", lambda: oif_token(key=ATTACKER_RSA), "jwt_signature"),
    after_key(
        "payload-changed-after-signing",
        lambda: replace_segment(
            oif_token(), 1, segment(oif_claims(sts={"principal_id": f"{ROLE}-admin"}))
        ),
        "jwt_signature",
    ),
    after_key("signature-stripped", lambda: replace_segment(oif_token(), 2, ""), "jwt_signature"),
    after_key("sub-a-number", lambda: oif_token(oif_claims(sub=42)), "jwt_claims:sub"),
    # --- the kind's claims (jwt_claims.py), read from verified claims only
    after_key(
        "oif-account-mismatch",
        lambda: oif_token(oif_claims(sts={"aws_account": "210987654321"})),
        "oif_account",
    ),
    after_key(
        "oif-subject-mode-origin-identity",
        lambda: oif_token(oif_claims(subject_mode="OriginIdentity")),
        "oif_subject_mode",
    ),
    after_key(
        "oif-sts-subject-mode-origin-identity",
        lambda: oif_token(oif_claims(sts={"subject_mode": "OriginIdentity"})),
        "oif_subject_mode",
    ),
    after_key(
        "eks-sub-not-its-service-account",
        lambda: eks_token(eks_claims(sub="system:serviceaccount:kube-system:admin")),
        "eks_subject",
    ),
]


@pytest.mark.parametrize(("make_token", "error", "reason", "looked_up_key"), REFUSALS)
def test_every_attack_is_refused_by_its_own_rule(
    make_token: Callable[[], str], error: type[TokexError], reason: str, looked_up_key: bool
) -> None:
    keys = FakeIssuerKeys()
    with pytest.raises(TokexError) as refused:
        verify(make_token(), keys)
    assert type(refused.value) is error
    assert refused.value.reason == reason
    # Cheap offline rules first: a refused token costs no key lookup (and no fetch).
    assert bool(keys.lookups) is looked_up_key
    assert len(refused.value.description) <= 200


def test_the_size_cap_and_a_jwe_are_named_in_the_description() -> None:
    with pytest.raises(InvalidRequest, match=f"longer than {MAX_SUBJECT_JWT_CHARS}"):
        verify("a" * (MAX_SUBJECT_JWT_CHARS + 1))
    with pytest.raises(InvalidRequest, match=r"encrypted JWT \(JWE\)"):
        verify("eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVy.dGFn")
    with pytest.raises(InvalidRequest, match="compact JWS"):
        verify("abc.def")


def test_descriptions_never_echo_large_caller_input() -> None:
    for token in (
        oif_token(alg="X" * 5000),
        oif_token(typ="Y" * 5000),
        oif_token(oif_claims(iss="https://" + "z" * 5000)),
        oif_token(kid="k" * 5000),
    ):
        with pytest.raises(InvalidGrant) as refused:
            verify(token)
        assert len(refused.value.description) < 120
        assert not any(c * 40 in refused.value.description for c in "XYzk")


def test_a_key_lookup_failure_is_the_callers_503() -> None:
    """IssuerKeys raises TemporarilyUnavailable when the issuer cannot be reached: it
    reaches the exchange as it is."""

    class Unreachable:
        def key(self, issuer: TrustedIssuer, kid: str) -> jwt.PyJWK | None:
            raise TemporarilyUnavailable("down", reason="jwks:x:discovery_unreachable")

    with pytest.raises(TemporarilyUnavailable) as unavailable:
        verify_jwt_evidence(
            oif_token(), issuers=ISSUERS, keys=Unreachable(), audience=AUDIENCE, now=NOW
        )
    assert unavailable.value.reason == "jwks:x:discovery_unreachable"


# --- happy paths


@pytest.mark.parametrize(
    ("alg", "kid", "key"),
    [("RS256", "oif-rsa", OIF_RSA), ("ES384", "oif-ec", OIF_EC)],
    ids=["rs256", "es384"],
)
def test_an_aws_oif_token_names_its_principal_and_is_single_use(
    alg: str, kid: str, key: Any
) -> None:
    keys = FakeIssuerKeys()
    verified = verify(oif_token(alg=alg, kid=kid, key=key), keys)

    assert keys.lookups == [(OIF_ISSUER, kid)]
    assert verified.issuer == OIF
    assert verified.jti == JTI
    assert verified.expires_at == NOW + 290
    caller = verified.caller
    assert (caller.principal_arn, caller.arn, caller.account) == (ROLE, ROLE, ACCOUNT)
    assert (caller.evidence, caller.partition, caller.session_name) == (AWS_OIF, "aws", None)
    assert caller.workload is not None
    assert caller.workload.source_region == "us-east-1"
    assert caller.workload.lambda_function_arn == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:fn"
    expected = hashlib.sha256(f"{OIF_ISSUER}\n{JTI}".encode()).hexdigest()
    assert verified.single_use_digest() == expected


def test_an_eks_token_names_its_service_account_and_is_reusable() -> None:
    verified = verify(eks_token())

    assert verified.issuer == EKS_CLUSTER
    assert verified.jti is None
    assert verified.expires_at == NOW + 3590
    caller = verified.caller
    assert caller.principal_arn == f"eks:{ACCOUNT}:us-west-2:prod:payments:api"
    assert (caller.evidence, caller.arn, caller.account) == (EKS, "", ACCOUNT)
    assert caller.eks is not None
    assert (caller.eks.namespace, caller.eks.service_account) == ("payments", "api")
    assert caller.eks.pod == "api-7d4b9c-xk2lp"
    # A pod presents the same token until the kubelet rotates it: never single use.
    assert verified.single_use_digest() is None
    assert verify(eks_token(eks_claims(jti="k8s-jti"))).single_use_digest() is None


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: oif_token(oif_claims(aud=[AUDIENCE])), id="aud-one-element-list"),
        pytest.param(lambda: oif_token(typ="jwt"), id="typ-lowercase"),
        pytest.param(lambda: oif_token(typ=DROP), id="no-typ"),
        pytest.param(lambda: oif_token(oif_claims(nbf=DROP)), id="no-nbf"),
        pytest.param(
            lambda: oif_token(
                oif_claims(iat=NOW - 300, nbf=NOW - 300, exp=NOW - CLOCK_SKEW_SECONDS + 1)
            ),
            id="expired-within-the-skew",
        ),
        pytest.param(
            lambda: oif_token(
                oif_claims(iat=NOW + CLOCK_SKEW_SECONDS, nbf=NOW + CLOCK_SKEW_SECONDS)
            ),
            id="issued-ahead-within-the-skew",
        ),
        pytest.param(
            lambda: oif_token(
                oif_claims(iat=NOW, nbf=NOW, exp=NOW + MAX_LIFETIME_SECONDS[AWS_OIF])
            ),
            id="oif-longest-lifetime",
        ),
        pytest.param(
            lambda: eks_token(eks_claims(iat=NOW, nbf=NOW, exp=NOW + MAX_LIFETIME_SECONDS[EKS])),
            id="eks-longest-lifetime",
        ),
        pytest.param(
            lambda: oif_token(oif_claims(iat=NOW - 10.5, exp=NOW + 289.25)),
            id="fractional-numeric-dates",
        ),
        pytest.param(lambda: oif_token(extra="ignored"), id="unknown-header-member"),
    ],
)
def test_accepted_edges(token: Callable[[], str]) -> None:
    assert verify(token()).caller.account == ACCOUNT


def test_an_expiry_with_a_fraction_is_rounded_up() -> None:
    verified = verify(oif_token(oif_claims(exp=NOW + 289.25)))
    assert verified.expires_at == NOW + 290


def test_the_same_token_is_not_accepted_by_another_kinds_lifetime() -> None:
    """Two hours is fine for an EKS token and too long for an AWS OIF one."""
    assert verify(eks_token(eks_claims(iat=NOW, nbf=NOW, exp=NOW + 7200))).caller.eks
    with pytest.raises(InvalidGrant) as refused:
        verify(oif_token(oif_claims(iat=NOW, nbf=NOW, exp=NOW + 7200)))
    assert refused.value.reason == "jwt_lifetime"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("a.b.c", True),
        ("eyJ.eyJ.", True),  # an unsecured JWS: the alg rule refuses it by name
        ("a.b", False),
        ("a.b.c.d", False),
        ("a.b.c.d.e", False),
        ("a..c", False),
        (".b.c", False),
        ("a.b.c=", False),
        ("a.b.c\n", False),
        ("a.b+.c", False),
        ("a.b/.c", False),
        ("a.b.c ", False),
        ("ä.b.c", False),
        ("", False),
    ],
)
def test_is_compact_jws(token: str, expected: bool) -> None:
    assert is_compact_jws(token) is expected


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_HEADER = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["RS256", "ES384", "none", "HS256"]) | _JSON,
        "kid": st.sampled_from(["oif-rsa", "oif-ec", "eks-1", "shared-kid"]) | _JSON,
        "typ": st.sampled_from(["JWT", "at+jwt"]) | _JSON,
        "crit": _JSON,
        "cty": _JSON,
    },
)
_CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.sampled_from([OIF_ISSUER, EKS_ISSUER]) | _JSON,
        "aud": st.sampled_from([AUDIENCE, [AUDIENCE]]) | _JSON,
        "exp": st.integers(NOW - 100, NOW + 100_000) | _JSON,
        "iat": st.integers(NOW - 100_000, NOW + 100) | _JSON,
        "nbf": st.integers(NOW - 100_000, NOW + 100) | _JSON,
        "jti": st.text(max_size=300) | _JSON,
        "sub": _JSON,
        STS_NAMESPACE: _JSON,
        "kubernetes.io": _JSON,
    },
)


@given(header=_HEADER, claims=_CLAIMS, signature=st.binary(max_size=600))
def test_hostile_tokens_are_refused_never_crash(
    header: dict[str, Any], claims: dict[str, Any], signature: bytes
) -> None:
    token = f"{segment(header)}.{segment(claims)}.{base64url.encode(signature)}"
    with pytest.raises(TokexError):
        verify(token)


@given(st.text(max_size=200))
def test_any_text_is_refused_never_crashes(text: str) -> None:
    with pytest.raises(TokexError):
        verify(text)
