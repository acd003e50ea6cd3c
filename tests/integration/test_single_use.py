"""A signed request is used up by the first exchange that gets past STS, and one DynamoDB
write decides single use and the rate limit together (see
docs/contract.md "Order of checks, and what each refusal costs").

Against the emulator with SigV4 checks on. A proxy in front of it counts, on the wire,
the calls each exchange makes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_exchange import Captured, sign
from tests.integration.upstreams import CountingProxy
from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tokex.local.emulator import free_port
from tokex.local.runner import LocalSystem
from tokex.ratelimit import WINDOW_SECONDS

STS = "sts:GetCallerIdentity"
ADMIT = "DynamoDB_20120810.TransactWriteItems"
SIGN = "TrentService.Sign"
USED = "this signed request was already used; sign a new one for each exchange"


@contextlib.contextmanager
def audit_lines() -> Iterator[list[dict[str, Any]]]:
    """The exchange handlers' audit lines written inside the block."""
    service_logger = logging.getLogger("tokex")
    captured = Captured(service_logger.handlers[0].formatter)
    service_logger.addHandler(captured)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        service_logger.removeHandler(captured)
        lines.extend(line for line in captured.lines if line.get("message") == "token exchange")


@pytest.fixture
def proxy(local_system: LocalSystem) -> Iterator[CountingProxy]:
    counting = CountingProxy(local_system.deployment.endpoint_url)
    yield counting
    counting.stop()


def budget_spent(system: LocalSystem, principal: str, since: float) -> int:
    """Exchanges counted for `principal` in the minute windows since `since`."""
    dynamodb = system.deployment.client("dynamodb")
    first, last = int(since) // WINDOW_SECONDS, int(time.time()) // WINDOW_SECONDS
    hits = 0
    for window in range(first, last + 1):
        key = {"id": {"S": f"rate#{principal}#{window}"}}
        item = dynamodb.get_item(TableName=system.deployment.state_table, Key=key).get("Item")
        hits += int(item["hits"]["N"]) if item else 0
    return hits


def test_a_warm_exchange_writes_once_and_a_replay_never_reaches_kms(local_system, proxy):
    handler = cold_exchange_handler(
        local_system, AWS_ENDPOINT_URL=proxy.url, TOKEX_STS_CONNECT_OVERRIDE=proxy.url
    )
    assert invoke_exchange(handler, sign(local_system))[0] == 200  # cold: key, policies
    proxy.take()

    signed = sign(local_system)
    status, _, body = invoke_exchange(handler, signed)
    assert status == 200, body
    # One STS call, one DynamoDB write (single use and the budget), one KMS Sign; no read.
    assert proxy.take() == [STS, ADMIT, SIGN]

    with audit_lines() as audits:
        status, _, body = invoke_exchange(handler, signed)
    assert (status, body["error"], body["error_description"]) == (400, "invalid_grant", USED)
    assert [(a["outcome"], a["reason"]) for a in audits] == [("refused", "replay")]
    assert proxy.take() == [STS, ADMIT]  # caught by the write: no budget, no KMS


def test_replays_far_beyond_the_budget_leave_it_to_the_principal(local_system, fresh_role):
    """Done-when of issue 9: a leaked request replayed 30 times against a budget of 3 a
    minute; the principal's own fresh request still gets its token."""
    handler = cold_exchange_handler(local_system, TOKEX_RATE_LIMIT_PER_MINUTE="3")
    started = time.time()
    leaked = sign(local_system, credentials=fresh_role.credentials)
    status, _, body = invoke_exchange(handler, leaked, scope="demo:admin")
    assert (status, body["error"]) == (400, "invalid_scope")
    with audit_lines() as audits:
        replies = [invoke_exchange(handler, leaked, scope="demo:admin") for _ in range(30)]
    assert {(status, body["error_description"]) for status, _, body in replies} == {(400, USED)}
    assert {a["reason"] for a in audits} == {"replay"}
    assert budget_spent(local_system, fresh_role.arn, started) == 1

    fresh = sign(local_system, credentials=fresh_role.credentials)
    status, _, body = invoke_exchange(handler, fresh, scope="demo:read")
    assert status == 200, body
    assert budget_spent(local_system, fresh_role.arn, started) == 2


@pytest.mark.parametrize(
    ("first_params", "first_error"),
    [
        pytest.param({"audience": "payments-api"}, "invalid_target", id="invalid_target"),
        pytest.param({"scope": "demo:admin"}, "invalid_scope", id="invalid_scope"),
    ],
)
def test_a_refusal_after_sts_uses_the_request_up(
    local_system, fresh_role, first_params, first_error
):
    # A cold handler: its policies are read now, the fresh role's included.
    handler = cold_exchange_handler(local_system)
    signed = sign(local_system, credentials=fresh_role.credentials)
    status, _, body = invoke_exchange(handler, signed, **first_params)
    assert (status, body["error"]) == (400, first_error)
    # The same signed request, now asking for what the policy grants: still refused.
    status, _, body = invoke_exchange(handler, signed, scope="demo:read")
    assert (status, body["error"], body["error_description"]) == (400, "invalid_grant", USED)


def test_a_request_refused_for_the_budget_is_used_up_too(local_system, fresh_role):
    handler = cold_exchange_handler(local_system, TOKEX_RATE_LIMIT_PER_MINUTE="1")
    started = time.time()
    statuses = []
    for _ in range(2):
        signed = sign(local_system, credentials=fresh_role.credentials)
        statuses.append(invoke_exchange(handler, signed, scope="demo:read")[0])
    if statuses == [200, 200]:
        pytest.skip("the minute turned between the two requests")
    assert statuses == [200, 429]
    # Once the minute turns it would pass the budget: it must not pass single use.
    status, _, body = invoke_exchange(handler, signed, scope="demo:read")
    assert (status, body["error_description"]) == (400, USED)
    assert budget_spent(local_system, fresh_role.arn, started) == 1


def test_a_kms_failure_gives_the_request_and_the_budget_back(local_system, fresh_role):
    broken = cold_exchange_handler(
        local_system, AWS_ENDPOINT_URL_KMS=f"http://127.0.0.1:{free_port()}"
    )
    started = time.time()
    signed = sign(local_system, credentials=fresh_role.credentials)
    status, headers, body = invoke_exchange(broken, signed, scope="demo:read")
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    assert int(headers["Retry-After"]) > 0
    assert budget_spent(local_system, fresh_role.arn, started) == 0  # the unit came back
    # The compensating write released the record: the caller retries the same request.
    healthy = cold_exchange_handler(local_system)
    status, _, body = invoke_exchange(healthy, signed, scope="demo:read")
    assert status == 200, body
    status, _, body = invoke_exchange(healthy, signed, scope="demo:read")
    assert (status, body["error_description"]) == (400, USED)
