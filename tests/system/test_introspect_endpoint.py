"""POST /introspect (RFC 7662) through the real handler, the local HTTP front and a moto
server that checks every SigV4 signature. Tokens are real: issued by POST /token, or
crafted and signed by the deployment's own KMS keys with its service credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.system.endpoints import Captured, Recorded, assert_refused, exchange, get, post, verify
from tests.unit.test_jws import LocalSigner
from tokex.adapters.kms import KmsSigner
from tokex.adapters.state_table.introspection_clients import ClientStore
from tokex.introspection_clients import basic_authorization, secret_hash
from tokex.local.front import http_api_event
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.provision import DEMO_AUDIENCE, DEMO_INSTANCE_AUDIENCE, DEMO_ROLE_ARN
from tokex.local.runner import LocalSystem, handler_environment
from tokex.tokens.jws import encode_jwt

INACTIVE = {"active": False}
FORM = "application/x-www-form-urlencoded"
_DEMO = object()
# An audience no demo policy grants: its tokens here are crafted and signed by the
# deployment's own KMS key, so they are this issuer's tokens in every respect but `aud`.
OTHER_AUDIENCE = "billing-api"


def introspect(
    system: LocalSystem,
    token: str | None = None,
    *,
    auth: Any = _DEMO,
    form: dict[str, str] | None = None,
    content_type: str = FORM,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST /introspect as the demo client (or `auth`: a header value, or None)."""
    fields = {"token": token} if token is not None else {}
    body = urllib.parse.urlencode({**fields, **(form or {})}).encode()
    return introspect_body(system, body, auth=auth, content_type=content_type)


