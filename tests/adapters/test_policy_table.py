"""PolicyStore against emulated DynamoDB (in-process moto: the store is boto3-only)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from moto import mock_aws

from tests.support.dynamodb_conflict import ConflictingOnce
from tokex.adapters import aws_clients
from tokex.adapters.policy_table import (
    CONFLICT_ATTEMPTS,
    GENERATION_ID,
    SNAPSHOT_ATTEMPTS,
    Inventory,
    PolicyStore,
    RevisionMismatch,
    Stored,
    create_table,
)
from tokex.errors import MISCONFIGURED_RETRY_AFTER_SECONDS, Misconfigured, TemporarilyUnavailable
from tokex.local import moto_fixes
from tokex.policy.cache import CachedPolicies
from tokex.policy.model import Policy, PolicyValidationError, canonical_json
from tokex.shared_load import FAILED_LOAD_HOLD_SECONDS

TABLE = "tokex-policies-test"
REGION = "us-east-1"


def make_policy(policy_id: str, **fields: Any) -> Policy:
    doc = {
        "id": policy_id,
        "effect": "allow",
        "principals": ["arn:aws:iam::123456789012:role/orders-*"],
        "audiences": ["orders-api"],
        "scopes": ["orders:read"],
        "claims": {"team": "orders", "note": "ünïcode ✓"},
        **fields,
    }
    return Policy.from_document(doc)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        create_table(dynamodb, TABLE)
        yield dynamodb


@pytest.fixture
def store(client: Any) -> PolicyStore:
    return PolicyStore(client, TABLE, clock=lambda: 1_700_000_000.5)


def count_calls(client: Any, operation: str) -> list[str]:
    calls: list[str] = []
    client.meta.events.register(
        f"before-call.dynamodb.{operation}", lambda **_: calls.append(operation)
    )
    return calls


def test_put_get_delete(store: PolicyStore, client: Any) -> None:
    policy = make_policy("orders-reader", max_ttl_seconds=900)
    assert store.get("orders-reader") is None
    store.put(policy)
    assert store.get("orders-reader") == policy

    item = client.get_item(TableName=TABLE, Key={"id": {"S": "orders-reader"}})["Item"]
    assert item["updated_at"] == {"N": "1700000000"}
    text = item["document"]["S"]
    assert text == json.dumps(
        policy.to_document(), sort_keys=True, separators=(",", ":"), allow_nan=False
    )

    store.put(make_policy("orders-reader", scopes=["orders:write"]))  # replace
    replaced = store.get("orders-reader")
    assert replaced is not None and replaced.scopes == ("orders:write",)

    assert store.delete("orders-reader") is True
    assert store.delete("orders-reader") is False
    assert store.get("orders-reader") is None


def test_list_reads_every_page(client: Any) -> None:
    store = PolicyStore(client, TABLE, page_size=3)
    for index in range(10):
        store.put(make_policy(f"p{index:02d}"))
    scans = count_calls(client, "Scan")
    assert [p.id for p in store.list()] == [f"p{index:02d}" for index in range(10)]
    assert len(scans) >= 4  # 10 items at 3 per page


def test_invalid_allows_deny_whom_they_name_and_break_nothing_else(
    store: PolicyStore, client: Any
) -> None:
    store.put(make_policy("good"))
    store.put(make_policy("billing", principals=["arn:aws:iam::123456789012:role/billing"]))
    bad_claim = {**make_policy("bad-claim").to_document(), "claims": {"bad name": "root"}}
    bad = {
        "bad-claim": json.dumps(bad_claim),
        "mismatch": json.dumps(make_policy("other-id").to_document()),
        "unknown-field": json.dumps({**make_policy("unknown-field").to_document(), "note": 1}),
        # Not "no conditions": a conditioned allow whose template rendered a null.
        "null-conditions": json.dumps(
            {**make_policy("null-conditions").to_document(), "conditions": None}
        ),
    }
    for item_id, text in bad.items():
        client.put_item(TableName=TABLE, Item={"id": {"S": item_id}, "document": {"S": text}})

    policies, invalid = store.load_all()
    assert invalid == sorted(bad)
    by_id = {p.id: p for p in policies}
    assert sorted(by_id) == sorted(["billing", "good", *bad])
    for item_id in bad:  # each stands in as a deny of the principals and audiences it names
        blocking = by_id[item_id]
        assert (blocking.effect, blocking.principals, blocking.audiences) == (
            "deny",
            ("arn:aws:iam::123456789012:role/orders-*",),
            ("orders-api",),
        )
    with pytest.raises(PolicyValidationError) as info:
        store.get("bad-claim")
    assert info.value.field == "claims.bad name"
    assert info.value.consequence == (
        "the exchange denies the callers it names until it is fixed or deleted"
    )


def _decision(policies: list[Policy], role: str) -> str:
    from tokex.evidence.identity import CallerIdentity
    from tokex.policy.evaluate import explain

    arn = f"arn:aws:iam::123456789012:role/{role}"
    caller = CallerIdentity(arn, arn, "123456789012", "AROAX:s", "AROAX", "aws", "s")
    result = explain(policies, caller, "orders-api", None, None, default_ttl=900, ttl_cap=3600)
    if result.decision is None:
        assert result.error is not None
        return f"refused: {result.error.reason}"  # the caller's description names no policy
    return f"{result.decision.policy.id} {list(result.decision.scopes)}"


def test_an_invalid_most_specific_allow_does_not_hand_its_callers_a_broader_one(
    store: PolicyStore, client: Any
) -> None:
    """Skipped, the invalid narrow allow let the broad one decide: the read-only caller
    got every scope of the team's policy (a hand edit makes such a policy invalid)."""
    store.put(make_policy("orders-team", scopes=["orders:read", "orders:write", "orders:admin"]))
    narrow = make_policy(
        "orders-api-readonly", principals=["arn:aws:iam::123456789012:role/orders-api"]
    ).to_document()
    assert _decision([Policy.from_document(narrow), *store.list()], "orders-api") == (
        "orders-api-readonly ['orders:read']"
    )
    broken = json.dumps({**narrow, "scopes": "orders:read"})  # not a list
    client.put_item(
        TableName=TABLE, Item={"id": {"S": "orders-api-readonly"}, "document": {"S": broken}}
    )
    policies, invalid = store.load_all()
    assert invalid == ["orders-api-readonly"]
    assert _decision(policies, "orders-api").startswith("refused: ")
    assert "denied by policy orders-api-readonly" in _decision(policies, "orders-api")
    assert _decision(policies, "orders-worker").startswith("orders-team ")  # not named by it


