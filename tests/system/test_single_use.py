"""A signed request is used up by the first exchange that gets past STS, and one DynamoDB
write decides single use and the rate limit together (see
docs/contract.md "Order of checks, and what each refusal costs").

Against the emulator with SigV4 checks on. A proxy in front of it counts, on the wire,
the calls each exchange makes.
"""

from __future__ import annotations

import time

import pytest

from tests.support.exchange_handler import (
    cold_exchange_handler,
    invoke_exchange,
    wait_for_room_in_the_rate_window,
)
from tests.system.conftest import FreshRole
from tests.system.endpoints import Recorded, assert_refused, sign
from tests.system.upstreams import CountingProxy
from tokex.local.runner import LocalSystem
from tokex.ratelimit import WINDOW_SECONDS

STS = "sts:GetCallerIdentity"
ADMIT = "DynamoDB_20120810.TransactWriteItems"
PUT = "DynamoDB_20120810.PutItem"
SIGN = "TrentService.Sign"
USED = "this signed request was already used; sign a new one for each exchange"
KMS_DOWN = "kms GetPublicKey: EndpointConnectionError"  # the first KMS call, beside the write


def policy_of(role: FreshRole) -> str:
    """The id of the policy the `fresh_role` fixture made for `role`: its role's name."""
    return role.arn.rsplit("/", 1)[1]


def assert_used_up(handler, signed, **params: str) -> None:
    """`signed` is refused as a replay: 400 `invalid_grant`, audit reason `replay`."""
    body = assert_refused(
        lambda: invoke_exchange(handler, signed, **params), 400, "invalid_grant", "replay"
    )
    assert body["error_description"] == USED


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


def assert_sts_then_write_and_sign(calls: list[str]) -> None:
    """STS first, then the one DynamoDB write (single use and the budget) and the one KMS
    Sign, in either order (they overlap); no DynamoDB read, nothing else."""
    assert calls[0] == STS, calls
    assert sorted(calls[1:]) == sorted([ADMIT, SIGN]), calls


def warm_handler_behind(system: LocalSystem, proxy: CountingProxy):
    handler = cold_exchange_handler(system, **proxy.handler_settings())
    assert invoke_exchange(handler, sign(system))[0] == 200  # cold: key, policies
    proxy.take()
    return handler


def test_a_warm_exchange_writes_once_and_a_replay_gets_no_token(local_system, counting_proxy):
    handler = warm_handler_behind(local_system, counting_proxy)
    signed = sign(local_system)
    status, _, body = invoke_exchange(handler, signed)
    assert status == 200, body
    assert_sts_then_write_and_sign(counting_proxy.take())

    # In the execution environment that saw it used up: refused before STS, at no cost.
    assert_used_up(handler, signed)
    assert counting_proxy.take() == []

    # In another environment: caught by the write, no token, no budget; KMS signed at most
    # once, while the write was in flight, and that signature was discarded.
    elsewhere = warm_handler_behind(local_system, counting_proxy)
    assert_used_up(elsewhere, signed)
    assert_sts_then_write_and_sign(counting_proxy.take())


def test_the_write_and_the_sign_are_in_flight_together(local_system, counting_proxy):
    """The proxy holds the write and the Sign until both have arrived: were they made one
    after the other, neither would be held together (and the exchange would wait out the
    hold)."""
    handler = warm_handler_behind(local_system, counting_proxy)
    counting_proxy.hold_together(ADMIT, SIGN, timeout=4)
    status, _, body = invoke_exchange(handler, sign(local_system))
    assert status == 200, body
    assert sorted(counting_proxy.held_together) == sorted([ADMIT, SIGN])
    assert_sts_then_write_and_sign(counting_proxy.take())


