"""Interop: independent verifiers (mod_auth_openidc, npm jose) judge tokens of the system
under test, using only the JWKS that system serves.

Every verifier sees the same cases (`TOKEN_CASES`). The good ones come from real
exchanges: RS256 through the local HTTP front, ES256 through a second cold start of the
exchange handler signing with the deployment's P-256 key. Each bad one is wrong in exactly
one way: an exchanged token altered after signing (payload or signature), or claims signed
for real by the deployment's KMS key (nothing here holds a private key) with one claim
wrong. A control token minted the same way with nothing wrong must be accepted, so a
refusal can only be about that one thing.

The tools come from `.ci/install-verifiers`. Elsewhere, a missing tool skips its tests with
a reason; in CI (`CI=true`) it fails them, so a broken install never passes as a skip.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import jwt
import pytest

from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tests.system.conftest import local_system  # noqa: F401  (session fixture)
from tests.system.endpoints import exchange, sign
from tokex.adapters.kms import KmsSigner
from tokex.evidence.identity import CallerIdentity
from tokex.local.runner import LocalSystem
from tokex.tokens.claims import build_claims
from tokex.tokens.jws import encode_jwt

AUDIENCE = "demo-api"
OTHER_AUDIENCE = "payments-api"
OTHER_ISSUER = "https://other-tokex.example.com"
# An hour: far beyond any verifier's clock-skew leeway.
EXPIRED_AGO_SECONDS = 3600
NOT_BEFORE_AHEAD_SECONDS = 3600
TTL_SECONDS = 900
KEY_SPECS = {"RS256": "RSA_2048", "ES256": "ECC_NIST_P256"}


@dataclass(frozen=True)
class TokenCase:
    name: str
    alg: str
    accepted: bool
    # None, or what is wrong: "signature", "expired", "audience", "issuer", "no-exp"
    # (no `exp` claim at all) or "nbf-future" (`nbf` an hour ahead). tokex never issues
    # the last two; they measure whether a verifier would notice.
    flaw: str | None


TOKEN_CASES = [
    case
    for alg in KEY_SPECS
    for case in (
        TokenCase(f"exchanged-{alg}", alg, True, None),
        TokenCase(f"minted-control-{alg}", alg, True, None),
        TokenCase(f"tampered-payload-{alg}", alg, False, "signature"),
        TokenCase(f"tampered-signature-{alg}", alg, False, "signature"),
        TokenCase(f"expired-{alg}", alg, False, "expired"),
        TokenCase(f"wrong-audience-{alg}", alg, False, "audience"),
        TokenCase(f"wrong-issuer-{alg}", alg, False, "issuer"),
        TokenCase(f"no-exp-{alg}", alg, False, "no-exp"),
        TokenCase(f"not-yet-valid-{alg}", alg, False, "nbf-future"),
    )
]
CASE_IDS = [case.name for case in TOKEN_CASES]


def verifier_missing(reason: str) -> NoReturn:
    """Skip (a developer machine without the tool) or, in CI, fail loudly."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            f"{reason}; CI=true, so .ci/install-verifiers should have installed it",
            pytrace=False,
        )
    pytest.skip(f"{reason} (install with .ci/install-verifiers)")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def tamper_payload(token: str) -> str:
    """Widen the granted scope and keep the original signature."""
    header, payload, signature = token.split(".")
    claims = json.loads(_b64url_decode(payload))
    claims["scope"] = "demo:read demo:write demo:admin"
    forged = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{forged}.{signature}"


def tamper_signature(token: str) -> str:
    """Flip one bit in the middle of the signature (never in base64 padding bits)."""
    header, payload, signature = token.split(".")
    raw = bytearray(_b64url_decode(signature))
    raw[len(raw) // 2] ^= 0x01
    return f"{header}.{payload}.{_b64url(bytes(raw))}"


def _exchange_es256(system: LocalSystem) -> str:
    """A real exchange by a cold-started handler whose signing key is the P-256 one."""
    key_arn = system.deployment.key_ids["ECC_NIST_P256"]
    handler = cold_exchange_handler(system, TOKEX_SIGNING_KEY_ID=key_arn)
    status, _, body = invoke_exchange(handler, sign(system), AUDIENCE)
    assert status == 200, body
    return str(body["access_token"])


def _caller_of(claims: dict[str, Any]) -> CallerIdentity:
    aws = claims["aws"]
    return CallerIdentity(
        principal_arn=claims["sub"],
        arn=aws["arn"],
        account=aws["account"],
        user_id=aws["principal_id"],
        principal_id=aws["principal_id"].split(":")[0],
        partition="aws",
        session_name=aws.get("session_name"),
    )


@pytest.fixture(scope="session")
def token_cases(local_system: LocalSystem) -> dict[str, str]:  # noqa: F811
    """Case name -> compact JWT, for every case in TOKEN_CASES."""
    status, _, body = exchange(local_system, audience=AUDIENCE)
    assert status == 200, body
    exchanged = {"RS256": body["access_token"], "ES256": _exchange_es256(local_system)}
    tokens: dict[str, str] = {}
    for alg, token in exchanged.items():
        assert jwt.get_unverified_header(token)["alg"] == alg
        caller = _caller_of(jwt.decode(token, options={"verify_signature": False}))
        signer = KmsSigner(
            local_system.deployment.client("kms"), local_system.deployment.key_ids[KEY_SPECS[alg]]
        )

        def mint(
            *,
            now: int | None = None,
            audience: str = AUDIENCE,
            issuer: str = local_system.issuer,
            signer: KmsSigner = signer,
            caller: CallerIdentity = caller,
            **changes: int | None,
        ) -> str:
            claims = build_claims(
                issuer=issuer,
                audience=audience,
                caller=caller,
                policy_id="demo-workload",
                scopes=("demo:read",),
                ttl_seconds=TTL_SECONDS,
                extra_claims={},
                instance=None,
                now=int(time.time()) if now is None else now,
            )
            claims.update(changes)
            return encode_jwt({k: v for k, v in claims.items() if v is not None}, signer)

        tokens[f"exchanged-{alg}"] = token
        tokens[f"minted-control-{alg}"] = mint()
        tokens[f"tampered-payload-{alg}"] = tamper_payload(token)
        tokens[f"tampered-signature-{alg}"] = tamper_signature(token)
        tokens[f"expired-{alg}"] = mint(now=int(time.time()) - EXPIRED_AGO_SECONDS)
        tokens[f"wrong-audience-{alg}"] = mint(audience=OTHER_AUDIENCE)
        tokens[f"wrong-issuer-{alg}"] = mint(issuer=OTHER_ISSUER)
        tokens[f"no-exp-{alg}"] = mint(exp=None)
        later = int(time.time()) + NOT_BEFORE_AHEAD_SECONDS
        tokens[f"not-yet-valid-{alg}"] = mint(nbf=later, exp=later + TTL_SECONDS)
    assert set(tokens) == set(CASE_IDS)
    return tokens