def test_a_stored_allow_with_reserved_claim_names_or_unsafe_integers_still_allows(
    store: PolicyStore, client: Any
) -> None:
    """Reserved since (`aws.account`, `SCOPE`, `scp`, `role`) or refused since (an integer
    beyond 2^53-1): put refuses such a document, but one an earlier version stored (or a
    hand edit) read as invalid would turn an allow into a deny of whom it names after an
    upgrade. It loads; build_claims leaves the reserved names out of its tokens."""
    claims = {
        "aws.account": "999999999999",
        "SCOPE": "orders:admin",
        "scp": "orders:write",
        "role": "admin",
        "sub": "root",
        "big": 2**60,
        "team": "orders",
    }
    document = {**make_policy("orders-api-readonly").to_document(), "claims": claims}
    with pytest.raises(PolicyValidationError):
        Policy.from_document(document)  # as `tokex policy validate/put` judge it
    client.put_item(
        TableName=TABLE,
        Item={"id": {"S": "orders-api-readonly"}, "document": {"S": json.dumps(document)}},
    )
    policies, invalid = store.load_all()
    assert invalid == []
    [policy] = policies
    assert (policy.effect, policy.claims) == ("allow", claims)
    assert _decision(policies, "orders-api") == "orders-api-readonly ['orders:read']"


@pytest.mark.parametrize(
    "item_id",
    ["orders api", "o" * 129, "orders/api", "évident", "evil\x1b[31m\nfake line"],
    ids=["blank", "too-long", "slash", "non-ascii", "control-characters"],
)
def test_an_invalid_allow_under_a_key_put_refuses_denies_whom_it_names(
    store: PolicyStore, client: Any, item_id: str
) -> None:
    """Written by other means under a key no policy id can be: its stand-in deny failed
    validation for that key, and every exchange answered 503 ("an allow naming no one
    readable", though it named its callers). It denies whom it names, named by its key."""
    store.put(make_policy("orders-team"))
    document = {
        **make_policy("x", principals=["arn:aws:iam::123456789012:role/orders-api"]).to_document(),
        "id": item_id,
    }
    client.put_item(
        TableName=TABLE, Item={"id": {"S": item_id}, "document": {"S": json.dumps(document)}}
    )
    policies, invalid = store.load_all()
    assert invalid == [item_id]
    assert _decision(policies, "orders-api") == f"refused: denied by policy {item_id}"
    assert _decision(policies, "orders-worker").startswith("orders-team ")  # not named by it
    with pytest.raises(PolicyValidationError) as info:
        store.get(item_id)
    assert info.value.field == "id"
    assert info.value.consequence == (
        "the exchange denies the callers it names until it is fixed or deleted"
    )
    assert store.delete(item_id) is True
    assert store.load_all() == ([make_policy("orders-team")], [])


def test_an_allow_naming_no_one_readable_under_a_key_put_refuses_still_fails_closed(
    store: PolicyStore, client: Any
) -> None:
    document = {**make_policy("x").to_document(), "id": "orders api", "principals": "role/x"}
    client.put_item(
        TableName=TABLE, Item={"id": {"S": "orders api"}, "document": {"S": json.dumps(document)}}
    )
    with pytest.raises(TemporarilyUnavailable) as info:
        store.load_all()
    assert "'orders api' is invalid and an allow naming no one readable" in info.value.reason


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        ({"enabled": False}, "skipped"),  # it decided nothing
        ({"audiences": []}, "skipped"),  # it granted no audience
        ({"principals": []}, "skipped"),  # it names no one
        ({"audiences": "orders-api"}, "every audience"),  # unreadable: denied for all
        ({"principals": "arn:aws:iam::123456789012:role/x"}, "503"),  # names no one readable
        ({"principals": ["*"]}, "503"),
    ],
)
def test_what_stands_in_for_an_invalid_allow(
    store: PolicyStore, client: Any, change: dict[str, Any], outcome: str
) -> None:
    document = {**make_policy("broken").to_document(), "note": "hand-edited", **change}
    client.put_item(
        TableName=TABLE, Item={"id": {"S": "broken"}, "document": {"S": json.dumps(document)}}
    )
    if outcome == "503":
        with pytest.raises(TemporarilyUnavailable) as info:
            store.load_all()
        assert "an allow naming no one readable" in info.value.reason
        return
    policies, invalid = store.load_all()
    assert invalid == ["broken"]
    if outcome == "skipped":
        assert policies == []
    else:
        [blocking] = policies
        assert (blocking.effect, blocking.audiences) == ("deny", ("*",))


