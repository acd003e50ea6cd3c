"""Single use and the rate limit in one DynamoDB write (moto in process: boto3 code only).

The whole exchange against the emulator with SigV4 checks: tests/system/
test_single_use.py.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.support.dynamodb_conflict import ConflictingOnce
from tokex import deadline
from tokex.adapters.state_table.admission import CONFLICT_ATTEMPTS, Admission, DynamoDbAdmission
from tokex.adapters.state_table.schema import create_state_table, used_evidence_key
from tokex.errors import InvalidGrant, Misconfigured, RateLimited, TemporarilyUnavailable
from tokex.evidence.replay import UsedEvidence, signature_digest, used_signature
from tokex.evidence.sigv4_request import STS_BODY, StsRequest
from tokex.local import moto_fixes

TABLE = "state"
ROLE = "arn:aws:iam::123456789012:role/app"
OTHER = "arn:aws:iam::123456789012:role/other"
NOW = 1_800_000_010.0  # 10 s into a minute window
WINDOW = int(NOW) // 60


def signed() -> StsRequest:
    """A fresh signed request (only its signature and date matter here)."""
    return StsRequest(
        host="sts.us-east-1.amazonaws.com",
        region="us-east-1",
        partition="aws",
        headers=(),
        body=STS_BODY,
        amz_date=datetime.fromtimestamp(NOW, UTC),
        signature=secrets.token_hex(32),
        access_key_id="ASIAEXAMPLEEXAMPLE00",
    )


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_state_table(client, TABLE)
        yield client


def admission(dynamodb: Any, *, single_use: bool = True, limit: int = 5) -> DynamoDbAdmission:
    return DynamoDbAdmission(
        dynamodb, TABLE, single_use=single_use, rate_limit_per_minute=limit, clock=lambda: NOW
    )


def item(dynamodb: Any, key: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = dynamodb.get_item(TableName=TABLE, Key={"id": {"S": key}}).get(
        "Item"
    )
    return found


def hits(dynamodb: Any, principal: str = ROLE) -> int:
    counter = item(dynamodb, f"rate#{principal}#{WINDOW}")
    return int(counter["hits"]["N"]) if counter else 0


def test_first_use_records_the_signature_and_charges_one_unit(dynamodb) -> None:
    request = signed()
    admission(dynamodb).admit(used_signature(request), ROLE)
    record = item(dynamodb, used_evidence_key(signature_digest(request)))
    assert record is not None and "released_at" not in record
    assert int(record["expires_at"]["N"]) == int(NOW) + 20 * 60  # the date window's end
    assert hits(dynamodb) == 1


def test_a_replay_is_refused_and_charges_nothing(dynamodb) -> None:
    store, request = admission(dynamodb), signed()
    store.admit(used_signature(request), ROLE)
    for _ in range(10):
        with pytest.raises(InvalidGrant) as refused:
            store.admit(used_signature(request), ROLE)
        assert refused.value.reason == "replay"
    assert hits(dynamodb) == 1


def test_over_the_budget_is_429_and_uses_the_request_up(dynamodb) -> None:
    store = admission(dynamodb, limit=2)
    store.admit(used_signature(signed()), ROLE)
    store.admit(used_signature(signed()), ROLE)
    over = signed()
    with pytest.raises(RateLimited) as limited:
        store.admit(used_signature(over), ROLE)
    assert limited.value.status == 429 and limited.value.headers() == {"Retry-After": "50"}
    assert hits(dynamodb) == 2  # the refused request was not counted...
    with pytest.raises(InvalidGrant) as replay:  # ...but it is used up
        store.admit(used_signature(over), ROLE)
    assert replay.value.reason == "replay"
    store.admit(used_signature(signed()), OTHER)  # another principal has its own budget


def test_the_next_window_has_a_fresh_budget(dynamodb) -> None:
    now = [NOW]
    store = DynamoDbAdmission(
        dynamodb, TABLE, single_use=True, rate_limit_per_minute=1, clock=lambda: now[0]
    )
    store.admit(used_signature(signed()), ROLE)
    with pytest.raises(RateLimited):
        store.admit(used_signature(signed()), ROLE)
    now[0] += 60
    store.admit(used_signature(signed()), ROLE)


def test_release_gives_the_request_and_the_unit_back(dynamodb) -> None:
    store, request = admission(dynamodb), signed()
    admitted = store.admit(used_signature(request), ROLE)
    assert store.release(admitted)
    assert hits(dynamodb) == 0
    record = item(dynamodb, used_evidence_key(signature_digest(request)))
    assert record is not None and "released_at" in record
    again = store.admit(used_signature(request), ROLE)  # the caller retries the same signed request
    assert hits(dynamodb) == 1
    # A late second release of the first admission must not free the live one.
    assert not store.release(admitted)
    with pytest.raises(InvalidGrant):
        store.admit(used_signature(request), ROLE)
    assert store.release(again)


@pytest.mark.parametrize(("single_use", "limit"), [(True, 0), (False, 1)])
def test_one_feature_alone_is_one_conditional_write(dynamodb, single_use, limit) -> None:
    store, request = admission(dynamodb, single_use=single_use, limit=limit), signed()
    admitted = store.admit(used_signature(request), ROLE)
    expected: type[Exception] = InvalidGrant if single_use else RateLimited
    with pytest.raises(expected):
        store.admit(used_signature(request), ROLE)
    assert store.release(admitted)
    store.admit(used_signature(request), ROLE)
    assert (item(dynamodb, used_evidence_key(signature_digest(request))) is not None) == single_use
    assert hits(dynamodb) == (0 if single_use else 1)


def racing_admission(
    racing: ConflictingOnce, sleep: Callable[[float], None] = lambda _: None
) -> DynamoDbAdmission:
    return DynamoDbAdmission(
        racing, TABLE, single_use=True, rate_limit_per_minute=5, clock=lambda: NOW, sleep=sleep
    )


def test_a_transaction_conflict_is_retried(dynamodb) -> None:
    racing = ConflictingOnce(dynamodb)
    store = racing_admission(racing)
    store.admit(used_signature(signed()), ROLE)
    assert racing.conflicts == 0 and hits(dynamodb) == 1


BURST = 8


def test_a_burst_of_one_principal_is_admitted_whole_through_conflicts(
    dynamodb, monkeypatch
) -> None:
    """Environments of one role exchanging at once: their transactions on the one `rate#`
    item cancel each other (the emulator holds a transaction's items while it runs, as
    DynamoDB does), and each tries again until every exchange is admitted, counted once."""
    moto_fixes.install()
    monkeypatch.setattr(moto_fixes, "transaction_seconds", 0.02)
    conflicts: list[int] = []

    def count_conflicts(parsed: dict[str, Any], **_: Any) -> None:
        reasons = parsed.get("CancellationReasons") or []
        conflicts.extend(1 for r in reasons if r.get("Code") == "TransactionConflict")

    dynamodb.meta.events.register("after-call.dynamodb.TransactWriteItems", count_conflicts)
    store = admission(dynamodb, limit=100)
    start = threading.Barrier(BURST)

    def exchange() -> Admission:
        start.wait()
        with deadline.request_deadline(6):
            return store.admit(used_signature(signed()), ROLE)

    with ThreadPoolExecutor(BURST) as pool:
        admitted = [future.result() for future in [pool.submit(exchange) for _ in range(BURST)]]
    assert len({a.id for a in admitted}) == BURST
    assert hits(dynamodb) == BURST
    assert conflicts  # they did collide


def test_a_release_is_retried_after_a_conflict_too(dynamodb) -> None:
    """Otherwise an outage amid a burst would use the caller's signed request up."""
    racing = ConflictingOnce(dynamodb)
    racing.conflicts = 0
    store = racing_admission(racing)
    request = signed()
    admitted = store.admit(used_signature(request), ROLE)
    racing.conflicts = 1
    assert store.release(admitted)
    assert racing.conflicts == 0 and hits(dynamodb) == 0
    store.admit(used_signature(request), ROLE)  # usable again


