"""A function's environment is frozen for the garbage collector after its first
invocation (functions/http_endpoint.py): what it keeps for its life is never scanned
again by a warm request's full collection."""

from __future__ import annotations

import pytest

from tests.support.fresh_handler import FUNCTIONS, run_probe

ENDPOINTS = {"exchange": "/token", "introspect": "/introspect"}

PROBE = """
import gc, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
handler = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler)
class Context:
    function_name = "tokex"; memory_limit_in_mb = 512; aws_request_id = "probe"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:tokex"
    function_version = "$LATEST"; log_group_name = log_stream_name = "probe"
    def get_remaining_time_in_millis(self): return 10_000
def get(path):  # a wrong method: answered without any AWS call
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "issuer.example"}, "isBase64Encoded": False,
        "requestContext": {"http": {"method": "GET", "path": path, "sourceIp": "192.0.2.1"},
                           "requestId": "r", "stage": "$default"},
    }
counts = [gc.get_freeze_count()]
statuses = []
for _ in range(2):
    statuses.append(handler.lambda_handler(get(sys.argv[2]), Context())["statusCode"])
    counts.append(gc.get_freeze_count())
print(json.dumps({"counts": counts, "statuses": statuses}))
"""


@pytest.mark.parametrize("function", sorted(ENDPOINTS))
def test_the_first_invocation_freezes_the_environment_once(function: str) -> None:
    probe = run_probe(PROBE, FUNCTIONS / function / "handler.py", ENDPOINTS[function])
    assert probe["statuses"] == [405, 405]
    before, after_first, after_second = probe["counts"]
    # Nothing frozen at cold start; then the environment's tens of thousands of objects
    # (modules, botocore's models, the clients); no second freeze adds to them (a frozen
    # object that dies by reference counting still leaves: the count may only fall).
    assert before == 0 and after_first > 10_000 and after_second <= after_first
