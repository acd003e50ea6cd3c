"""One time budget per request (TOKEX_DEADLINE_SECONDS): a stalled or dripping STS, KMS or
DynamoDB gives 503 `temporarily_unavailable` with Retry-After (docs/contract.md
"Deadline").

Each case cold-starts a handler whose settings point one upstream at a loopback server
that answers HOLD seconds late, silent until then or sending one byte every half second,
while everything else is the emulator. HOLD is far past the deadline and short of the
5 s read timeout of the clients: a handler whose calls ended by their read timeouts
instead of the deadline (15 s for a stalled KMS or DynamoDB: 5 s x 3 attempts; for ever
for a dripping one, every read returning in time) would have got the late answer. So the
tests assert that the 503 came before any late answer was sent, never how long it took
(the contract's "at most 0.5 s after the deadline" is a timing goal, not asserted here).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tests.system.endpoints import Recorded, assert_refused, exchange, sign
from tests.system.upstreams import Answer, LateUpstream, LoopbackHttpServer, late_upstream
from tokex.adapters import aws_clients as aws
from tokex.deadline import request_deadline
from tokex.introspection_clients import basic_authorization
from tokex.local.front import http_api_event
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.runner import LocalSystem, handler_environment

DEADLINE = 1.5
# How late the slow upstream answers, from the connection: well past the deadline (and
# the 0.4 s a compensating write may take after it), short of the clients' 5 s read
# timeout, which a handler that ignored the deadline would wait out.
HOLD = 4.0
IN_TIME = "the request could not be completed in time; retry later"
UPSTREAM_SETTING = {
    "sts": "TOKEX_STS_CONNECT_OVERRIDE",
    "kms": "AWS_ENDPOINT_URL_KMS",
    "dynamodb": "AWS_ENDPOINT_URL_DYNAMODB",
}


def assert_503_before_the_late_answer(
    request: Callable[[], tuple[int, dict[str, str], dict[str, Any]]],
    reason: str,
    upstream: LateUpstream,
) -> None:
    """`request` is refused for the deadline (503, this audit `reason`), and came back
    before `upstream` sent any late answer: it did not wait for one."""
    late_when_answered: list[int] = []

    def then_count() -> tuple[int, dict[str, str], dict[str, Any]]:
        try:
            return request()
        finally:
            late_when_answered.append(upstream.late_answers)

    answer = Recorded(then_count)
    body = assert_refused(answer, 503, "temporarily_unavailable", reason)
    assert body["error_description"] == IN_TIME
    assert int(answer.headers["Retry-After"]) > 0
    assert late_when_answered == [0], f"the {upstream.kind} upstream's late answer was waited for"


@pytest.mark.parametrize("kind", ["stalled", "dripping"])
@pytest.mark.parametrize("upstream", list(UPSTREAM_SETTING))
def test_slow_upstream_of_the_exchange_is_503_by_the_deadline(local_system, upstream, kind):
    with late_upstream(kind, HOLD) as bad:
        handler = cold_exchange_handler(
            local_system,
            TOKEX_DEADLINE_SECONDS=str(DEADLINE),
            **{UPSTREAM_SETTING[upstream]: bad.url},
        )
        signed = sign(local_system)
        assert_503_before_the_late_answer(
            lambda: invoke_exchange(handler, signed), f"deadline:{upstream}", bad
        )
    if upstream == "kms":
        # KMS failed after the single-use write: the compensating write (inside the
        # 0.5 s) gave the request back, and a healthy tokex accepts it.
        assert exchange(local_system, signed=signed)[0] == 200


def introspect(handler: Any, system: LocalSystem, token: str) -> tuple[int, dict, dict]:
    event = http_api_event(
        "POST",
        "/introspect",
        "",
        {
            "content-type": "application/x-www-form-urlencoded",
            "authorization": basic_authorization(*system.introspection_client),
        },
        urllib.parse.urlencode({"token": token}).encode(),
        "127.0.0.1",
    )
    result = handler.lambda_handler(event, LambdaContext("tokex-introspect"))
    return result["statusCode"], result["headers"], json.loads(result["body"])


@pytest.mark.parametrize("kind", ["stalled", "dripping"])
@pytest.mark.parametrize("upstream", ["kms", "dynamodb"])
def test_slow_upstream_of_introspection_is_503_by_the_deadline(local_system, upstream, kind):
    status, _, body = exchange(local_system)
    assert status == 200, body
    with late_upstream(kind, HOLD) as bad:
        env = local_system.handler_env(
            TOKEX_DEADLINE_SECONDS=str(DEADLINE), **{UPSTREAM_SETTING[upstream]: bad.url}
        )
        with handler_environment(env):
            handler = load_handler("introspect")
        token = body["access_token"]
        assert_503_before_the_late_answer(
            lambda: introspect(handler, local_system, token), f"deadline:{upstream}", bad
        )


# --- botocore's retries fit in the deadline -------------------------------------------


class FailingDynamoDb(LoopbackHttpServer):
    """Answers every call with a retryable 500 and counts the attempts."""

    PAYLOAD = b'{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError"}'

    def __init__(self) -> None:
        self.attempts = 0
        super().__init__(self._fail)

    def _fail(self, request: BaseHTTPRequestHandler, body: bytes) -> Answer:
        self.attempts += 1
        return 500, [("Content-Type", "application/x-amz-json-1.0")], self.PAYLOAD


@pytest.fixture
def failing_dynamodb() -> Iterator[FailingDynamoDb]:
    fake = FailingDynamoDb()
    yield fake
    fake.stop()


def get_item(endpoint: str, budget: float | None) -> None:
    dynamodb = aws.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIAEXAMPLEEXAMPLE00",
        aws_secret_access_key="secret",
    )
    with pytest.raises(ClientError) as failed:
        if budget is None:
            dynamodb.get_item(TableName="t", Key={"id": {"S": "x"}})
        else:
            with request_deadline(budget):
                dynamodb.get_item(TableName="t", Key={"id": {"S": "x"}})
    assert failed.value.response["Error"]["Code"] == "InternalServerError"


@pytest.mark.parametrize(
    ("budget", "attempts"),
    [
        pytest.param(None, aws.MAX_ATTEMPTS, id="no-deadline"),
        pytest.param(5.0, aws.MAX_ATTEMPTS, id="time-to-retry"),
        pytest.param(aws.MIN_ATTEMPT_SECONDS, 1, id="no-time-to-retry"),
    ],
)
def test_a_retry_happens_only_when_it_fits_in_the_deadline(failing_dynamodb, budget, attempts):
    get_item(failing_dynamodb.url, budget)
    assert failing_dynamodb.attempts == attempts