def test_conflicts_are_retried_only_while_the_deadline_leaves_room(dynamodb) -> None:
    """A transaction that keeps conflicting ends as a 503 naming the conflict, well before
    the request's deadline, and charges nothing."""
    racing = ConflictingOnce(dynamodb)
    racing.conflicts = 1_000
    pauses: list[float] = []
    store = racing_admission(racing, sleep=pauses.append)
    with deadline.request_deadline(6), pytest.raises(TemporarilyUnavailable) as failed:
        store.admit(used_signature(signed()), ROLE)
    assert failed.value.reason == (
        "dynamodb TransactWriteItems: TransactionCanceledException/TransactionConflict"
    )
    assert len(pauses) == CONFLICT_ATTEMPTS - 1 and sum(pauses) < 2
    assert hits(dynamodb) == 0
    # With the deadline nearly spent, no attempt is started that could not finish.
    pauses.clear()
    with deadline.request_deadline(0.2), pytest.raises(TemporarilyUnavailable):
        store.admit(used_signature(signed()), ROLE)
    assert pauses == []


def test_store_failure_is_503_and_release_never_raises(dynamodb) -> None:
    store = DynamoDbAdmission(dynamodb, "missing-table", single_use=True, rate_limit_per_minute=5)
    with pytest.raises(TemporarilyUnavailable) as failed:
        store.admit(used_signature(signed()), ROLE)
    assert failed.value.status == 503
    assert failed.value.reason.startswith("dynamodb TransactWriteItems")
    admitted = admission(dynamodb).admit(used_signature(signed()), ROLE)
    assert not store.release(admitted)


