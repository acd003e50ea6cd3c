"""The revocation records against in-process moto DynamoDB: a record is never moved back
in time. End to end through `tokex revoke` and introspection: tests/system/test_revocation.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.in_process_state_table import state_table
from tokex.adapters.state_table.revocations import TTL_MARGIN_SECONDS, RevocationStore
from tokex.errors import TemporarilyUnavailable

TABLE = "tokex-state-test"
PRINCIPAL = "arn:aws:iam::123456789012:role/orders"
CAP = 3600


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with state_table(monkeypatch, TABLE) as client:
        yield client


def store_at(dynamodb: Any, now: float) -> RevocationStore:
    return RevocationStore(dynamodb, TABLE, ttl_cap_seconds=CAP, clock=lambda: now)


def stored(dynamodb: Any, item_id: str) -> dict[str, Any]:
    item = dynamodb.get_item(TableName=TABLE, Key={"id": {"S": item_id}}, ConsistentRead=True)
    return item["Item"]


@pytest.mark.parametrize("kind", ["principal", "jti"])
def test_a_revocation_dated_earlier_keeps_the_later_record(dynamodb, kind):
    def revoke(now: float):
        store = store_at(dynamodb, now)
        if kind == "principal":
            return store.revoke_principal(PRINCIPAL)
        return store.revoke_jti("jti-1")

    later = revoke(2_000_000_000)
    # Another operator's machine, its clock 60 s behind, revokes the same principal.
    lagging = revoke(2_000_000_000 - 60)
    assert (lagging.revoked_at, lagging.expires_at) == (later.revoked_at, later.expires_at)
    assert later.expires_at == 2_000_000_000 + CAP + TTL_MARGIN_SECONDS
    item = stored(dynamodb, f"revoked-{kind}#{PRINCIPAL if kind == 'principal' else 'jti-1'}")
    assert item["revoked_at"] == {"N": "2000000000"}
    assert item["expires_at"] == {"N": str(later.expires_at)}
    # A token issued between the two instants stays revoked.
    check = store_at(dynamodb, 2_000_000_100).revoked
    assert check(jti="other", principal=PRINCIPAL, issued_at=2_000_000_000 - 30) == (
        "principal" if kind == "principal" else None
    )


def test_a_revocation_dated_later_or_equal_replaces_the_record(dynamodb):
    first = store_at(dynamodb, 2_000_000_000).revoke_principal(PRINCIPAL)
    again = store_at(dynamodb, 2_000_000_000).revoke_principal(PRINCIPAL)
    assert again == first
    later = store_at(dynamodb, 2_000_000_500).revoke_principal(PRINCIPAL)
    assert later.revoked_at == 2_000_000_500
    assert stored(dynamodb, f"revoked-principal#{PRINCIPAL}")["revoked_at"] == {"N": "2000000500"}
    check = store_at(dynamodb, 2_000_000_600).revoked
    assert check(jti="j", principal=PRINCIPAL, issued_at=2_000_000_400) == "principal"
    assert check(jti="j", principal=PRINCIPAL, issued_at=2_000_000_501) is None


def test_a_record_with_an_unreadable_time_is_replaced(dynamodb):
    # Such a record revoked everything (fail closed); a revocation gives it a real time.
    dynamodb.put_item(
        TableName=TABLE,
        Item={"id": {"S": f"revoked-principal#{PRINCIPAL}"}, "revoked_at": {"S": "garbage"}},
    )
    revocation = store_at(dynamodb, 2_000_000_000).revoke_principal(PRINCIPAL)
    assert revocation.revoked_at == 2_000_000_000
    assert stored(dynamodb, f"revoked-principal#{PRINCIPAL}")["revoked_at"] == {"N": "2000000000"}


def test_a_record_dated_far_ahead_is_corrected_by_a_revocation_from_a_right_clock(dynamodb):
    """A machine whose clock ran 30 days ahead wrote it: it would revoke every token the
    principal gets for a month. Ahead by less than the tolerated skew, it is kept."""
    now = 2_000_000_000
    store_at(dynamodb, now + 30 * 86400).revoke_principal(PRINCIPAL)
    corrected = store_at(dynamodb, now).revoke_principal(PRINCIPAL)
    assert corrected.revoked_at == now
    check = store_at(dynamodb, now + 86400).revoked
    assert check(jti="j", principal=PRINCIPAL, issued_at=now + 3600) is None
    store_at(dynamodb, now + 100 + TTL_MARGIN_SECONDS).revoke_principal(PRINCIPAL)
    kept = store_at(dynamodb, now + 100).revoke_principal(PRINCIPAL)
    assert kept.revoked_at == now + 100 + TTL_MARGIN_SECONDS


@pytest.mark.parametrize(
    ("typed", "sub"),
    [
        ("arn:aws:iam::123456789012:role/orders-api", "arn:aws:iam::123456789012:role/Orders-API"),
        ("arn:aws:iam::123456789012:role/ORDERS-API", "arn:aws:iam::123456789012:role/orders-api"),
        ("arn:aws:iam::123456789012:user/ops/Alice", "arn:aws:iam::123456789012:user/ops/alice"),
    ],
)
def test_a_principal_revoked_in_another_case_is_revoked(dynamodb, typed, sub):
    """IAM names are unique whatever their case: the operator's spelling can only mean
    the principal STS names in the token's `sub`."""
    store = store_at(dynamodb, 2_000_000_000)
    store.revoke_principal(typed)
    assert store.revoked(jti="j", principal=sub, issued_at=2_000_000_000) == "principal"
    assert store.revoked(jti="j", principal=PRINCIPAL, issued_at=2_000_000_000) is None


