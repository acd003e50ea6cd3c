"""POST /token through the real handler, the local HTTP front and a moto server that checks
every SigV4 signature. Tokens are verified only with the JWKS served over HTTP."""

from __future__ import annotations

import base64
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request

import jwt
import pytest

from tests.support.exchange_handler import cold_exchange_handler
from tests.system.endpoints import (
    Captured,
    Recorded,
    assert_refused,
    exchange,
    get,
    post,
    sign,
    verify,
)
from tokex.client.signing import signed_get_caller_identity
from tokex.forms import MAX_FORM_PARAMETERS
from tokex.local.front import http_api_event
from tokex.local.functions import LambdaContext
from tokex.local.provision import ACCOUNT_ID, DEMO_INSTANCE_ID, DEMO_ROLE_ARN, DEMO_USER_NAME
from tokex.token_request import TOKEN_EXCHANGE_GRANT


def test_role_session_gets_a_token_that_verifies_against_the_served_jwks(local_system):
    asked = time.time()
    status, headers, body = exchange(local_system, scope="demo:read")
    received = time.time()
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store" and headers["Pragma"] == "no-cache"
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert body["scope"] == "demo:read"
    claims = verify(local_system, body["access_token"])
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256"
    jwks = json.loads(urllib.request.urlopen(local_system.issuer + "/.well-known/jwks.json").read())
    assert header["kid"] in {key["kid"] for key in jwks["keys"]}
    assert claims["exp"] - claims["iat"] == 900
    # Counted from the answer (RFC 6749 §5.1), to its whole second: not from `iat`.
    exp = claims["exp"]
    assert exp - math.ceil(received) <= body["expires_in"] <= exp - math.ceil(asked)
    assert claims["nbf"] == claims["iat"]
    assert claims["sub"] == claims["client_id"] == DEMO_ROLE_ARN
    assert claims["scope"] == "demo:read"
    assert claims["policy"] == "demo-workload"
    assert claims["aws"]["account"] == ACCOUNT_ID
    assert claims["aws"]["session_name"] == DEMO_INSTANCE_ID
    assert claims["aws"]["arn"].endswith(f":assumed-role/demo-workload/{DEMO_INSTANCE_ID}")
    assert claims["aws"]["principal_id"].startswith("AROA")
    assert claims["environment"] == "local"  # the policy's static claim
    assert abs(claims["iat"] - time.time()) < 60


def test_iam_user_gets_a_token_with_all_policy_scopes(local_system):
    signed = sign(local_system, credentials=local_system.deployment.user)
    status, _, body = exchange(local_system, signed=signed)
    assert status == 200, body
    claims = verify(local_system, body["access_token"])
    assert claims["sub"] == f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER_NAME}"
    assert claims["scope"] == body["scope"] == "demo:read demo:write"
    assert "session_name" not in claims["aws"]


def test_discovery_document_names_the_issuer_and_endpoints(local_system):
    with urllib.request.urlopen(local_system.issuer + "/.well-known/openid-configuration") as r:
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["Cache-Control"] == "public, max-age=300"
        document = json.loads(r.read())
    assert document["issuer"] == local_system.issuer
    assert document["token_endpoint"] == local_system.issuer + "/token"
    assert document["jwks_uri"] == local_system.issuer + "/.well-known/jwks.json"


def test_tampered_signature_is_refused_by_sts(local_system):
    signed = sign(local_system)
    auth = signed["headers"]["Authorization"]
    flipped = "0" if auth[-1] != "0" else "1"
    signed["headers"]["Authorization"] = auth[:-1] + flipped
    assert_refused(
        lambda: exchange(local_system, signed=signed),
        400,
        "invalid_grant",
        "sts_refused:403: SignatureDoesNotMatch",
    )