def test_a_table_of_another_key_schema_is_a_misconfiguration(dynamodb) -> None:
    """DynamoDB's ValidationException is never answered otherwise on a retry: the
    operator's to fix (a longer Retry-After, outcome `misconfigured`), not a passing
    outage."""
    dynamodb.create_table(
        TableName="keyed-otherwise",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    store = DynamoDbAdmission(dynamodb, "keyed-otherwise", single_use=True, rate_limit_per_minute=5)
    with pytest.raises(Misconfigured) as failed:
        store.admit(used_signature(signed()), ROLE)
    assert failed.value.reason == "dynamodb TransactWriteItems: ValidationException"
    assert failed.value.headers()["Retry-After"] == "60"


# --- JWT evidence: an AWS OIF token is single use by its jti; an EKS token is not --------


def test_an_oif_token_is_used_up_by_its_digest_and_a_replay_says_token(dynamodb) -> None:
    store = admission(dynamodb)
    token = UsedEvidence("ab" * 32, int(NOW) + 360, what="token")
    store.admit(token, ROLE)
    record = item(dynamodb, used_evidence_key(token.digest))
    assert record is not None and record["expires_at"]["N"] == str(int(NOW) + 360)
    with pytest.raises(InvalidGrant) as replay:
        store.admit(token, ROLE)
    assert replay.value.reason == "replay"
    assert replay.value.description.startswith("this token was already used")
    assert hits(dynamodb) == 1  # the replay charged nothing


def test_evidence_that_is_not_single_use_only_charges_the_budget(dynamodb) -> None:
    store = admission(dynamodb, limit=2)
    first = store.admit(None, ROLE)
    store.admit(None, ROLE)  # the same EKS token again: not a replay
    with pytest.raises(RateLimited):
        store.admit(None, ROLE)
    assert hits(dynamodb) == 2
    scanned = dynamodb.scan(TableName=TABLE)["Items"]
    assert not [i for i in scanned if i["id"]["S"].startswith("sig#")]
    assert store.release(first) and hits(dynamodb) == 1


def test_no_single_use_and_no_budget_writes_nothing(dynamodb) -> None:
    store = admission(dynamodb, single_use=True, limit=0)
    admitted = store.admit(None, ROLE)
    assert dynamodb.scan(TableName=TABLE)["Items"] == []
    assert store.release(admitted)


def test_a_regional_exchange_counts_in_its_own_items(dynamodb) -> None:
    """Counters keyed per Region: the replicas of a global table never write one item
    from two Regions (docs/security.md "Regional exchanges")."""
    store = DynamoDbAdmission(
        dynamodb, TABLE, single_use=True, rate_limit_per_minute=5, region="eu-west-1",
        clock=lambda: NOW,
    )  # fmt: skip
    store.admit(used_signature(signed()), ROLE)
    assert item(dynamodb, f"rate#eu-west-1#{ROLE}#{WINDOW}")["hits"]["N"] == "1"
    assert hits(dynamodb) == 0  # the Region-less counter is untouched