def test_a_revocation_written_under_the_arn_as_typed_is_still_read(dynamodb):
    """Records written before keys were folded (until they expire after an upgrade)."""
    sub = "arn:aws:iam::123456789012:role/Orders-API"
    dynamodb.put_item(
        TableName=TABLE,
        Item={"id": {"S": f"revoked-principal#{sub}"}, "revoked_at": {"N": "2000000000"}},
    )
    store = store_at(dynamodb, 2_000_000_100)
    assert store.revoked(jti="j", principal=sub, issued_at=2_000_000_000) == "principal"
    assert store.revoked(jti="j", principal=sub, issued_at=2_000_000_001) is None


@pytest.mark.parametrize(
    "typed",
    [
        "arn:aws:iam::123456789012:user/Bob",  # the path left out
        "arn:aws:iam::123456789012:user/ops/Bob",
        "arn:aws:iam::123456789012:user/other/path/bob",  # another path: the same user
    ],
)
def test_a_user_revoked_without_or_with_another_path_is_revoked(dynamodb, typed):
    """IAM user names are unique in an account whatever their path, and the token's `sub`
    carries the path STS reports: `user/Bob` revoked nothing of `user/ops/Bob`, silently."""
    store = store_at(dynamodb, 2_000_000_000)
    store.revoke_principal(typed)
    sub = "arn:aws:iam::123456789012:user/ops/Bob"
    assert store.revoked(jti="j", principal=sub, issued_at=2_000_000_000) == "principal"
    other = "arn:aws:iam::123456789012:user/ops/Bobby"
    assert store.revoked(jti="j", principal=other, issued_at=2_000_000_000) is None
    elsewhere = "arn:aws:iam::210987654321:user/ops/Bob"
    assert store.revoked(jti="j", principal=elsewhere, issued_at=2_000_000_000) is None


def test_a_user_revocation_written_with_its_path_in_the_key_is_still_read(dynamodb):
    """Records written before users' paths were left out of keys (until they expire)."""
    dynamodb.put_item(
        TableName=TABLE,
        Item={
            "id": {"S": "revoked-principal#arn:aws:iam::123456789012:user/ops/bob"},
            "revoked_at": {"N": "2000000000"},
        },
    )
    store = store_at(dynamodb, 2_000_000_100)
    sub = "arn:aws:iam::123456789012:user/ops/Bob"
    assert store.revoked(jti="j", principal=sub, issued_at=2_000_000_000) == "principal"


@pytest.mark.parametrize(
    ("typed", "earlier_keys"),
    [
        # Read by introspect functions before users' paths left the keys (lower case),
        # and before keys were folded at all (the ARN as typed).
        (
            "arn:aws:iam::123456789012:user/ops/Bob",
            ["arn:aws:iam::123456789012:user/ops/bob", "arn:aws:iam::123456789012:user/ops/Bob"],
        ),
        (
            "arn:aws:iam::123456789012:role/OrdersService",
            ["arn:aws:iam::123456789012:role/OrdersService"],
        ),
        ("arn:aws:iam::123456789012:role/orders", []),  # every form is the same key
    ],
)
def test_a_revocation_is_also_written_where_earlier_introspect_functions_read(
    dynamodb, typed, earlier_keys
):
    """A stack not yet upgraded reads only its own key form: `tokex revoke` reported
    success while that stack's introspection kept the tokens active."""
    store_at(dynamodb, 2_000_000_000).revoke_principal(typed)
    items = dynamodb.scan(TableName=TABLE)["Items"]
    written = sorted(item["id"]["S"].removeprefix("revoked-principal#") for item in items)
    folded = typed.lower().replace("user/ops/", "user/")
    assert written == sorted({folded, *earlier_keys})
    for key in written:
        assert stored(dynamodb, f"revoked-principal#{key}")["revoked_at"] == {"N": "2000000000"}