def test_an_invalid_eks_allow_that_says_it_names_no_principal_denies_its_workloads(
    store: PolicyStore, client: Any
) -> None:
    """`"principals": []` is how an EKS-only allow may say it names no IAM principal: its
    stand-in denies its workloads for its audience, and blocks no one else's exchange."""
    pods = {
        "id": "payments-pods",
        "effect": "allow",
        "evidence": ["eks"],
        "principals": [],
        "eks": {
            "clusters": ["123456789012:eu-west-1:prod"],
            "namespaces": ["payments"],
            "service_accounts": ["api"],
        },
        "audiences": ["payments-api"],
    }
    Policy.from_document(pods)  # valid as written
    store.put(make_policy("orders-team"))
    text = json.dumps({**pods, "note": "hand-edited"})
    client.put_item(TableName=TABLE, Item={"id": {"S": "payments-pods"}, "document": {"S": text}})
    policies, invalid = store.load_all()
    assert invalid == ["payments-pods"]
    [stand_in] = [policy for policy in policies if policy.id == "payments-pods"]
    assert (stand_in.effect, stand_in.evidence, stand_in.audiences) == (
        "deny",
        ("eks",),
        ("payments-api",),
    )
    assert stand_in.eks == Policy.from_document(pods).eks


DENY = {
    "id": "deny-all",
    "effect": "deny",
    "principals": ["arn:aws:iam::123456789012:role/x"],
    "audiences": ["*"],
}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({**DENY, "note": "incident 42"}),  # a hand-edited deny
        json.dumps({**DENY, "evidence": None}),
        "{",  # unreadable: may have been a deny
        "[]",
        '{"id": "deny-all", "effect": "allow", "effect": "deny"}',
        None,  # no document attribute at all
    ],
    ids=[
        "deny-unknown-field",
        "deny-null-key",
        "not-json",
        "not-object",
        "duplicate-effect",
        "no-document",
    ],
)
def test_an_invalid_item_that_may_be_a_deny_fails_closed(
    store: PolicyStore, client: Any, text: str | None
) -> None:
    store.put(make_policy("good"))
    item: dict[str, Any] = {"id": {"S": "deny-all"}}
    if text is not None:
        item["document"] = {"S": text}
    client.put_item(TableName=TABLE, Item=item)
    with pytest.raises(TemporarilyUnavailable) as info:
        store.load_all()
    assert "deny-all" in info.value.reason
    assert "deny-all" not in info.value.description  # operators' detail stays in the log


@pytest.mark.parametrize(
    "item",
    [
        {
            "id": {"S": "revoked-principal#arn:aws:iam::123456789012:role/x"},
            "revoked_at": {"N": "1800000000"},
            "expires_at": {"N": "1800043500"},
        },
        {"id": {"S": "client#tokex-0123456789abcdef"}, "secret_hash": {"S": "x"}},
        {"id": {"S": "sig#AAAA"}},
    ],
    ids=["revocation", "client", "signature"],
)
def test_a_state_table_record_written_here_by_mistake_is_skipped(
    store: PolicyStore, client: Any, item: dict[str, Any]
) -> None:
    # No document and a key no policy can have: it never denied anything, so it must not
    # take every exchange down. It is still reported, to be deleted.
    store.put(make_policy("good"))
    client.put_item(TableName=TABLE, Item=item)
    policies, invalid = store.load_all()
    assert [p.id for p in policies] == ["good"]
    assert invalid == [item["id"]["S"]]


def test_an_impossible_id_with_a_document_still_fails_closed(
    store: PolicyStore, client: Any
) -> None:
    item = {"id": {"S": "deny#all"}, "document": {"S": json.dumps({**DENY, "id": "deny#all"})}}
    client.put_item(TableName=TABLE, Item=item)
    with pytest.raises(Misconfigured) as info:
        store.load_all()
    assert "deny#all" in info.value.reason
    assert info.value.retry_after == MISCONFIGURED_RETRY_AFTER_SECONDS


def test_stored_ttl_above_todays_cap_still_loads(store: PolicyStore) -> None:
    long = Policy.from_document(
        {**make_policy("long").to_document(), "max_ttl_seconds": 7200}, ttl_cap=7200
    )
    store.put(long)
    assert store.list() == [long]