def test_replays_far_beyond_the_budget_leave_it_to_the_principal(local_system, fresh_role):
    """Done-when of issue 9: a leaked request replayed 30 times against a budget of 3 a
    minute; the principal's own fresh request still gets its token."""
    handler = cold_exchange_handler(local_system, TOKEX_RATE_LIMIT_PER_MINUTE="3")
    started = time.time()
    leaked = sign(local_system, credentials=fresh_role.credentials)
    assert_refused(
        lambda: invoke_exchange(handler, leaked, scope="demo:admin"),
        400,
        "invalid_scope",
        f"policy {policy_of(fresh_role)} does not grant demo:admin",
    )
    for _ in range(30):
        assert_used_up(handler, leaked, scope="demo:admin")
    assert budget_spent(local_system, fresh_role.arn, started) == 1

    fresh = sign(local_system, credentials=fresh_role.credentials)
    status, _, body = invoke_exchange(handler, fresh, scope="demo:read")
    assert status == 200, body
    assert budget_spent(local_system, fresh_role.arn, started) == 2


@pytest.mark.parametrize(
    ("first_params", "first_error", "first_reason"),
    [
        pytest.param(
            {"audience": "payments-api"},
            "invalid_target",
            "policy {} does not cover the audience",
            id="invalid_target",
        ),
        pytest.param(
            {"scope": "demo:admin"},
            "invalid_scope",
            "policy {} does not grant demo:admin",
            id="invalid_scope",
        ),
    ],
)
def test_a_refusal_after_sts_uses_the_request_up(
    local_system, fresh_role, first_params, first_error, first_reason
):
    # A cold handler: its policies are read now, the fresh role's included.
    handler = cold_exchange_handler(local_system)
    signed = sign(local_system, credentials=fresh_role.credentials)
    assert_refused(
        lambda: invoke_exchange(handler, signed, **first_params),
        400,
        first_error,
        first_reason.format(policy_of(fresh_role)),
    )
    # The same signed request, now asking for what the policy grants: still refused.
    assert_used_up(handler, signed, scope="demo:read")


def test_a_request_refused_for_the_budget_is_used_up_too(local_system, fresh_role):
    handler = cold_exchange_handler(local_system, TOKEX_RATE_LIMIT_PER_MINUTE="1")
    wait_for_room_in_the_rate_window()
    started = time.time()
    status, _, body = invoke_exchange(
        handler, sign(local_system, credentials=fresh_role.credentials), scope="demo:read"
    )
    assert status == 200, body
    signed = sign(local_system, credentials=fresh_role.credentials)
    assert_refused(
        lambda: invoke_exchange(handler, signed, scope="demo:read"),
        429,
        "temporarily_unavailable",
        "rate_limited",
    )
    # Once the minute turns it would pass the budget: it must not pass single use.
    assert_used_up(handler, signed, scope="demo:read")
    assert budget_spent(local_system, fresh_role.arn, started) == 1


def test_a_kms_failure_gives_the_request_and_the_budget_back(
    local_system, fresh_role, refused_port
):
    broken = cold_exchange_handler(
        local_system, AWS_ENDPOINT_URL_KMS=f"http://127.0.0.1:{refused_port}"
    )
    started = time.time()
    signed = sign(local_system, credentials=fresh_role.credentials)
    answer = Recorded(lambda: invoke_exchange(broken, signed, scope="demo:read"))
    assert_refused(answer, 503, "temporarily_unavailable", KMS_DOWN)
    assert int(answer.headers["Retry-After"]) > 0
    assert budget_spent(local_system, fresh_role.arn, started) == 0  # the unit came back
    # The compensating write released the record: the caller retries the same request.
    healthy = cold_exchange_handler(local_system)
    status, _, body = invoke_exchange(healthy, signed, scope="demo:read")
    assert status == 200, body
    assert_used_up(healthy, signed, scope="demo:read")


