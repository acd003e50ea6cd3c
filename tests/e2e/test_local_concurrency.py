"""Concurrent callers of one `tokex local` each get the answer computed from their own
request (docs/local.md "Concurrency"): valid exchanges, garbage exchanges and
introspection with and without credentials, all at once for a few seconds."""

from __future__ import annotations

import base64
import collections
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import boto3
import jwt
import pytest

from tests.e2e.running_local import RunningLocal, load_env_file
from tokex.client import TokenError, request_token
from tokex.local.provision import DEMO_AUDIENCE, DEMO_ROLE_ARN

pytestmark = pytest.mark.e2e
# The bar: ten seconds of mixed concurrent traffic.
RUN_SECONDS = 10.0
GARBAGE = b"grant_type=nothing-valid&audience=x"
FORM = "application/x-www-form-urlencoded"


def post(
    local: RunningLocal, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", local.port, timeout=60)
    try:
        connection.request("POST", path, body, {"Content-Type": FORM, **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_every_concurrent_answer_belongs_to_its_request(local_process: RunningLocal) -> None:
    local = local_process
    workload = load_env_file(local.state_dir / "workload.env")
    client = load_env_file(local.state_dir / "introspection-client.env")
    basic = {"Authorization": client["TOKEX_INTROSPECTION_AUTHORIZATION"]}
    session = boto3.session.Session(
        aws_access_key_id=workload["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=workload["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=workload["AWS_SESSION_TOKEN"],
        region_name="us-east-1",
    )
    jwks = jwt.PyJWKClient(local.issuer + "/.well-known/jwks.json")

    def exchange(scope: str) -> str:
        return str(
            request_token(
                local.issuer, DEMO_AUDIENCE, scopes=[scope], session=session, issuer=local.issuer
            )["access_token"]
        )

    def claims_of(token: str) -> dict[str, Any]:
        key = jwks.get_signing_key_from_jwt(token).key
        return jwt.decode(
            token, key, algorithms=["RS256"], audience=DEMO_AUDIENCE, issuer=local.issuer
        )

    # One token per scope, issued before the crowd arrives: introspection must say which.
    issued = {scope: exchange(scope) for scope in ("demo:read", "demo:write")}
    jti = {scope: claims_of(token)["jti"] for scope, token in issued.items()}

    wrong: list[str] = []
    answered: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def valid_exchange(scope: str) -> None:
        try:
            claims = claims_of(exchange(scope))
        except TokenError as err:
            wrong.append(f"valid exchange for {scope} got {err}")
            return
        if (claims["scope"], claims["sub"]) != (scope, DEMO_ROLE_ARN):
            wrong.append(f"valid exchange for {scope} got a token for {claims}")

    def garbage_exchange() -> None:
        status, body = post(local, "/token", GARBAGE)
        if (status, body.get("error")) != (400, "unsupported_grant_type") or len(body) != 2:
            wrong.append(f"garbage exchange got {status} {body}")

    def introspect(scope: str) -> None:
        form = urllib.parse.urlencode({"token": issued[scope]}).encode()
        status, body = post(local, "/introspect", form, basic)
        if status != 200 or not body.get("active") or body.get("jti") != jti[scope]:
            wrong.append(f"introspection of the {scope} token got {status} {body}")
        elif body.get("scope") != scope:
            wrong.append(f"introspection of the {scope} token got another token's {body}")

    def introspect_without_credentials(scope: str) -> None:
        form = urllib.parse.urlencode({"token": issued[scope]}).encode()
        status, body = post(local, "/introspect", form)
        if (status, body.get("error")) != (401, "invalid_client") or "active" in body:
            wrong.append(f"introspection without credentials got {status} {body}")

    def introspect_with_a_wrong_secret(scope: str) -> None:
        bad = base64.b64encode(f"{client['TOKEX_INTROSPECTION_CLIENT_ID']}:nope".encode())
        form = urllib.parse.urlencode({"token": issued[scope]}).encode()
        status, body = post(local, "/introspect", form, {"Authorization": f"Basic {bad.decode()}"})
        if (status, body.get("error")) != (401, "invalid_client") or "active" in body:
            wrong.append(f"introspection with a wrong secret got {status} {body}")

    def caller(name: str, request: Callable[[], None]) -> None:
        while not stop.is_set():
            try:
                request()
            except Exception as err:  # a dropped connection, an answer that is not JSON
                wrong.append(f"{name}: {type(err).__name__}: {err}")
                continue
            answered[name] += 1

    callers = {
        "valid demo:read": lambda: valid_exchange("demo:read"),
        "valid demo:write": lambda: valid_exchange("demo:write"),
        "garbage 1": garbage_exchange,
        "garbage 2": garbage_exchange,
        "introspect demo:read": lambda: introspect("demo:read"),
        "introspect demo:write": lambda: introspect("demo:write"),
        "introspect, no credentials": lambda: introspect_without_credentials("demo:read"),
        "introspect, wrong secret": lambda: introspect_with_a_wrong_secret("demo:write"),
    }
    threads = [
        threading.Thread(target=caller, args=(name, request), daemon=True)
        for name, request in callers.items()
    ]
    for thread in threads:
        thread.start()
    time.sleep(RUN_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    assert wrong == []
    assert set(answered) == set(callers)  # every kind of caller was answered, and right
    assert "Traceback" not in local.console_text()