def test_every_item_that_blocks_the_table_is_named_and_the_inventory_shows_all(
    store: PolicyStore, client: Any
) -> None:
    """An operator fixing a blocked table learns of every item at once (it learnt of the
    next only after each fix), and `inventory` shows the valid policies as stored."""
    store.put(make_policy("orders"))
    for item_id, document in (
        ("deny-a", {"id": "deny-a"}),  # may be a deny
        ("deny-b", {"id": "deny-b", "effect": "deny", "note": "x"}),
        ("broken-allow", {**make_policy("broken-allow").to_document(), "note": "x"}),
    ):
        item = {"id": {"S": item_id}, "document": {"S": json.dumps(document)}}
        client.put_item(TableName=TABLE, Item=item)
    with pytest.raises(Misconfigured) as info:
        store.load_all()
    # It lasts until an operator acts: told from an outage (outcome `misconfigured`, the
    # longer Retry-After), for one item or several.
    assert info.value.retry_after == MISCONFIGURED_RETRY_AFTER_SECONDS
    assert info.value.reason.startswith("2 policies block every exchange: ")
    assert "'deny-a'" in info.value.reason and "'deny-b'" in info.value.reason
    inventory = store.inventory()
    assert [p.id for p in inventory.policies] == ["orders"]  # no stand-in among them
    assert list(inventory.invalid) == ["broken-allow", "deny-a", "deny-b"]
    assert inventory.blocking == ["deny-a", "deny-b"]
    assert inventory.invalid["broken-allow"].startswith("the exchange denies the callers")
    assert inventory.invalid["deny-a"].endswith("(invalid, and may be a deny)")


def test_an_allow_stored_with_no_principal_ids_by_earlier_versions_still_applies(
    store: PolicyStore, client: Any
) -> None:
    """They wrote `"principal_ids": []` (any id) into every allow, which a document
    submitted now may not say: read back from the table, it stays a working allow."""
    earlier = {**make_policy("orders-reader").to_document(), "principal_ids": []}
    item = {"id": {"S": "orders-reader"}, "document": {"S": json.dumps(earlier)}}
    client.put_item(TableName=TABLE, Item=item)
    with pytest.raises(PolicyValidationError, match="principal_ids"):
        Policy.from_document(earlier)
    assert store.load_all() == ([make_policy("orders-reader")], [])  # not a stand-in deny
    assert store.get("orders-reader") == make_policy("orders-reader")


def test_missing_table_is_temporarily_unavailable(client: Any) -> None:
    store = PolicyStore(client, "no-such-table")
    for call in (store.list, lambda: store.get("x"), lambda: store.put(make_policy("x"))):
        with pytest.raises(TemporarilyUnavailable) as info:
            call()
        assert "no-such-table" not in info.value.description
        assert "ResourceNotFoundException" in info.value.reason


def test_unreachable_endpoint_is_temporarily_unavailable(refused_port: int) -> None:
    client = boto3.client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{refused_port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}),
    )
    store = PolicyStore(client, TABLE)
    calls = count_calls(client, "*")
    with pytest.raises(TemporarilyUnavailable) as info:
        store.load_all()
    assert info.value.status == 503
    assert TABLE not in info.value.description
    # The refusal's 503 (not a timeout's), from the load's first call (the generation's
    # read): the store does not retry a failed call on its own (the client's
    # configuration does), nor scan a table it could not read the generation of.
    assert info.value.reason == "dynamodb GetItem: EndpointConnectionError"
    assert calls == ["*"]


def test_create_table_is_idempotent(client: Any) -> None:
    create_table(client, TABLE)
    table = client.describe_table(TableName=TABLE)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_warm_cache_reads_dynamodb_zero_times(store: PolicyStore, client: Any) -> None:
    store.put(make_policy("p"))
    now = [0.0]
    cache = CachedPolicies(store, 30, clock=lambda: now[0])
    scans = count_calls(client, "Scan")
    cache.policies()
    reads = len(scans)
    for _ in range(50):
        assert [p.id for p in cache.policies()] == ["p"]
    assert len(scans) == reads == 1
    now[0] = 31.0
    cache.policies()
    assert len(scans) == 2


# --- one load, one state of the table ------------------------------------------------------


def _deny(policy_id: str) -> Policy:
    return Policy.from_document(
        {**DENY, "id": policy_id, "principals": ["arn:aws:iam::123456789012:role/orders-api"]}
    )


def _generation(client: Any) -> dict[str, str] | None:
    item = client.get_item(
        TableName=TABLE, Key={"id": {"S": GENERATION_ID}}, ConsistentRead=True
    ).get("Item")
    return None if item is None else item["generation"]


@contextlib.contextmanager
def between_pages(reader: Any, write: Callable[[int], None]) -> Iterator[list[int]]:
    """`write(page)` after each Scan page the `reader` client gets (the operator's change
    lands while a load is reading the table); yields the pages seen, counted."""
    pages: list[int] = []

    def after_page(**_: Any) -> None:
        pages.append(len(pages) + 1)
        write(pages[-1])

    reader.meta.events.register("after-call.dynamodb.Scan", after_page)
    try:
        yield pages
    finally:
        reader.meta.events.unregister("after-call.dynamodb.Scan", after_page)


@pytest.fixture
def operator(client: Any) -> PolicyStore:
    """`tokex policy` of another process: its own client on the same table."""
    return PolicyStore(boto3.client("dynamodb", region_name=REGION), TABLE)


