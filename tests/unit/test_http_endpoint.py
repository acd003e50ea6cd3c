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
