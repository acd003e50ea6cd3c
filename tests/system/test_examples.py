"""examples/lambda_workload works as documented: against the running system, as the demo
workload, calling an API that verifies the bearer token with the served JWKS."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt

from tokex.local.runner import handler_environment

EXAMPLE = Path(__file__).parents[2] / "examples" / "lambda_workload" / "handler.py"


def test_lambda_workload_example_calls_the_api_with_a_cached_token(local_system):
    seen: list[str] = []
    keys = jwt.PyJWKClient(local_system.issuer + "/.well-known/jwks.json")

    class OrdersApi(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
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
    threading.Thread(target=api.serve_forever, daemon=True).start()
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
    finally:
        api.shutdown()
        api.server_close()
    assert first == {"path": "/orders/42", "caller": "arn:aws:iam::123456789012:role/demo-workload"}
    assert second["path"] == "/orders/43"
    assert len(seen) == 2 and seen[0] == seen[1]  # one exchange, token reused while warm