def test_a_load_overlapping_a_moved_deny_reads_the_table_again(
    client: Any, operator: PolicyStore
) -> None:
    """The operator moves a deny to a new id (put the new one, then delete the old one)
    between two pages of a load's Scan: the load saw neither, and the allow decided for
    the caller both states of the table refuse. It is read again, and sees the move."""
    operator.put(make_policy("b-orders-team"))
    operator.put(make_policy("c-orders-other"))
    operator.put(_deny("z-deny-orders-api"))
    reader = PolicyStore(client, TABLE, page_size=2)  # pages of the table sorted by id

    def move(page: int) -> None:
        if page == 1:
            operator.put(_deny("a-deny-orders-api"))  # before the Scan's position
            operator.delete("z-deny-orders-api")  # after it

    with between_pages(client, move) as pages:
        policies, invalid = reader.load_all()
    assert invalid == []
    assert [p.id for p in policies if p.effect == "deny"] == ["a-deny-orders-api"]
    assert _decision(policies, "orders-api") == "refused: denied by policy a-deny-orders-api"
    assert len(pages) > 2  # the Scan of 2 pages, and another


def test_a_table_changing_between_every_page_is_unavailable_never_missing_the_deny(
    client: Any, operator: PolicyStore
) -> None:
    operator.put(make_policy("b-orders-team"))
    operator.put(make_policy("c-orders-other"))
    operator.put(_deny("z-deny-orders-api"))
    where = ["z-deny-orders-api"]

    def keep_moving(_: int) -> None:  # back and forth, the new one first each time
        new = "a-deny-orders-api" if where[0].startswith("z") else "z-deny-orders-api"
        operator.put(_deny(new))
        operator.delete(where[0])
        where[0] = new

    cache = CachedPolicies(PolicyStore(client, TABLE, page_size=2), 0)
    generation_reads = count_calls(client, "GetItem")
    with between_pages(client, keep_moving) as pages, pytest.raises(TemporarilyUnavailable) as info:
        cache.policies()
    assert not isinstance(info.value, Misconfigured)  # it settles without an operator
    assert (info.value.status, info.value.retry_after) == (503, 5)
    assert info.value.reason == f"dynamodb Scan: changed during each of {SNAPSHOT_ATTEMPTS} reads"
    assert "policy" in info.value.description and TABLE not in info.value.description
    assert len(pages) == SNAPSHOT_ATTEMPTS * 2  # every read of the 2 pages, no more
    assert len(generation_reads) == SNAPSHOT_ATTEMPTS + 1  # before the first, after each
    # The writer stopped: the next load answers, with the deny where it is now.
    assert [p.id for p in cache.policies() if p.effect == "deny"] == where


def test_every_write_bumps_the_generation_in_its_transaction(
    store: PolicyStore, client: Any
) -> None:
    writes = count_calls(client, "TransactWriteItems")
    store.put(make_policy("p"))
    assert _generation(client) == {"N": "1"}
    store.put(make_policy("p", scopes=["orders:write"]))  # a replacement is a write
    assert _generation(client) == {"N": "2"}
    assert store.delete("p") is True
    assert _generation(client) == {"N": "3"}
    assert store.delete("p") is False  # nothing to delete: nothing written
    assert _generation(client) == {"N": "3"}
    assert len(writes) == 4
    # Not a policy: `get` finds none, `delete` does not reset the count.
    assert store.get(GENERATION_ID) is None
    assert store.delete(GENERATION_ID) is False
    assert _generation(client) == {"N": "3"}
    with pytest.raises(PolicyValidationError):
        Policy.from_document({**DENY, "id": GENERATION_ID})  # no policy can have its id


