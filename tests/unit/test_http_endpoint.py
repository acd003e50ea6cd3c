"""An event API Gateway never sends (a direct invocation, a malformed one) gets the
contract's 503, never a failed invocation (which API Gateway would answer 500), and the
origin gate refuses any header value, however odd, with its 403. Each HTTP function's
handler loaded in a fresh interpreter, as Lambda loads it."""

from __future__ import annotations

import json

import pytest

from tests.support.fresh_handler import FUNCTIONS, LOAD_HANDLER, run_probe

PROBE = (
    LOAD_HANDLER
    + """
import json
answers = []
for event in json.loads(sys.argv[2]):
    answer = handler.lambda_handler(event, Context())
    answers.append([answer["statusCode"], answer["headers"], json.loads(answer["body"])])
print(json.dumps(answers))
"""
)
# The same, but each answer also with its invocation's audit lines' and metrics' outcomes
# (`[audit outcomes, Exchanges/Introspections outcomes]`); `/crash` is a route that raises,
# as a bug of the core would.
AUDITED_PROBE = (
    LOAD_HANDLER
    + """
import contextlib, io, json
endpoint = handler.endpoint
@endpoint.app.post("/crash")
def crash():
    raise RuntimeError("a bug, with a secret: A1b2C3d4")
answers = []
for event in json.loads(sys.argv[2]):
    written = io.StringIO()
    endpoint.logger.registered_handler.setStream(written)
    with contextlib.redirect_stdout(written):  # the metrics are printed
        answer = handler.lambda_handler(event, Context())
    lines = [json.loads(line) for line in written.getvalue().splitlines()]
    audits = [line["outcome"] for line in lines if line.get("message") == endpoint.audit_message]
    counted = [line["outcome"] for line in lines if endpoint.metric in line]
    answers.append([answer["statusCode"], json.loads(answer["body"]), audits, counted])
print(json.dumps(answers))
"""
)
CRASH = {
    "version": "2.0",
    "routeKey": "$default",
    "rawPath": "/crash",
    "rawQueryString": "",
    "headers": {},
    "requestContext": {"http": {"method": "POST", "path": "/crash"}, "stage": "$default"},
    "isBase64Encoded": False,
}
SECRET = "A1b2C3d4" * 6
MALFORMED = [{}, {"version": "2.0"}, {"requestContext": {}}, {"headers": None, "body": 3}, []]
ODD_ORIGIN_HEADERS = ["\ud800", None, 42, ["x"]]


@pytest.mark.parametrize("function", ["exchange", "introspect"])
def test_a_malformed_event_is_503_not_a_failed_invocation(function: str) -> None:
    answers = run_probe(PROBE, FUNCTIONS / function / "handler.py", json.dumps(MALFORMED))
    for status, headers, body in answers:
        assert (status, body["error"]) == (503, "temporarily_unavailable")
        assert body["error_description"] == "internal error, retry later"
        assert headers["Cache-Control"] == "no-store" and int(headers["Retry-After"]) > 0


@pytest.mark.parametrize("function", ["exchange", "introspect"])
def test_a_crash_is_audited_and_counted_as_an_error(function: str) -> None:
    """A bug, in a route or before one, is the same 503 with one audit line and one
    metric, outcome `error`: never missing from the requests counted by outcome."""
    answers = run_probe(
        AUDITED_PROBE,
        FUNCTIONS / function / "handler.py",
        json.dumps([CRASH, *MALFORMED]),
        env={"POWERTOOLS_METRICS_DISABLED": "false"},
    )
    for status, body, audits, counted in answers:
        assert (status, body["error_description"]) == (503, "internal error, retry later")
        assert (audits, counted) == (["error"], ["error"])


@pytest.mark.parametrize("function", ["exchange", "introspect"])
def test_the_origin_gate_refuses_any_odd_header_value(function: str) -> None:
    events: list[object] = [{"headers": {"x-tokex-origin-verify": v}} for v in ODD_ORIGIN_HEADERS]
    events += [{"headers": "x-tokex-origin-verify"}, {"headers": ["x"]}, []]  # no headers
    answers = run_probe(
        PROBE,
        FUNCTIONS / function / "handler.py",
        json.dumps(events),
        env={"TOKEX_ORIGIN_SECRET": SECRET},
    )
    assert [(status, body["error"]) for status, _, body in answers] == [
        (403, "invalid_request")
    ] * len(events)


# Each metric the endpoint writes, as CloudWatch reads it: its name, dimension names and
# their values (one request to a path no route serves, then the exchange's own
# `InvalidPolicies`).
METRICS_PROBE = (
    LOAD_HANDLER
    + """
import contextlib, io, json
written = io.StringIO()
with contextlib.redirect_stdout(written):  # the metrics are printed
    handler.lambda_handler(json.loads(sys.argv[2]), Context())
    handler.endpoint.count("InvalidPolicies", 2)
metrics = []
for line in written.getvalue().splitlines():
    blob = json.loads(line)
    for directive in blob.get("_aws", {}).get("CloudWatchMetrics", []):
        for metric in directive["Metrics"]:
            [names] = directive["Dimensions"]
            metrics.append([metric["Name"], {name: blob[name] for name in names}])
print(json.dumps(metrics))
"""
)


@pytest.mark.parametrize(("stack", "dimension"), [("Orders", "Orders"), (None, "local")])
def test_every_metric_is_dimensioned_by_its_stack(stack: str | None, dimension: str) -> None:
    """Two stacks in one account and Region share the namespace: each metric names its
    stack (TOKEX_STACK_NAME, set by the CDK app; "local" outside a deployment), so an
    alarm counts one stack's requests alone."""
    env = {"POWERTOOLS_METRICS_DISABLED": "false", "POWERTOOLS_SERVICE_NAME": "tokex"}
    metrics = run_probe(
        METRICS_PROBE,
        FUNCTIONS / "exchange" / "handler.py",
        json.dumps(CRASH),
        env=env if stack is None else {**env, "TOKEX_STACK_NAME": stack},
    )
    assert metrics == [
        ["Exchanges", {"outcome": "refused", "service": "tokex", "stack": dimension}],
        ["InvalidPolicies", {"service": "tokex", "stack": dimension}],
    ]
