"""Tokens of the running system against Kong's open-source jwt + acl rules, configured by
`tokex kong-config` from the JWKS that system serves (issue 5 "Done when").

Kong itself is not run: tests/support/kong_jwt.py applies the rules of Kong's Lua code.
RS256 tokens come from the HTTP front; ES256 tokens from a second exchange handler whose
signing key is the ECC KMS key (both keys are published in the JWKS)."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tests.support.kong_jwt import Kong
from tests.system.endpoints import exchange, sign
from tests.unit.test_kong_deck import requires_deck
from tokex import kong
from tokex.adapters.kms import KmsSigner
from tokex.cli.kong import parse_document, read_jwks
from tokex.cli.main import main
from tokex.client.imds import encode_instance_evidence, read_instance_identity
from tokex.kong import Placement, Route
from tokex.local.provision import DEMO_AUDIENCE, DEMO_INSTANCE_AUDIENCE
from tokex.tokens.jwks import JWKS_PATH
from tokex.tokens.jws import encode_jwt

ALGS = ("RS256", "ES256")
SERVICE = Placement(service="demo", service_url="http://127.0.0.1:8080")
# The demo policies of `tokex local`: one route per audience.
AUDIENCE_ROUTES = Placement(
    service="demo",
    service_url="http://127.0.0.1:8080",
    routes=(Route("demo", (DEMO_AUDIENCE,)), Route("instance", (DEMO_INSTANCE_AUDIENCE,))),
)
ROUTE_OF = {DEMO_AUDIENCE: "demo", DEMO_INSTANCE_AUDIENCE: "instance"}


@pytest.fixture(scope="module")
def jwks(local_system) -> dict[str, Any]:
    """The JWKS as `tokex kong-config` reads it: over HTTP from the running issuer."""
    document = read_jwks(local_system.issuer + JWKS_PATH)
    assert {key["alg"] for key in document["keys"]} == set(ALGS)
    return document


@pytest.fixture(scope="module")
def es256_handler(local_system):
    deployment = local_system.deployment
    return cold_exchange_handler(
        local_system,
        TOKEX_SIGNING_KEY_ID=deployment.key_ids["ECC_NIST_P256"],
        TOKEX_PUBLISHED_KEY_IDS=deployment.key_ids["RSA_2048"],
    )


@pytest.fixture(scope="module")
def mint(local_system, es256_handler):
    """mint(alg, audience) -> an access token issued by the running system."""

    def issue(alg: str, audience: str = DEMO_AUDIENCE) -> str:
        params: dict[str, str] = {"audience": audience}
        if audience == DEMO_INSTANCE_AUDIENCE:
            evidence = read_instance_identity(local_system.imds.url)
            params["aws_instance_identity"] = encode_instance_evidence(evidence)
        if alg == "RS256":
            status, _, body = exchange(local_system, **params)
        else:
            status, _, body = invoke_exchange(es256_handler, sign(local_system), **params)
        assert status == 200, body
        assert jwt.get_unverified_header(body["access_token"])["alg"] == alg
        return str(body["access_token"])

    return issue


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(header + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
        base64.urlsafe_b64decode(signature + "=="),
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ALGS)
def test_token_passes_the_generated_jwt_config(jwks, mint, alg):
    gateway = Kong(kong.jwt_config(jwks, SERVICE, max_ttl=3600))
    token = mint(alg)
    response = gateway.request(service="demo", headers=bearer(token))
    assert (response.status, response.consumer) == (200, "tokex"), response.body
    assert response.credential == jwt.get_unverified_header(token)["kid"]
    # Kong reads no token from the URL or a cookie with this configuration.
    assert gateway.request(service="demo", query={"jwt": token}).status == 401


@pytest.mark.parametrize("alg", ALGS)
def test_tampered_expired_premature_and_overlong_tokens_are_refused(jwks, mint, alg):
    gateway = Kong(kong.jwt_config(jwks, SERVICE, max_ttl=3600))
    token = mint(alg)
    header_64, _, signature_64 = token.split(".")
    _, claims, _ = parts(token)
    forged = b64(json.dumps({**claims, "aud": "payments-api"}).encode())
    tampered = gateway.request(
        service="demo", headers=bearer(f"{header_64}.{forged}.{signature_64}")
    )
    assert (tampered.status, tampered.body) == (401, {"message": "Invalid signature"})
    expired = gateway.request(service="demo", headers=bearer(token), now=claims["exp"])
    assert (expired.status, expired.body) == (401, {"exp": "token expired"})
    early = gateway.request(service="demo", headers=bearer(token), now=claims["nbf"] - 1)
    assert (early.status, early.body) == (401, {"nbf": "token not valid yet"})
    # maximum_expiration below the token's 900 s lifetime: Kong refuses the token.
    strict = Kong(kong.jwt_config(jwks, SERVICE, max_ttl=600))
    overlong = strict.request(service="demo", headers=bearer(token), now=claims["iat"])
    assert overlong.body == {"exp": "exceeds maximum allowed expiration"}


@pytest.mark.parametrize("alg", ALGS)
def test_key_not_in_the_config_or_another_key_is_refused(jwks, mint, alg):
    token = mint(alg)
    other = {"keys": [key for key in jwks["keys"] if key["alg"] != alg]}
    unknown = Kong(kong.jwt_config(other, SERVICE, max_ttl=3600)).request(
        service="demo", headers=bearer(token)
    )
    assert unknown.body == {"message": "No credentials found for given 'kid'"}
    # The same header and claims signed by a key that is not tokex's.
    header, claims, _ = parts(token)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, impostor, algorithm="RS256", headers={**header, "alg": "RS256"})
    response = Kong(kong.jwt_config(jwks, SERVICE, max_ttl=3600)).request(
        service="demo", headers=bearer(forged)
    )
    expected = "Invalid signature" if alg == "RS256" else "Invalid algorithm"
    assert response.body == {"message": expected}


def test_der_encoded_es256_signature_would_be_a_kong_500(jwks, mint):
    """Why tokex converts KMS's DER signature to raw R||S (docs/contract.md
    "The access token (RFC 9068 profile)")."""
    token = mint("ES256")
    header_64, payload_64, signature_64 = token.split(".")
    raw = base64.urlsafe_b64decode(signature_64 + "==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    gateway = Kong(kong.jwt_config(jwks, SERVICE, max_ttl=3600))
    assert gateway.request(service="demo", headers=bearer(token)).status == 200
    assert (
        gateway.request(
            service="demo", headers=bearer(f"{header_64}.{payload_64}.{b64(der)}")
        ).status
        == 500
    )


def test_audience_routes_with_both_keys_signed_by_kms(local_system, jwks):
    """The audience design with tokens signed through tokex's KMS signer and JWS encoder,
    carrying an `aud_kid` set here (the Kong rules alone, independent of the exchange)."""
    gateway = Kong(kong.jwt_config(jwks, AUDIENCE_ROUTES, max_ttl=3600))
    client = local_system.deployment.client("kms")
    for key_arn in local_system.deployment.key_ids.values():
        signer = KmsSigner(client, key_arn)
        for audience, route in ROUTE_OF.items():
            claims = {"iss": local_system.issuer, "aud": audience, "sub": "s"}
            claims |= {"iat": 0, "nbf": 0, "exp": 900, "jti": "j"}
            claims["aud_kid"] = kong.audience_key(audience, signer.kid)
            token = encode_jwt(claims, signer)
            for target in ROUTE_OF.values():
                response = gateway.request(target, headers=bearer(token), now=1)
                if target == route:
                    assert response.status == 200, (signer.alg, audience, response.body)
                    assert response.consumer == f"tokex-aud-{audience}"
                else:
                    assert (response.status, response.body) == (
                        403,
                        {"message": "You cannot consume this service"},
                    )


@pytest.mark.parametrize("alg", ALGS)
def test_exchanged_token_for_another_audience_is_refused_on_the_audience_route(jwks, mint, alg):
    gateway = Kong(kong.jwt_config(jwks, AUDIENCE_ROUTES, max_ttl=3600))
    tokens = {audience: mint(alg, audience) for audience in ROUTE_OF}
    for audience, token in tokens.items():
        header, claims, _ = parts(token)
        # docs/contract.md: every access token carries `aud_kid` = "<aud>.<kid>".
        assert claims.get(kong.AUDIENCE_KEY_CLAIM) == f"{audience}.{header['kid']}", claims
        for target_audience, route in ROUTE_OF.items():
            response = gateway.request(route, headers=bearer(token))
            if target_audience == audience:
                assert (response.status, response.consumer) == (200, f"tokex-aud-{audience}")
            else:
                assert response.status == 403, response.body


@requires_deck
@pytest.mark.parametrize("audiences", [False, True], ids=["kid", "audience-routes"])
def test_cli_output_from_the_served_jwks_passes_deck_validate(local_system, tmp_path, audiences):
    output = tmp_path / "kong.yaml"
    argv = ["kong-config", "--jwks", local_system.issuer + JWKS_PATH, "--output", str(output)]
    argv += ["--service-name", "demo", "--service-url", "http://127.0.0.1:8080"]
    if audiences:
        for audience, route in ROUTE_OF.items():
            argv += ["--audience", audience, "--route", route]
    else:
        argv.append("--any-audience")
    assert main(argv) == 0
    result = subprocess.run(
        ["deck", "validate", "-s", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = parse_document(output.read_text())
    credentials = [c for consumer in document["consumers"] for c in consumer["jwt_secrets"]]
    assert len(credentials) == 2 * (len(ROUTE_OF) if audiences else 1)