def test_the_generation_is_no_policy_and_never_invalid(
    store: PolicyStore, client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokex.cli.main import main

    store.put(make_policy("orders"))
    assert _generation(client) is not None
    assert store.load_all() == ([make_policy("orders")], [])
    assert store.inventory() == Inventory([make_policy("orders")], {}, [], {"orders": 1})
    assert store.list() == [make_policy("orders")]
    where = ["--table", TABLE, "--region", REGION]
    assert main(["policy", "list", "--json", *where]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["id"] for p in listed["policies"]] == ["orders"]
    assert (listed["invalid"], listed["consequences"]) == ([], {})
    assert main(["policy", "get", GENERATION_ID, *where]) == 1
    assert main(["policy", "delete", GENERATION_ID, *where]) == 1
    assert _generation(client) == {"N": "1"}


def test_a_table_without_the_generation_loads(store: PolicyStore, client: Any) -> None:
    """Written before the generation, or by an older `tokex policy`: generation 0."""
    for policy in (make_policy("orders"), _deny("z-deny-orders-api")):
        item = {"id": {"S": policy.id}, "document": {"S": canonical_json(policy.to_document())}}
        client.put_item(TableName=TABLE, Item=item)
    assert _generation(client) is None
    assert store.load_all() == ([make_policy("orders"), _deny("z-deny-orders-api")], [])
    store.put(make_policy("billing"))  # the first write through the store creates it
    assert _generation(client) == {"N": "1"}


# --- revisions: a write on condition of what was read --------------------------------------


def _item(client: Any, policy_id: str) -> dict[str, Any]:
    item: dict[str, Any] = client.get_item(
        TableName=TABLE, Key={"id": {"S": policy_id}}, ConsistentRead=True
    )["Item"]
    return item


def test_each_put_makes_the_next_revision(store: PolicyStore, client: Any) -> None:
    assert store.get_stored("orders") is None
    store.put(make_policy("orders"))
    assert store.get_stored("orders") == Stored(make_policy("orders"), 1)
    store.put(make_policy("orders", scopes=["orders:write"]))
    assert store.get_stored("orders") == Stored(make_policy("orders", scopes=["orders:write"]), 2)
    item = _item(client, "orders")
    assert (item["revision"], item["updated_at"]) == ({"N": "2"}, {"N": "1700000000"})
    assert item["document"]["S"] == canonical_json(
        make_policy("orders", scopes=["orders:write"]).to_document()
    )
    # The exchange's load ignores it; the inventory shows it.
    assert store.load_all() == ([make_policy("orders", scopes=["orders:write"])], [])
    assert store.inventory().revisions == {"orders": 2}
    assert _generation(client) == {"N": "2"}
    # Deleted and created again: revision 1 again.
    assert store.delete("orders") is True
    store.put(make_policy("orders"))
    assert store.get_stored("orders") == Stored(make_policy("orders"), 1)


INCIDENT = "arn:aws:iam::123456789012:role/compromised"


def test_of_two_operators_editing_one_read_the_second_write_is_refused(
    store: PolicyStore, operator: PolicyStore, client: Any
) -> None:
    """The lost update: A and B each read the policy; A removes a compromised principal
    (an incident response); B, from the same read, adds an audience. B's write undid A's,
    both done. With the revision each read, B's write is refused and A's change stays."""
    principals = ["arn:aws:iam::123456789012:role/orders-*", INCIDENT]
    store.put(make_policy("orders", principals=principals))
    read_by_a, read_by_b = store.get_stored("orders"), operator.get_stored("orders")
    assert read_by_a is not None and read_by_b is not None
    assert read_by_a.revision == read_by_b.revision == 1
    incident = make_policy("orders", principals=principals[:1])
    store.put(incident, if_revision=read_by_a.revision)
    generation = _generation(client)

    edited = make_policy("orders", principals=principals, audiences=["orders-api", "reports-api"])
    with pytest.raises(RevisionMismatch) as refused:
        operator.put(edited, if_revision=read_by_b.revision)
    assert (refused.value.policy_id, refused.value.expected, refused.value.revision) == (
        "orders",
        1,
        2,
    )
    assert store.get_stored("orders") == Stored(incident, 2)  # A's, not B's
    assert _generation(client) == generation  # the whole transaction was cancelled
    # B reads again and re-applies its change on A's.
    again = operator.get_stored("orders")
    assert again is not None
    both = make_policy("orders", principals=principals[:1], audiences=["orders-api", "reports-api"])
    operator.put(both, if_revision=again.revision)
    assert store.get_stored("orders") == Stored(both, 3)


def test_a_delete_with_a_stale_revision_is_refused(store: PolicyStore, client: Any) -> None:
    store.put(make_policy("orders"))
    store.put(make_policy("orders", scopes=["orders:write"]))
    generation = _generation(client)
    with pytest.raises(RevisionMismatch) as refused:
        store.delete("orders", if_revision=1)
    assert (refused.value.expected, refused.value.revision) == (1, 2)
    assert store.get("orders") == make_policy("orders", scopes=["orders:write"])
    assert _generation(client) == generation
    with pytest.raises(RevisionMismatch):
        store.delete("orders", if_revision=0)  # 0: never one written with revisions
    assert store.delete("orders", if_revision=2) is True
    assert store.delete("orders", if_revision=2) is False  # gone: nothing to delete
    assert _generation(client) == {"N": "3"}


def test_if_revision_0_creates_only(store: PolicyStore, client: Any) -> None:
    store.put(make_policy("orders"), if_revision=0)
    assert store.get_stored("orders") == Stored(make_policy("orders"), 1)
    with pytest.raises(RevisionMismatch) as refused:
        store.put(make_policy("orders", scopes=["orders:write"]), if_revision=0)
    assert (refused.value.expected, refused.value.revision) == (0, 1)
    assert store.get_stored("orders") == Stored(make_policy("orders"), 1)
    assert _generation(client) == {"N": "1"}
    # A revision of a policy since deleted: it does not exist.
    with pytest.raises(RevisionMismatch) as refused:
        store.put(make_policy("billing"), if_revision=3)
    assert (refused.value.revision, str(refused.value)) == (
        None,
        "policy 'billing' does not exist, not at revision 3",
    )
    assert store.get("billing") is None
    with pytest.raises(ValueError, match="whole number"):
        store.put(make_policy("orders"), if_revision=-1)


def test_an_item_written_before_revisions_is_revision_0(store: PolicyStore, client: Any) -> None:
    """By an older `tokex policy` (or by hand): no `revision`. It reads as 0, and
    `if_revision=0` matches it: unchanged since that older write."""
    for policy in (make_policy("orders"), _deny("no-legacy")):
        item = {"id": {"S": policy.id}, "document": {"S": canonical_json(policy.to_document())}}
        client.put_item(TableName=TABLE, Item=item)
    assert store.get_stored("orders") == Stored(make_policy("orders"), 0)
    assert store.inventory().revisions == {"no-legacy": 0, "orders": 0}
    with pytest.raises(RevisionMismatch) as refused:
        store.put(make_policy("orders", scopes=["orders:write"]), if_revision=1)
    assert refused.value.revision == 0
    store.put(make_policy("orders", scopes=["orders:write"]), if_revision=0)
    assert store.get_stored("orders") == Stored(make_policy("orders", scopes=["orders:write"]), 1)
    assert store.delete("no-legacy", if_revision=0) is True
    assert store.load_all() == ([make_policy("orders", scopes=["orders:write"])], [])


def test_a_revision_on_an_item_that_is_no_policy_changes_nothing(
    store: PolicyStore, client: Any
) -> None:
    """The exchange's reading of items (`_parse`, `_not_a_policy`) ignores the attribute."""
    store.put(make_policy("good"))
    record = {"id": {"S": "client#tokex-0123"}, "revision": {"N": "7"}}
    client.put_item(TableName=TABLE, Item=record)
    hand_edited = {**DENY, "note": "incident 42"}
    client.put_item(
        TableName=TABLE,
        Item={
            "id": {"S": "deny-all"},
            "document": {"S": json.dumps(hand_edited)},
            "revision": {"N": "3"},
        },
    )
    with pytest.raises(Misconfigured):  # may be a deny: blocks, as without a revision
        store.load_all()
    assert store.delete("deny-all", if_revision=3) is True
    assert store.load_all() == ([make_policy("good")], ["client#tokex-0123"])


def test_a_write_cancelled_by_a_conflict_is_tried_again(client: Any) -> None:
    """Nothing of a cancelled transaction was applied: the write is made once, and a
    conditional one then finds the winner's revision (not an outage)."""
    racing = ConflictingOnce(client)
    store = PolicyStore(racing, TABLE)
    store.put(make_policy("orders"), if_revision=0)
    assert racing.conflicts == 0
    assert (store.get_stored("orders"), _generation(client)) == (
        Stored(make_policy("orders"), 1),
        {"N": "1"},
    )
    racing.conflicts = 1
    with pytest.raises(RevisionMismatch):
        store.put(make_policy("orders", scopes=["orders:write"]), if_revision=0)
    racing.conflicts = CONFLICT_ATTEMPTS  # never settles: the 503, nothing written
    with pytest.raises(TemporarilyUnavailable) as failed:
        store.put(make_policy("orders", scopes=["orders:write"]))
    assert failed.value.reason == (
        "dynamodb TransactWriteItems: TransactionCanceledException/TransactionConflict"
    )
    assert store.get_stored("orders") == Stored(make_policy("orders"), 1)


OPERATORS = 8


def test_of_concurrent_writes_from_one_read_exactly_one_lands(
    store: PolicyStore, client: Any
) -> None:
    """OPERATORS processes put their own edit of revision 1 at once, on the emulator that
    holds a transaction's items as DynamoDB does (local/moto_fixes.py): one write lands,
    every other is refused with the revision it made."""
    moto_fixes.install()
    store.put(make_policy("orders"))
    operators = [
        PolicyStore(boto3.client("dynamodb", region_name=REGION), TABLE) for _ in range(OPERATORS)
    ]
    edits = [make_policy("orders", claims={"team": f"editor-{n}"}) for n in range(OPERATORS)]
    start = threading.Barrier(OPERATORS)

    def put(n: int) -> str:
        start.wait()
        try:
            operators[n].put(edits[n], if_revision=1)
        except RevisionMismatch as refused:
            return f"refused at {refused.revision}"
        return "written"

    with ThreadPoolExecutor(OPERATORS) as pool:
        outcomes = list(pool.map(put, range(OPERATORS)))
    assert sorted(outcomes) == ["refused at 2"] * (OPERATORS - 1) + ["written"]
    winner = edits[outcomes.index("written")]
    assert store.get_stored("orders") == Stored(winner, 2)
    assert _generation(client) == {"N": "2"}  # the first put and the winner's


# --- a failed load is held -----------------------------------------------------------------

THROTTLED_SCAN = json.dumps(
    {
        "__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
        "message": "Rate of requests exceeds the allowed throughput.",
    }
).encode()


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        yield self._body


class OnTheWire:
    """Every DynamoDB request a client sends (each attempt, botocore's retries included),
    by operation; while `throttling`, each Scan answered as a throttling DynamoDB answers
    it (the moto table never sees it)."""

    def __init__(self, client: Any) -> None:
        self.sent: list[str] = []
        self.throttling = False
        client.meta.events.register_first("before-send.dynamodb", self._send)

    def _send(self, request: Any, **_: Any) -> AWSResponse | None:
        operation = request.headers["X-Amz-Target"].decode().rpartition(".")[2]
        self.sent.append(operation)
        if operation == "Scan" and self.throttling:
            headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "x"}
            return AWSResponse(request.url, 400, headers, _Body(THROTTLED_SCAN))
        return None

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture
def hot_path_client(client: Any) -> Any:
    """The exchange's own DynamoDB client (aws_clients.py: its retries, within a deadline
    when one is open), on the moto table of `client`."""
    return aws_clients.client("dynamodb", region_name=REGION)