def introspect_body(
    system: LocalSystem, body: bytes, *, auth: Any = _DEMO, content_type: str = FORM
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST this form body to /introspect as the demo client (or `auth`)."""
    if auth is _DEMO:
        auth = basic_authorization(*system.introspection_client)
    headers = {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = auth
    request = urllib.request.Request(
        system.issuer + "/introspect", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def issued_token(system: LocalSystem, **params: str) -> str:
    status, _, body = exchange(system, **params)
    assert status == 200, body
    return str(body["access_token"])


def kms_signer(system: LocalSystem, spec: str = "RSA_2048") -> KmsSigner:
    deployment = system.deployment
    return KmsSigner(deployment.client("kms"), deployment.key_ids[spec])


def crafted_claims(system: LocalSystem, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": system.issuer,
        "sub": "arn:aws:iam::123456789012:role/crafted",
        "client_id": "arn:aws:iam::123456789012:role/crafted",
        "aud": "demo-api",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": secrets.token_urlsafe(24),
    }
    claims.update(overrides)
    return claims


def assert_inactive(result: tuple[int, dict[str, str], dict[str, Any]]) -> None:
    status, headers, body = result
    assert (status, body) == (200, INACTIVE)
    assert headers["Cache-Control"] == "no-store"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_valid_token_is_active_with_its_claims(local_system):
    token = issued_token(local_system, scope="demo:read")
    status, headers, body = introspect(
        local_system, token, form={"token_type_hint": "access_token"}
    )
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store" and headers["Pragma"] == "no-cache"
    claims = verify(local_system, token)
    assert body == {"active": True, **claims, "token_type": "Bearer", "username": claims["sub"]}
    assert body["sub"] == DEMO_ROLE_ARN and body["scope"] == "demo:read"


@pytest.mark.parametrize("spec", ["RSA_2048", "ECC_NIST_P256"])
def test_token_signed_by_any_published_kms_key_is_active(local_system, spec):
    token = encode_jwt(crafted_claims(local_system), kms_signer(local_system, spec))
    status, _, body = introspect(local_system, token)
    assert (status, body["active"]) == (200, True)
    assert jwt.get_unverified_header(token)["alg"] == ("RS256" if spec == "RSA_2048" else "ES256")


def test_discovery_names_the_introspection_endpoint(local_system):
    with urllib.request.urlopen(local_system.issuer + "/.well-known/openid-configuration") as r:
        document = json.loads(r.read())
    assert document["introspection_endpoint"] == local_system.issuer + "/introspect"


def test_expired_token_is_inactive(local_system):
    now = int(time.time())
    claims = crafted_claims(local_system, iat=now - 1000, nbf=now - 1000, exp=now - 100)
    assert_inactive(introspect(local_system, encode_jwt(claims, kms_signer(local_system))))


def test_token_of_another_issuer_is_inactive(local_system):
    claims = crafted_claims(local_system, iss="https://other-tokex.example.com")
    assert_inactive(introspect(local_system, encode_jwt(claims, kms_signer(local_system))))


def flip_signature_byte(token: str) -> str:
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[-1] ^= 0x01
    return f"{head}.{payload}.{b64(bytes(raw))}"


def test_flipped_signature_byte_is_inactive(local_system):
    assert_inactive(introspect(local_system, flip_signature_byte(issued_token(local_system))))


def test_token_signed_by_an_unpublished_key_is_inactive(local_system):
    outsider = LocalSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    claims = crafted_claims(local_system)
    assert_inactive(introspect(local_system, encode_jwt(claims, outsider)))
    # The same, claiming the kid of the real signing key.
    kid = kms_signer(local_system).kid
    head = b64(json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": kid}).encode())
    signing_input = f"{head}.{b64(json.dumps(claims).encode())}"
    forged = f"{signing_input}.{b64(outsider.sign(signing_input.encode()))}"
    assert_inactive(introspect(local_system, forged))


def test_alg_none_and_hs256_confusion_are_inactive(local_system):
    signer = kms_signer(local_system)
    payload = b64(json.dumps(crafted_claims(local_system)).encode())
    none = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": signer.kid}).encode())
    assert_inactive(introspect(local_system, f"{none}.{payload}."))
    hs256 = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": signer.kid}).encode())
    secret = json.dumps(signer.public_jwk()).encode()  # the public key as an HMAC secret
    mac = hmac.new(secret, f"{hs256}.{payload}".encode(), hashlib.sha256).digest()
    assert_inactive(introspect(local_system, f"{hs256}.{payload}.{b64(mac)}"))


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b.c", "x" * 9000, "e30.e30.e30", "Bearer abc", "\u00e9t\u00e9"],
    ids=["empty", "garbage", "dots", "oversized", "empty-json", "bearer", "non-ascii"],
)
def test_garbage_is_inactive(local_system, token):
    assert_inactive(introspect(local_system, token))


def test_a_secret_in_the_body_beside_basic_is_refused(local_system):
    """A second client authentication method (RFC 6749 section 2.3), answered only after
    the Basic credentials authenticated, so it tells a stranger nothing."""
    token = issued_token(local_system)
    form = {"client_id": "tc_ffffffffffffffffffff", "client_secret": "zzz"}
    body = assert_refused(
        lambda: introspect(local_system, token, form=form),
        400,
        "invalid_request",
        "two_client_authentications",
    )
    assert (
        body["error_description"] == "client_secret in the body: authenticate with HTTP Basic only"
    )


def test_missing_or_repeated_token_is_invalid_request(local_system):
    assert_refused(lambda: introspect(local_system, None), 400, "invalid_request", "token_missing")
    assert_refused(
        lambda: introspect_body(local_system, b"token=a&token=b"),
        400,
        "invalid_request",
        "repeated",
    )


UNKNOWN_CLIENT = basic_authorization("tc_ffffffffffffffffffff", "a" * 43)


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        pytest.param(None, "no_credentials", id="auth0"),
        pytest.param("Bearer abc", "not_basic", id="Bearer abc"),
        pytest.param("Basic !!!", "malformed_basic", id="Basic !!!"),
        pytest.param(UNKNOWN_CLIENT, "unknown_client", id=UNKNOWN_CLIENT),
        pytest.param("wrong-secret", "wrong_secret", id="wrong-secret"),
        pytest.param("other-client", "unknown_client", id="other-client"),
    ],
)
def test_bad_client_authentication_is_401_invalid_client(local_system, auth, reason):
    client_id, secret = local_system.introspection_client
    if auth == "wrong-secret":
        auth = basic_authorization(client_id, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    elif auth == "other-client":
        auth = basic_authorization(client_id.replace("tc_", "tc_0")[:23], secret)
    token = issued_token(local_system)
    answer = Recorded(lambda: introspect(local_system, token, auth=auth))
    body = assert_refused(answer, 401, "invalid_client", reason)
    assert body == {"error": "invalid_client", "error_description": "client authentication failed"}
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="tokex"'


def test_credentials_in_the_body_are_not_accepted(local_system):
    client_id, secret = local_system.introspection_client
    form = {"client_id": client_id, "client_secret": secret}
    assert_refused(
        lambda: introspect(local_system, "x", auth=None, form=form),
        401,
        "invalid_client",
        "no_credentials",
    )


def test_wrong_method_content_type_and_size(local_system):
    url = local_system.issuer + "/introspect"
    answer = Recorded(lambda: get(url))
    assert_refused(answer, 405, "invalid_request", "method")
    assert answer.headers["Allow"] == "POST"
    assert_refused(
        lambda: introspect(local_system, "x", content_type="application/json"),
        415,
        "invalid_request",
        "content_type",
    )
    assert_refused(lambda: post(url, b"token=" + b"x" * 17000), 413, "invalid_request", "body_size")


def test_each_call_writes_one_audit_line_without_the_token(local_system):
    token = issued_token(local_system)
    service_logger = logging.getLogger("tokex")
    captured = Captured(service_logger.handlers[0].formatter)
    service_logger.addHandler(captured)
    try:
        introspect(local_system, token)
        introspect(local_system, flip_signature_byte(token))
        introspect(local_system, token, auth=None)
    finally:
        service_logger.removeHandler(captured)
    audits = [line for line in captured.lines if line.get("message") == "token introspection"]
    assert [a["outcome"] for a in audits] == ["active", "inactive", "refused"]
    active, inactive, refused = audits
    client_id, client_secret = local_system.introspection_client
    assert active["client_id"] == inactive["client_id"] == client_id
    assert (
        active["subject"] == DEMO_ROLE_ARN and active["jti"] == verify(local_system, token)["jti"]
    )
    assert inactive["inactive_reason"] == "bad_signature" and inactive.get("subject") is None
    assert refused["error"] == "invalid_client" and refused["reason"] == "no_credentials"
    logged = json.dumps(captured.lines)
    assert token.split(".")[2] not in logged and token.split(".")[1] not in logged
    assert client_secret not in logged


def test_clients_cli_add_list_remove(local_system, state_table_cli):
    def run(*argv: str) -> tuple[int, str, str]:
        return state_table_cli("clients", *argv)

    code, out, _ = run("add", "gateway-a", "--audience", DEMO_AUDIENCE, "--json")
    added = json.loads(out)
    assert code == 0 and added["name"] == "gateway-a"
    assert added["audiences"] == [DEMO_AUDIENCE]
    assert added["authorization"] == basic_authorization(added["client_id"], added["client_secret"])
    code, out, _ = run("add", "gateway-b", "--audience", "b-api", "--audience", "a-api")
    assert code == 0 and "client_secret" in out and "shown only now" in out
    printed = dict(line.split(None, 1) for line in out.splitlines()[:4])
    client_b, secret_b = printed["client_id"], printed["client_secret"]
    assert printed["audiences"] == "a-api b-api"

    code, out, _ = run("list", "--json")
    listed = {c["client_id"]: (c["name"], c["audiences"]) for c in json.loads(out)}
    assert listed[added["client_id"]] == ("gateway-a", [DEMO_AUDIENCE])
    assert listed[client_b] == ("gateway-b", ["a-api", "b-api"])
    assert listed[local_system.introspection_client[0]] == (
        "demo-gateway",
        sorted([DEMO_AUDIENCE, DEMO_INSTANCE_AUDIENCE]),
    )
    assert all("secret" not in key for c in json.loads(out) for key in c)
    code, out, _ = run("list")
    assert code == 0 and f"{client_b}  " in out and "  gateway-b  a-api,b-api\n" in out

    token = issued_token(local_system)
    assert introspect(local_system, token, auth=added["authorization"])[2]["active"] is True
    # Removed before its first use, so no warm cache holds it: refused at once.
    assert run("remove", client_b)[0] == 0
    assert_refused(
        lambda: introspect(local_system, token, auth=basic_authorization(client_b, secret_b)),
        401,
        "invalid_client",
        "unknown_client",
    )
    code, out, _ = run("list", "--json")
    assert client_b not in {c["client_id"] for c in json.loads(out)}
    code, _, err = run("remove", client_b)
    assert code == 1 and "no client" in err
    code, _, err = run("add", "bad name", "--audience", DEMO_AUDIENCE)
    assert code == 2 and "client name" in err
    code, out, _ = run("add", "no-audience", "--json")
    failure = json.loads(out)
    assert (code, failure["error"], failure["input"]) == (2, "usage", "--audience")


def crafted_token(system: LocalSystem, **claims: Any) -> str:
    return encode_jwt(crafted_claims(system, **claims), kms_signer(system))


def registered_client(system: LocalSystem, *audiences: str) -> str:
    """A new client serving `audiences`, made as `tokex clients add` makes it: its
    `Authorization` header value."""
    store = ClientStore(system.deployment.client("dynamodb"), system.deployment.state_table)
    client, secret = store.add("gateway", audiences)
    return basic_authorization(client.client_id, secret)


def legacy_client(system: LocalSystem) -> tuple[str, str]:
    """A client item as tokex wrote it before clients had audiences: (id, header)."""
    client_id, secret = "tc_" + secrets.token_hex(10), secrets.token_urlsafe(32)
    system.deployment.client("dynamodb").put_item(
        TableName=system.deployment.state_table,
        Item={
            "id": {"S": f"client#{client_id}"},
            "name": {"S": "kong-before-audiences"},
            "secret_hash": {"S": secret_hash(client_id, secret)},
            "created_at": {"N": str(int(time.time()))},
        },
    )
    return client_id, basic_authorization(client_id, secret)


def cold_introspect(system: LocalSystem, token: str, authorization: str) -> dict[str, Any]:
    """POST /introspect to a newly cold-started handler: no verified client cached."""
    with handler_environment(system.handler_env()):
        handler = load_handler("introspect")
    headers = {"content-type": FORM, "authorization": authorization}
    body = urllib.parse.urlencode({"token": token}).encode()
    event = http_api_event("POST", "/introspect", "", headers, body, "127.0.0.1")
    result = handler.lambda_handler(event, LambdaContext("tokex-introspect"))
    assert result["statusCode"] == 200, result
    return dict(json.loads(result["body"]))


def test_a_client_sees_only_the_audiences_it_serves(local_system):
    """RFC 7662 §4: tokens of one issuer, two audiences; each client sees its own."""
    demo = issued_token(local_system, scope="demo:read")
    billing = crafted_token(local_system, aud=OTHER_AUDIENCE)
    for_demo = registered_client(local_system, DEMO_AUDIENCE)
    for_billing = registered_client(local_system, OTHER_AUDIENCE)
    for_both = registered_client(local_system, OTHER_AUDIENCE, DEMO_AUDIENCE)

    status, _, body = introspect(local_system, demo, auth=for_demo)
    assert (status, body["active"], body["aud"]) == (200, True, DEMO_AUDIENCE)
    assert_inactive(introspect(local_system, billing, auth=for_demo))
    assert_inactive(introspect(local_system, demo, auth=for_billing))
    status, _, body = introspect(local_system, billing, auth=for_billing)
    assert (status, body["active"], body["aud"]) == (200, True, OTHER_AUDIENCE)
    for token in (demo, billing):
        assert introspect(local_system, token, auth=for_both)[2]["active"] is True


def test_the_demo_client_serves_the_demo_audiences_only(local_system):
    instance = crafted_token(local_system, aud=DEMO_INSTANCE_AUDIENCE)
    assert introspect(local_system, issued_token(local_system))[2]["active"] is True
    assert introspect(local_system, instance)[2]["active"] is True
    assert_inactive(introspect(local_system, crafted_token(local_system, aud=OTHER_AUDIENCE)))


def test_a_client_registered_before_audiences_is_inactive_for_everything_until_updated(
    local_system, state_table_cli
):
    """Fail closed on upgrade; `tokex clients update` opens it, for its audiences only."""
    demo = issued_token(local_system)
    billing = crafted_token(local_system, aud=OTHER_AUDIENCE)
    used, used_auth = legacy_client(local_system)
    unused, unused_auth = legacy_client(local_system)
    for token in (demo, billing, crafted_token(local_system, aud=DEMO_INSTANCE_AUDIENCE)):
        assert_inactive(introspect(local_system, token, auth=used_auth))

    code, out, err = state_table_cli("clients", "list")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and lines[used].endswith("  kong-before-audiences  -")
    assert "without audiences (-) gets active: false for every token" in err
    for client_id in (used, unused):
        code, out, _ = state_table_cli(
            "clients", "update", client_id, "--audience", DEMO_AUDIENCE, "--json"
        )
        assert code == 0, out
        assert json.loads(out)["audiences"] == [DEMO_AUDIENCE]

    # A client no warm handler has verified yet: the front serves its new audience at once.
    assert introspect(local_system, demo, auth=unused_auth)[2]["active"] is True
    assert_inactive(introspect(local_system, billing, auth=unused_auth))
    # The one verified before the update may be cached for 30 s by warm handlers (as a
    # removal is); a cold start reads the update.
    assert cold_introspect(local_system, demo, used_auth)["active"] is True
    assert cold_introspect(local_system, billing, used_auth) == INACTIVE


def test_clients_cli_update_replaces_the_set(local_system, state_table_cli):
    code, out, _ = state_table_cli("clients", "add", "gw", "--audience", OTHER_AUDIENCE, "--json")
    added = json.loads(out)
    argv = ["clients", "update", added["client_id"], "--audience", DEMO_AUDIENCE]
    code, out, _ = state_table_cli(*argv, "--audience", DEMO_INSTANCE_AUDIENCE)
    assert code == 0
    assert out == (
        f"{added['client_id']} (gw) now serves {DEMO_AUDIENCE} {DEMO_INSTANCE_AUDIENCE} "
        "(warm Lambdas may use the previous audiences for up to 30 s)\n"
    )
    code, out, _ = state_table_cli("clients", "list", "--json")
    [listed] = [c for c in json.loads(out) if c["client_id"] == added["client_id"]]
    assert listed["audiences"] == [DEMO_AUDIENCE, DEMO_INSTANCE_AUDIENCE]  # replaced, not added
    token = issued_token(local_system)
    assert introspect(local_system, token, auth=added["authorization"])[2]["active"] is True

    code, out, _ = state_table_cli(
        "clients", "update", "tc_" + "f" * 20, "--audience", DEMO_AUDIENCE, "--json"
    )
    failure = json.loads(out)
    assert (code, failure["error"], failure["input"]) == (1, "not_found", "tc_" + "f" * 20)
    code, out, _ = state_table_cli("clients", "update", added["client_id"], "--json")
    assert (code, json.loads(out)["input"]) == (2, "--audience")
    code, out, _ = state_table_cli(
        "clients", "update", added["client_id"], "--audience", "bad audience", "--json"
    )
    assert (code, json.loads(out)["input"]) == (2, "--audience")
