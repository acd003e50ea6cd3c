"""examples/lambda_workload works as documented: against the running system, as the demo
workload, calling an API that verifies the bearer token with the served JWKS."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest

from tokex.client import TokenClient
from tokex.local.runner import handler_environment

EXAMPLE = Path(__file__).parents[2] / "examples" / "lambda_workload" / "handler.py"


def test_lambda_workload_example_calls_the_api_with_a_cached_token(local_system, refused_port):
    seen: list[str] = []
    keys = jwt.PyJWKClient(local_system.issuer + "/.well-known/jwks.json")
    keys.get_jwk_set()  # fetched now: the environment below names a proxy that refuses

    redirected: list[str] = []  # armed: the API answers a redirect to `elsewhere`
    unauthorized: list[str] = []  # armed: the API answers 401 (a revoked token, say)
    elsewhere: list[str | None] = []
    paths: list[str] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            elsewhere.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    class OrdersApi(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            if unauthorized:
                seen.append(
                    "401:"
                    + jwt.decode(
                        self.headers["Authorization"].removeprefix("Bearer "),
                        options={"verify_signature": False},
                    )["jti"]
                )
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if redirected:
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.2:{other.server_address[1]}/x")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            token = self.headers["Authorization"].removeprefix("Bearer ")
            claims = jwt.decode(
                token,
                keys.get_signing_key_from_jwt(token).key,
                algorithms=["RS256"],
                audience="demo-api",
                issuer=local_system.issuer,
            )
            seen.append(claims["jti"])
            data = json.dumps(
                {"path": self.path, "caller": claims["sub"], "scope": claims["scope"]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    api = ThreadingHTTPServer(("127.0.0.1", 0), OrdersApi)
    other = ThreadingHTTPServer(("127.0.0.2", 0), Elsewhere)
    for server in (api, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **local_system.deployment.workload.env(),
        "AWS_REGION": "us-east-1",
        "TOKEX_ENDPOINT": local_system.issuer,
        "ORDERS_API_URL": f"http://127.0.0.1:{api.server_address[1]}",
        "ORDERS_API_AUDIENCE": "demo-api",
        "ORDERS_API_SCOPES": "demo:read",  # of what the demo policy grants, what it needs
        # A proxy for plain http would read the token: the loopback API is called directly.
        "http_proxy": f"http://127.0.0.1:{refused_port}",
        "HTTP_PROXY": f"http://127.0.0.1:{refused_port}",
    }
    try:
        with handler_environment(env):
            spec = importlib.util.spec_from_file_location("lambda_workload_example", EXAMPLE)
            assert spec and spec.loader
            example = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(example)
            first = example.lambda_handler({"order_id": "42"}, None)
            second = example.lambda_handler({"order_id": "43"}, None)
            # `..` is one segment `quote` leaves as it is, and a server resolves it out of
            # /orders/ (to `/`, with the token): not an order id, never sent.
            for outside in ("..", ".", "../admin/users?x=", "%2e%2e", "a/b", ""):
                with pytest.raises(ValueError, match="order_id must be"):
                    example.lambda_handler({"order_id": outside}, None)
            redirected.append("armed")
            with pytest.raises(urllib.error.HTTPError) as refused:
                example.lambda_handler({"order_id": "44"}, None)
            redirected.clear()
            # A 401 forgets the token once it is 5 s old (one refused as soon as it was
            # issued would be refused again): the next invocation exchanges a new one.
            now = [time.time()]
            example.tokens = TokenClient(local_system.issuer, clock=lambda: now[0], timeout=2.0)
            unauthorized.append("armed")
            for _ in range(2):
                with pytest.raises(urllib.error.HTTPError) as rejected:
                    example.lambda_handler({"order_id": "45"}, None)
                assert rejected.value.code == 401
            now[0] += 10
            with pytest.raises(urllib.error.HTTPError):
                example.lambda_handler({"order_id": "45"}, None)
            unauthorized.clear()
            after_401 = example.lambda_handler({"order_id": "46"}, None)
    finally:
        for server in (api, other):
            server.shutdown()
            server.server_close()
    assert first == {
        "path": "/orders/42",
        "caller": "arn:aws:iam::123456789012:role/demo-workload",
        "scope": "demo:read",  # the scopes asked for, not all the policy grants
    }
    assert second["path"] == "/orders/43"
    assert paths[:3] == ["/orders/42", "/orders/43", "/orders/44"]  # nothing else was sent
    # A redirect is the answer, not followed: the token never reaches where it points.
    assert refused.value.code == 302 and elsewhere == []
    assert len(set(seen[:2])) == 1  # one exchange, token reused while warm
    # The same token refused three times (the first two under 5 s old), then a new one.
    assert all(jti.startswith("401:") for jti in seen[2:5])
    refused_jtis = {jti.removeprefix("401:") for jti in seen[2:5]}
    assert len(refused_jtis) == 1 and seen[5] not in refused_jtis | {seen[0]}
    assert after_401["path"] == "/orders/46" and len(seen) == 6