THREADS = 12


class StepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_throttled_first_load_is_read_once_per_hold(
    store: PolicyStore, hot_path_client: Any
) -> None:
    """A new environment (nothing cached) whose first load the table throttles: the
    exchanges of the next FAILED_LOAD_HOLD_SECONDS each get the same 503 without a read;
    after the hold, one call reads the table again, and its policies stand."""
    store.put(make_policy("orders"))
    wire, clock = OnTheWire(hot_path_client), StepClock()
    cache = CachedPolicies(PolicyStore(hot_path_client, TABLE), 30, clock=clock)
    wire.throttling = True
    with pytest.raises(TemporarilyUnavailable) as first:
        cache.policies()
    assert first.value.reason == "dynamodb Scan: ThrottlingException"
    assert "Scan" in wire.take()  # the one load (its retries within it)
    for step in range(10):
        clock.now = step * (FAILED_LOAD_HOLD_SECONDS - 0.01) / 9
        with pytest.raises(TemporarilyUnavailable) as held:
            cache.policies()
        assert type(held.value) is TemporarilyUnavailable
        assert (held.value.status, held.value.reason) == (503, first.value.reason)
        assert held.value.retry_after >= FAILED_LOAD_HOLD_SECONDS - clock.now
    assert wire.take() == []  # ten exchanges, no read
    wire.throttling = False
    clock.now = FAILED_LOAD_HOLD_SECONDS
    assert [p.id for p in cache.policies()] == ["orders"]
    assert wire.take() == ["GetItem", "Scan", "GetItem"]  # one load
    for _ in range(10):
        assert [p.id for p in cache.policies()] == ["orders"]
    assert wire.take() == []