def test_a_sign_failure_after_the_write_is_undone_by_one_compensating_write(
    local_system, fresh_role, counting_proxy
):
    """Issue 11: KMS fails after the admission write succeeded (a warm handler, whose
    key is already known, so the first KMS call is the Sign): the answer is 503 with
    Retry-After and no token, and exactly one more write gives the request and the budget
    back. The same environment then accepts the same signed request: the release also
    reaches its in-memory record of used requests."""
    handler = warm_handler_behind(local_system, counting_proxy)
    started = time.time()
    signed = sign(local_system, credentials=fresh_role.credentials)
    counting_proxy.fail(SIGN, 500, "KMSInternalException")
    answer = Recorded(lambda: invoke_exchange(handler, signed, scope="demo:read"))
    assert_refused(answer, 503, "temporarily_unavailable", "kms Sign: KMSInternalException")
    assert int(answer.headers["Retry-After"]) > 0
    calls = counting_proxy.take()
    # STS, then the write beside the Sign (retried by the SDK within the deadline),
    # then the one compensating write, last.
    assert calls[0] == STS, calls
    assert calls.count(ADMIT) == 2, calls
    assert calls[-1] == ADMIT, calls
    assert set(calls[1:-1]) == {ADMIT, SIGN}, calls
    assert budget_spent(local_system, fresh_role.arn, started) == 0

    counting_proxy.heal()
    status, _, body = invoke_exchange(handler, signed, scope="demo:read")
    assert status == 200, body
    assert_sts_then_write_and_sign(counting_proxy.take())
    assert_used_up(handler, signed, scope="demo:read")


def test_single_use_alone_and_its_release_survive_a_lost_answer(
    local_system, fresh_role, counting_proxy
):
    """With the rate limit off, single use is one PutItem, which (unlike a transaction)
    carries no idempotency token: the SDK's retry after a lost answer meets the record its
    own first attempt wrote, and must take it for its own, not for a replay. A release
    retried the same way must still give the request back."""
    alone = {"TOKEX_RATE_LIMIT_PER_MINUTE": "0"}
    handler = cold_exchange_handler(local_system, **alone, **counting_proxy.handler_settings())
    assert invoke_exchange(handler, sign(local_system))[0] == 200  # cold: key, policies
    counting_proxy.take()

    counting_proxy.lose_an_answer(PUT)
    signed = sign(local_system, credentials=fresh_role.credentials)
    status, _, body = invoke_exchange(handler, signed, scope="demo:read")
    assert status == 200, body
    assert counting_proxy.take().count(PUT) == 2  # the write, then the SDK's retry
    assert_used_up(cold_exchange_handler(local_system, **alone), signed, scope="demo:read")

    counting_proxy.fail(SIGN, 500, "KMSInternalException")
    counting_proxy.lose_an_answer(PUT, after=1)  # the admission's answer comes; the release's not
    signed = sign(local_system, credentials=fresh_role.credentials)
    answer = Recorded(lambda: invoke_exchange(handler, signed, scope="demo:read"))
    assert_refused(answer, 503, "temporarily_unavailable", "kms Sign: KMSInternalException")
    assert counting_proxy.take().count(PUT) == 3  # the admission, the release and its retry
    counting_proxy.heal()
    status, _, body = invoke_exchange(handler, signed, scope="demo:read")
    assert status == 200, body  # given back, in this environment as in the table


def test_the_admission_transaction_survives_a_lost_answer(local_system, fresh_role, counting_proxy):
    """Single use and the rate limit together: the SDK's retry of the transaction after a
    lost answer is neither refused as a replay of its own request nor counted twice."""
    handler = warm_handler_behind(local_system, counting_proxy)
    started = time.time()
    counting_proxy.lose_an_answer(ADMIT)
    signed = sign(local_system, credentials=fresh_role.credentials)
    status, _, body = invoke_exchange(handler, signed, scope="demo:read")
    assert status == 200, body
    assert counting_proxy.take().count(ADMIT) == 2
    assert budget_spent(local_system, fresh_role.arn, started) == 1
    assert_used_up(cold_exchange_handler(local_system), signed, scope="demo:read")
