"""A function's environment is frozen for the garbage collector after its first
invocation (functions/collector.py): what it keeps for its life is never scanned again by
a warm request's full collection. In Lambda's runtime the collector is also paused from
the package's import to the end of the first invocation, and only there."""

from __future__ import annotations

import pytest

from tests.support.fresh_handler import FUNCTIONS, LOAD_HANDLER, run_probe

ENDPOINTS = {"exchange": "/token", "introspect": "/introspect"}

PROBE = (
    "import gc\nstarted_frozen = gc.get_freeze_count()\n"
    + LOAD_HANDLER
    + """
import gc, json
def get(path):  # a wrong method: answered without any AWS call
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "issuer.example"}, "isBase64Encoded": False,
        "requestContext": {"http": {"method": "GET", "path": path, "sourceIp": "192.0.2.1"},
                           "requestId": "r", "stage": "$default"},
    }
counts = [started_frozen, gc.get_freeze_count()]
statuses = []
for _ in range(2):
    statuses.append(handler.lambda_handler(get(sys.argv[2]), Context())["statusCode"])
    counts.append(gc.get_freeze_count())
print(json.dumps({"counts": counts, "statuses": statuses}))
"""
)


@pytest.mark.parametrize("function", sorted(ENDPOINTS))
def test_the_first_invocation_freezes_the_environment_once(function: str) -> None:
    probe = run_probe(PROBE, FUNCTIONS / function / "handler.py", ENDPOINTS[function])
    assert probe["statuses"] == [405, 405]
    started, before, after_first, after_second = probe["counts"]
    # Nothing frozen by the cold start (Python 3.12.1 itself starts with a few hundred
    # objects frozen; 3.11 and 3.13 with none); then the environment's tens of thousands
    # of objects (modules, botocore's models, the clients); no second freeze adds to them
    # (a frozen object that dies by reference counting still leaves: the count may only
    # fall).
    assert before == started and after_first - before > 10_000 and after_second <= after_first


# Loaded as Lambda's runtime loads it, by the module the handler setting names (so the
# package, whose import pauses the collector, comes first); then two invocations: the
# HTTP functions' with a wrong method, the publisher's a custom resource's Delete (both
# answered without any AWS call).
RUNTIME_PROBE = """
import gc, importlib, json, pathlib, sys
module = "tokex_functions." + pathlib.Path(sys.argv[1]).parent.name + ".handler"
if sys.argv[3:] == ["collector-off"]:
    gc.disable()
states = [gc.isenabled()]
handler = importlib.import_module(module)
states.append(gc.isenabled())
class Context:
    function_name = "tokex"; memory_limit_in_mb = 512; aws_request_id = "probe"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:tokex"
    function_version = "$LATEST"; log_group_name = log_stream_name = "probe"
    def get_remaining_time_in_millis(self): return 10_000
if sys.argv[2] == "publisher":
    event = {"RequestType": "Delete", "PhysicalResourceId": "documents"}
else:
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": sys.argv[2],
        "rawQueryString": "", "headers": {"host": "issuer.example"}, "isBase64Encoded": False,
        "requestContext": {"http": {"method": "GET", "path": sys.argv[2],
                                    "sourceIp": "192.0.2.1"},
                           "requestId": "r", "stage": "$default"},
    }
full_collections = gc.get_stats()[2]["collections"]
handler.lambda_handler(event, Context())
states.append(gc.isenabled())
print(json.dumps({
    "states": states, "frozen": gc.get_freeze_count(),
    "full_collections_during_first_invocation": gc.get_stats()[2]["collections"]
    - full_collections,
}))
"""
RUNTIME_PROBES = {**ENDPOINTS, "jwks_publisher": "publisher"}
IN_RUNTIME = {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"}


@pytest.mark.parametrize("function", sorted(RUNTIME_PROBES))
def test_in_lambdas_runtime_the_collector_pauses_until_the_first_invocation(
    function: str,
) -> None:
    probe = run_probe(
        RUNTIME_PROBE, FUNCTIONS / function / "handler.py", RUNTIME_PROBES[function],
        env=IN_RUNTIME,
    )  # fmt: skip
    # On at start, off once the handler is loaded, on again after the first invocation,
    # which froze the environment and ran no full collection.
    assert probe["states"] == [True, False, True]
    assert probe["frozen"] > 10_000
    assert probe["full_collections_during_first_invocation"] == 0


@pytest.mark.parametrize("function", sorted(RUNTIME_PROBES))
def test_outside_lambdas_runtime_the_collector_stays_on(function: str) -> None:
    """A process that loads a handler and may never invoke it (the test suite, a script)
    keeps its collector; the first invocation still freezes."""
    probe = run_probe(RUNTIME_PROBE, FUNCTIONS / function / "handler.py", RUNTIME_PROBES[function])
    assert probe["states"] == [True, True, True]
    assert probe["frozen"] > 10_000


def test_a_collector_turned_off_before_stays_off() -> None:
    probe = run_probe(
        RUNTIME_PROBE, FUNCTIONS / "exchange" / "handler.py", "/token", "collector-off",
        env=IN_RUNTIME,
    )  # fmt: skip
    assert probe["states"] == [False, False, False]
    assert probe["frozen"] > 10_000