def test_an_item_that_blocks_every_load_is_read_once_per_hold(
    store: PolicyStore, client: Any, hot_path_client: Any
) -> None:
    """An invalid item that may be a deny, written while a good copy is cached: once that
    copy is stale, every exchange answers 503 misconfigured (the stale copy is never
    served); within the hold without a read. The operator's delete takes effect with the
    first load after the hold (at once after `invalidate`)."""
    store.put(make_policy("orders"))
    wire, clock = OnTheWire(hot_path_client), StepClock()
    cache = CachedPolicies(PolicyStore(hot_path_client, TABLE), 30, clock=clock)
    assert [p.id for p in cache.policies()] == ["orders"]
    client.put_item(TableName=TABLE, Item={"id": {"S": "deny-all"}, "document": {"S": "{"}})
    wire.take()
    clock.now = 30
    for _ in range(10):
        with pytest.raises(Misconfigured) as blocked:
            cache.policies()
        assert blocked.value.retry_after == MISCONFIGURED_RETRY_AFTER_SECONDS
        assert "deny-all" in blocked.value.reason
        assert cache.invalid_ids == ("deny-all",)
    assert wire.take().count("Scan") == 1
    store.delete("deny-all")
    clock.now += FAILED_LOAD_HOLD_SECONDS - 0.01
    with pytest.raises(Misconfigured):
        cache.policies()
    assert wire.take() == []
    clock.now += 0.01
    assert [p.id for p in cache.policies()] == ["orders"]
    assert wire.take().count("Scan") == 1 and cache.invalid_ids == ()
    client.put_item(TableName=TABLE, Item={"id": {"S": "deny-all"}, "document": {"S": "{"}})
    cache.invalidate()
    with pytest.raises(Misconfigured):
        cache.policies()
    store.delete("deny-all")
    cache.invalidate()  # ends the hold: the operator's fix is read at once
    assert [p.id for p in cache.policies()] == ["orders"]


def test_exchanges_at_once_after_a_failed_load_read_the_table_once_per_hold(
    store: PolicyStore, hot_path_client: Any
) -> None:
    """Many exchanges at once within the hold: no read; at once after it, while the table
    still throttles: one load, its failure theirs; once it is healthy: one load, its
    policies for all."""
    store.put(make_policy("orders"))
    wire, clock = OnTheWire(hot_path_client), StepClock()
    cache = CachedPolicies(PolicyStore(hot_path_client, TABLE), 30, clock=clock)
    wire.throttling = True
    with pytest.raises(TemporarilyUnavailable):
        cache.policies()
    per_load = wire.take()

    def at_once() -> list[object]:
        together = threading.Barrier(THREADS)

        def exchange(_: int) -> object:
            together.wait(30)
            try:
                return [p.id for p in cache.policies()]
            except TemporarilyUnavailable as failure:
                return failure.reason

        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(exchange, range(THREADS)))

    assert at_once() == ["dynamodb Scan: ThrottlingException"] * THREADS
    assert wire.take() == []
    clock.now = FAILED_LOAD_HOLD_SECONDS
    assert at_once() == ["dynamodb Scan: ThrottlingException"] * THREADS
    assert wire.take() == per_load  # one load, the same calls as the first
    wire.throttling = False
    clock.now = 2 * FAILED_LOAD_HOLD_SECONDS
    assert at_once() == [["orders"]] * THREADS
    assert wire.take() == ["GetItem", "Scan", "GetItem"]