def test_request_signed_for_another_deployment_is_refused(local_system):
    signed = sign(local_system, issuer="https://other-tokex.example.com")
    body = assert_refused(
        lambda: exchange(local_system, signed=signed),
        400,
        "invalid_grant",
        "X-Tokex-Issuer does not name this issuer",
    )
    assert "issuer" in body["error_description"].lower()


def test_unknown_audience_is_invalid_target(local_system):
    assert_refused(
        lambda: exchange(local_system, audience="payments-api"),
        400,
        "invalid_target",
        "policy demo-instance does not cover the audience; "
        "policy demo-workload does not cover the audience",
    )


def test_ungranted_scope_is_invalid_scope(local_system):
    assert_refused(
        lambda: exchange(local_system, scope="demo:read demo:admin"),
        400,
        "invalid_scope",
        "policy demo-workload does not grant demo:admin",
    )


def test_accepted_request_cannot_be_replayed(local_system):
    signed = sign(local_system)
    assert exchange(local_system, signed=signed)[0] == 200
    body = assert_refused(
        lambda: exchange(local_system, signed=signed), 400, "invalid_grant", "replay"
    )
    assert "already used" in body["error_description"]


def test_wrong_method_content_type_and_size(local_system):
    url = local_system.issuer + "/token"
    answer = Recorded(lambda: get(url))
    assert_refused(answer, 405, "invalid_request", "method")
    assert answer.headers["Allow"] == "POST"
    assert_refused(
        lambda: post(url, b"{}", "application/json"), 415, "invalid_request", "content_type"
    )
    assert_refused(lambda: post(url, b"a=" + b"x" * 17000), 413, "invalid_request", "body_size")


def test_unknown_path_is_the_contracts_404(local_system):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(local_system.issuer + "/nope")
    assert err.value.code == 404
    assert err.value.headers["Content-Type"] == "application/json"
    assert err.value.headers["Cache-Control"] == "no-store"
    assert json.loads(err.value.read()) == {
        "error": "invalid_request",
        "error_description": "no such endpoint",
    }


def test_unknown_grant_type(local_system):
    assert_refused(
        lambda: exchange(local_system, grant_type="client_credentials"),
        400,
        "unsupported_grant_type",
        "grant_type",
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_each_exchange_writes_one_audit_line_and_a_metric(local_system, capsys):
    service_logger = logging.getLogger("tokex")
    captured = Captured(service_logger.handlers[0].formatter)
    service_logger.addHandler(captured)
    try:
        refused_status = exchange(local_system, audience="payments-api")[0]
        status, _, body = exchange(local_system, scope="demo:write")
    finally:
        service_logger.removeHandler(captured)
    assert (refused_status, status) == (400, 200)
    audits = [line for line in captured.lines if line.get("message") == "token exchange"]
    assert [a["outcome"] for a in audits] == ["refused", "issued"]
    refused, issued = audits
    assert refused["error"] == "invalid_target"
    assert refused["reason"] == (
        "policy demo-instance does not cover the audience; "
        "policy demo-workload does not cover the audience"
    )
    assert refused["principal"] == DEMO_ROLE_ARN and refused["audience"] == "payments-api"
    assert issued["policy"] == "demo-workload"
    assert issued["jti"] == verify(local_system, body["access_token"])["jti"]
    assert issued["duration_ms"] >= 0
    assert body["access_token"] not in json.dumps(captured.lines)  # tokens are never logged

    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "_aws" in line]
    # Exchanges, counted by the `outcome` dimension (CloudWatch EMF).
    outcomes = [
        line["outcome"]
        for line in printed
        if any(
            metric["Name"] == "Exchanges" and "outcome" in directive["Dimensions"][0]
            for directive in line["_aws"]["CloudWatchMetrics"]
            for metric in directive["Metrics"]
        )
    ]
    assert outcomes[-2:] == ["refused", "issued"]


