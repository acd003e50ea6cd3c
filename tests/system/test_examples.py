"""examples/lambda_workload works as documented: against the running system, as the demo
workload, calling an API that verifies the bearer token with the served JWKS."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest

from tokex.local.runner import handler_environment

EXAMPLE = Path(__file__).parents[2] / "examples" / "lambda_workload" / "handler.py"


def test_lambda_workload_example_calls_the_api_with_a_cached_token(local_system):
    seen: list[str] = []
    keys = jwt.PyJWKClient(local_system.issuer + "/.well-known/jwks.json")

    redirected: list[str] = []  # armed: the API answers a redirect to `elsewhere`
    elsewhere: list[str | None] = []

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
            data = json.dumps({"path": self.path, "caller": claims["sub"]}).encode()
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
    }
    try:
        with handler_environment(env):
            spec = importlib.util.spec_from_file_location("lambda_workload_example", EXAMPLE)
            assert spec and spec.loader
            example = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(example)
            first = example.lambda_handler({"order_id": "42"}, None)
            second = example.lambda_handler({"order_id": "43"}, None)
            escaped = example.lambda_handler({"order_id": "../admin/users?x="}, None)
            redirected.append("armed")
            with pytest.raises(urllib.error.HTTPError) as refused:
                example.lambda_handler({"order_id": "44"}, None)
    finally:
        for server in (api, other):
            server.shutdown()
            server.server_close()
    assert first == {"path": "/orders/42", "caller": "arn:aws:iam::123456789012:role/demo-workload"}
    assert second["path"] == "/orders/43"
    assert escaped["path"] == "/orders/..%2Fadmin%2Fusers%3Fx%3D"  # one segment of /orders/
    # A redirect is the answer, not followed: the token never reaches where it points.
    assert refused.value.code == 302 and elsewhere == []
    assert len(seen) == 3 and len(set(seen)) == 1  # one exchange, token reused while warm