def test_an_eks_principal_is_matched_in_its_own_case(dynamodb):
    """EKS cluster names are case-sensitive: `Prod` and `prod` are two clusters."""
    store = store_at(dynamodb, 2_000_000_000)
    store.revoke_principal("eks:123456789012:us-east-1:Prod:payments:api")
    check = store.revoked
    assert check(
        jti="j", principal="eks:123456789012:us-east-1:Prod:payments:api", issued_at=1
    ) == ("principal")
    assert (
        check(jti="j", principal="eks:123456789012:us-east-1:prod:payments:api", issued_at=1)
        is None
    )


# --- reads DynamoDB answers in part, or eventually: never "not revoked" ---------------------


def _stubbed(
    answers: list[dict[str, Any]], pauses: list[float] | None = None
) -> tuple[RevocationStore, Any]:
    """A store on a botocore client that answers each BatchGetItem with the next of
    `answers` (the keys left unprocessed, or the items), checking every request is a
    consistent read of the keys asked for; the pauses it makes go to `pauses`, not by."""
    import botocore.session
    from botocore.stub import ANY, Stubber

    client = botocore.session.get_session().create_client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    stubber = Stubber(client)
    for answer in answers:
        expected = {
            "RequestItems": {
                TABLE: {
                    "Keys": ANY,
                    "ConsistentRead": True,  # a revocation takes effect at once
                    "ProjectionExpression": ANY,
                    "ExpressionAttributeNames": ANY,
                }
            }
        }
        stubber.add_response("batch_get_item", answer, expected)
    stubber.activate()
    sleep = (pauses if pauses is not None else []).append
    return RevocationStore(client, TABLE, ttl_cap_seconds=CAP, sleep=sleep), stubber


def _unprocessed() -> dict[str, Any]:
    # As DynamoDB hands them back: the keys with the request's other parameters.
    request = {
        "Keys": [{"id": {"S": "jti#x"}}],
        "ConsistentRead": True,
        "ProjectionExpression": "#i, #r",
        "ExpressionAttributeNames": {"#i": "id", "#r": "revoked_at"},
    }
    return {"Responses": {TABLE: []}, "UnprocessedKeys": {TABLE: request}}


def test_keys_left_unprocessed_are_never_read_as_not_revoked() -> None:
    """DynamoDB may leave keys unprocessed under throttling: asked again, and when they
    stay so, the answer is 503, not "not revoked" (which would make a revoked token
    active)."""
    store, stubber = _stubbed([_unprocessed() for _ in range(3)])
    with pytest.raises(TemporarilyUnavailable) as failed:
        store.revoked(jti="x", principal=PRINCIPAL, issued_at=1)
    assert failed.value.reason == "dynamodb BatchGetItem: unprocessed"
    stubber.assert_no_pending_responses()


def test_keys_left_unprocessed_are_asked_again_after_a_pause() -> None:
    """Asked again at once, throttled keys may well stay unprocessed (the API reference
    recommends exponential backoff): a jittered pause before each new attempt, none after
    the last, each within the backoff's bound for its attempt."""
    from tokex.adapters.state_table import revocations

    pauses: list[float] = []
    store, stubber = _stubbed([_unprocessed() for _ in range(3)], pauses)
    with pytest.raises(TemporarilyUnavailable):
        store.revoked(jti="x", principal=PRINCIPAL, issued_at=1)
    assert len(pauses) == 2
    for attempt, pause in enumerate(pauses, start=1):
        bound = min(
            revocations._BATCH_BACKOFF_BASE_SECONDS * 2 ** (attempt - 1),
            revocations._BATCH_BACKOFF_CAP_SECONDS,
        )
        assert 0 <= pause <= bound

    pauses.clear()
    store, stubber = _stubbed([_unprocessed(), {"Responses": {TABLE: []}}], pauses)
    assert store.revoked(jti="x", principal=PRINCIPAL, issued_at=1) is None
    assert len(pauses) == 1
    stubber.assert_no_pending_responses()


def test_no_pause_outlasts_the_requests_deadline() -> None:
    """With no room left for a pause and another attempt, the answer is 503 at once."""
    from tokex import deadline

    pauses: list[float] = []
    store, stubber = _stubbed([_unprocessed()], pauses)
    with deadline.request_deadline(0.1), pytest.raises(TemporarilyUnavailable) as failed:
        store.revoked(jti="x", principal=PRINCIPAL, issued_at=1)
    assert failed.value.reason == "dynamodb BatchGetItem: unprocessed"
    assert pauses == []
    stubber.assert_no_pending_responses()


def test_a_principal_record_without_a_readable_time_revokes_every_token() -> None:
    from tokex.adapters.state_table import schema

    key = schema.revoked_principal_key(PRINCIPAL)
    for revoked_at in (None, {"S": "soon"}, {"N": "-1"}):
        item: dict[str, Any] = {"id": {"S": key}}
        if revoked_at is not None:
            item["revoked_at"] = revoked_at
        store, _ = _stubbed([{"Responses": {TABLE: [item]}}])
        assert store.revoked(jti="x", principal=PRINCIPAL, issued_at=2**40) == "principal"