def test_caller_over_its_rate_limit_gets_429_with_retry_after(local_system):
    from tests.support.exchange_handler import (
        cold_exchange_handler,
        invoke_exchange,
        wait_for_room_in_the_rate_window,
    )

    handler = cold_exchange_handler(local_system, TOKEX_RATE_LIMIT_PER_MINUTE="1")
    user = local_system.deployment.user
    # The budget of one per minute may already be spent by earlier tests in this minute:
    # at most the first succeeds, and the rest are refused.
    wait_for_room_in_the_rate_window()
    invoke_exchange(handler, sign(local_system, credentials=user))
    for _ in range(2):
        signed = sign(local_system, credentials=user)
        answer = Recorded(lambda signed=signed: invoke_exchange(handler, signed))
        assert_refused(answer, 429, "temporarily_unavailable", "rate_limited")
        assert 1 <= int(answer.headers["Retry-After"]) <= 61


def test_request_bound_to_another_audience_is_refused(local_system):
    creds = local_system.deployment.workload.session().get_credentials()
    signed = signed_get_caller_identity(
        creds.get_frozen_credentials(),
        region="us-east-1",
        issuer=local_system.issuer,
        audience="demo-instance-api",
    )
    assert "x-tokex-audience" in signed["headers"]["Authorization"]
    body = assert_refused(
        lambda: exchange(local_system, signed=signed),
        400,
        "invalid_grant",
        "X-Tokex-Audience must be signed and equal the audience parameter",
    )
    assert "X-Tokex-Audience" in body["error_description"]
    # Bound to the audience it asks for, the same kind of request succeeds.
    signed = signed_get_caller_identity(
        creds.get_frozen_credentials(),
        region="us-east-1",
        issuer=local_system.issuer,
        audience="demo-api",
    )
    assert exchange(local_system, signed=signed)[0] == 200


def test_unrecognised_parameters_are_ignored_up_to_the_documented_limit(local_system):
    extras = {f"client_extension_{i}": "x" for i in range(20)}  # 24 parameters in all
    status, _, body = exchange(local_system, **extras)
    assert status == 200, body
    many = {f"p{i}": "x" for i in range(MAX_FORM_PARAMETERS)}
    body = assert_refused(
        lambda: exchange(local_system, **many), 400, "invalid_request", "form_parameters"
    )
    assert body["error_description"] == f"the form has more than {MAX_FORM_PARAMETERS} parameters"


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded\u00a0", "\x01application/x-www-form-urlencoded"],
)
def test_media_type_is_parsed_strictly(local_system, content_type):
    """As the handler gets it from API Gateway (the local front refuses a control
    character in any header before the handler sees it)."""
    handler = cold_exchange_handler(local_system)
    body = urllib.parse.urlencode({"grant_type": TOKEN_EXCHANGE_GRANT}).encode()
    event = http_api_event("POST", "/token", "", {"content-type": content_type}, body, "::1")

    def answer():
        result = handler.lambda_handler(event, LambdaContext("tokex-exchange"))
        return result["statusCode"], result["headers"], json.loads(result["body"])

    assert_refused(answer, 415, "invalid_request", "content_type")


@pytest.mark.parametrize("body", ["grant_type=\ud800", "\udfff"], ids=["high", "low"])
def test_a_text_body_with_a_lone_surrogate_is_400_not_a_crash(local_system, body):
    """An event whose text body no UTF-8 request could have produced: refused as
    undecodable, never the 503 of an unexpected failure."""
    handler = cold_exchange_handler(local_system)
    form = "application/x-www-form-urlencoded"
    event = http_api_event("POST", "/token", "", {"content-type": form}, b"", "::1")
    event = {**event, "body": body, "isBase64Encoded": False}

    def answer():
        result = handler.lambda_handler(event, LambdaContext("tokex-exchange"))
        return result["statusCode"], result["headers"], json.loads(result["body"])

    refused = assert_refused(answer, 400, "invalid_request", "body")
    assert refused["error_description"] == "the request body could not be decoded"
