"""JWT evidence through the exchange handler of the local system (docs/contract.md "JWT
evidence"): AWS OIF tokens from the local STS-compatible endpoint and the EKS token file
are exchanged with no STS call; every attack gets its 4xx (503 for an unreachable
issuer), never a 5xx or a token; concurrent exchanges each get their own answer."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.exchange_handler import cold_exchange_handler, invoke_jwt_exchange
from tests.system.endpoints import Answer, Recorded, assert_refused, post, verify
from tests.system.local_federation import federation, sts_client
from tokex.local.provision import (
    ACCOUNT_ID,
    DEMO_LAMBDA_AUDIENCE,
    DEMO_ROLE_ARN,
    REGION,
    Credentials,
)
from tokex.local.runner import LocalSystem
from tokex.token_request import JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT


def jwt_form(token: str, audience: str = "demo-api", **params: str) -> bytes:
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": JWT_TOKEN_TYPE,
        "subject_token": token,
        "audience": audience,
        **params,
    }
    return urllib.parse.urlencode(form).encode()


def exchange_jwt(system: LocalSystem, token: str, audience: str = "demo-api") -> Answer:
    return post(system.issuer + "/token", jwt_form(token, audience))


def oif_token(
    system: LocalSystem,
    credentials: Credentials | None = None,
    audiences: list[str] | None = None,
    algorithm: str = "RS256",
) -> str:
    answer = sts_client(system, credentials).get_web_identity_token(
        Audience=audiences or [system.issuer], SigningAlgorithm=algorithm, DurationSeconds=60
    )
    return str(answer["WebIdentityToken"])


def eks_token(system: LocalSystem) -> str:
    return federation(system).eks_token.path.read_text().strip()


def assert_not_granted(answer: Answer) -> None:
    status, _, body = answer
    assert (status, body["error"]) == (400, "invalid_target") and "access_token" not in body


def test_an_oif_token_is_exchanged_once_and_its_token_names_the_evidence(
    local_system: LocalSystem,
) -> None:
    token = oif_token(local_system, algorithm="ES384")
    status, _, body = exchange_jwt(local_system, token)
    assert status == 200, body
    claims = verify(local_system, body["access_token"])
    assert claims["sub"] == DEMO_ROLE_ARN
    aws = claims["aws"]
    assert (aws["account"], aws["evidence"], aws["arn"]) == (ACCOUNT_ID, "aws-oif", DEMO_ROLE_ARN)
    assert aws["source_region"] == REGION and "principal_id" not in aws
    assert_refused(lambda: exchange_jwt(local_system, token), 400, "invalid_grant", "replay")


def test_the_eks_token_is_exchanged_again_and_again(local_system: LocalSystem) -> None:
    token = eks_token(local_system)
    for _ in range(2):  # a pod presents the same token until it is rotated
        status, _, body = exchange_jwt(local_system, token)
        assert status == 200, body
    claims = verify(local_system, body["access_token"])
    assert claims["sub"] == f"eks:{ACCOUNT_ID}:{REGION}:tokex-local:demo:api"
    assert claims["aws"]["evidence"] == "eks"
    assert claims["aws"]["eks"]["service_account"] == "api"
    # An EKS principal gets only what an eks policy grants (demo-lambda-api: none).
    assert_not_granted(exchange_jwt(local_system, token, DEMO_LAMBDA_AUDIENCE))


def test_one_lambda_function_of_a_role_is_granted_and_the_other_is_not(
    local_system: LocalSystem,
) -> None:
    lambdas = local_system.deployment.lambdas
    status, _, body = exchange_jwt(
        local_system, oif_token(local_system, lambdas["tokex-demo-a"]), DEMO_LAMBDA_AUDIENCE
    )
    assert status == 200, body
    aws = verify(local_system, body["access_token"], DEMO_LAMBDA_AUDIENCE)["aws"]
    assert aws["lambda_function_arn"].endswith(":function:tokex-demo-a")
    other = oif_token(local_system, lambdas["tokex-demo-b"])
    assert_not_granted(exchange_jwt(local_system, other, DEMO_LAMBDA_AUDIENCE))


def _segments(token: str) -> list[str]:
    return token.split(".")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _with_header(token: str, **changes: Any) -> str:
    header, payload, signature = _segments(token)
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    decoded.update(changes)
    return ".".join((_b64(decoded), payload, signature))


def _tampered(token: str) -> str:
    header, payload, signature = _segments(token)
    flipped = "A" if signature[5] != "A" else "B"
    return ".".join((header, payload, signature[:5] + flipped + signature[6:]))


def _own_access_token(system: LocalSystem) -> str:
    status, _, body = exchange_jwt(system, oif_token(system))
    assert status == 200
    return str(body["access_token"])


OTHER = "https://other.example"
BAD, MALFORMED = "invalid_grant", "invalid_request"
ATTACKS = [
    pytest.param(lambda s: _tampered(oif_token(s)), BAD, "jwt_signature", id="tampered"),
    pytest.param(
        lambda s: _with_header(oif_token(s), alg="none").rsplit(".", 1)[0] + ".",
        BAD,
        "jwt_alg",
        id="alg-none",
    ),
    pytest.param(lambda s: _with_header(oif_token(s), alg="HS256"), BAD, "jwt_alg", id="hmac"),
    pytest.param(
        lambda s: _with_header(oif_token(s), jku=OTHER + "/jwks"),
        BAD,
        "jwt_header:jku",
        id="jku",
    ),
    pytest.param(lambda s: _with_header(oif_token(s), kid="no"), BAD, "jwt_kid", id="unknown-kid"),
    pytest.param(lambda s: oif_token(s, audiences=[OTHER]), BAD, "jwt_audience", id="other-aud"),
    pytest.param(
        lambda s: oif_token(s, audiences=[s.issuer, OTHER]), BAD, "jwt_audience", id="multi-aud"
    ),
    pytest.param(_own_access_token, BAD, "jwt_header:typ", id="own-access-token"),
    pytest.param(lambda s: "a.b", MALFORMED, "subject_token", id="not-a-jws"),
    pytest.param(lambda s: "a.b.c.d.e", MALFORMED, "subject_token", id="encrypted"),
]


@pytest.mark.parametrize(("make", "error", "reason"), ATTACKS)
def test_attacks_get_their_4xx_and_never_a_token(
    local_system: LocalSystem, make: Callable[[LocalSystem], str], error: str, reason: str
) -> None:
    token = make(local_system)
    assert_refused(lambda: exchange_jwt(local_system, token), 400, error, reason)


def test_an_unreachable_issuer_is_a_503_with_retry_after(
    local_system: LocalSystem, refused_port: int
) -> None:
    """The issuer refuses the connection: the 503 says so (its audit reason), at once, not
    after waiting out the request's deadline (whose 503 would say `deadline:jwks`). The
    deadline is generous: no stall of a busy machine turns the refusal into it."""
    dead = f"http://127.0.0.1:{refused_port}/_local/oif/{ACCOUNT_ID}"
    trusted = [{"kind": "aws-oif", "issuer": dead, "account": ACCOUNT_ID}]
    handler = cold_exchange_handler(
        local_system, TOKEX_TRUSTED_ISSUERS=json.dumps(trusted), TOKEX_DEADLINE_SECONDS="9"
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": dead,
            "aud": local_system.issuer,
            "sub": DEMO_ROLE_ARN,
            "iat": now,
            "exp": now + 60,
            "jti": "j",
            "https://sts.amazonaws.com/": {
                "aws_account": ACCOUNT_ID,
                "principal_id": DEMO_ROLE_ARN,
            },
        },
        key,
        algorithm="RS256",
        headers={"kid": "k"},
    )
    answer = Recorded(lambda: invoke_jwt_exchange(handler, token))
    reason = "jwks:127.0.0.1:discovery_unreachable"
    assert_refused(answer, 503, "temporarily_unavailable", reason)
    assert int(answer.headers["Retry-After"]) > 0


def test_concurrent_jwt_exchanges_each_get_their_own_answer(local_system: LocalSystem) -> None:
    """Distinct OIF tokens and the shared EKS token at once all succeed; one OIF token
    raced by several callers is exchanged exactly once."""
    tokens = [oif_token(local_system) for _ in range(6)] + [eks_token(local_system)] * 4
    raced = oif_token(local_system)
    answers: list[tuple[str, int, dict[str, Any]]] = []
    lock = threading.Lock()

    def run(kind: str, token: str) -> None:
        status, _, body = exchange_jwt(local_system, token)
        with lock:
            answers.append((kind, status, body))

    threads = [threading.Thread(target=run, args=("distinct", t)) for t in tokens]
    threads += [threading.Thread(target=run, args=("raced", raced)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    distinct = [(status, body) for kind, status, body in answers if kind == "distinct"]
    assert len(distinct) == len(tokens) and all(status == 200 for status, _ in distinct)
    for _, body in distinct:
        verify(local_system, body["access_token"])
    raced_statuses = sorted(status for kind, status, _ in answers if kind == "raced")
    assert raced_statuses == [200, 400, 400, 400, 400, 400]
    refusals = [body for kind, status, body in answers if kind == "raced" and status == 400]
    assert all(body["error"] == "invalid_grant" for body in refusals)
