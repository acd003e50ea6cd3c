"""The introspection clients' store against in-process moto DynamoDB: hashed secrets, the
audiences each serves, the short cache of verified clients, and the CLI finding the state
table from the stack. HTTP Basic parsing: tests/unit/test_introspection_clients.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.support.in_process_state_table import state_table
from tokex.adapters.state_table import introspection_clients
from tokex.adapters.state_table.introspection_clients import ClientStore, TooManyAudiences
from tokex.adapters.state_table.revocations import TTL_MARGIN_SECONDS
from tokex.cli.main import main
from tokex.errors import TemporarilyUnavailable
from tokex.introspection_clients import (
    CLIENT_ID,
    MAX_CLIENT_AUDIENCES,
    VERIFIED_CACHE_SECONDS,
    InvalidClient,
    secret_hash,
)

TABLE = "tokex-state-test"
SERVES = ("orders-api",)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with state_table(monkeypatch, TABLE) as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(dynamodb: Any, clock: Clock) -> ClientStore:
    return ClientStore(dynamodb, TABLE, clock=lambda: 1_800_000_000.7, monotonic=clock)


def count_get_item(dynamodb: Any) -> list[str]:
    calls: list[str] = []
    dynamodb.meta.events.register("before-call.dynamodb.GetItem", lambda **_: calls.append("x"))
    return calls


def test_add_stores_only_a_hash_and_returns_the_secret_once(store, dynamodb):
    client, secret = store.add("kong-prod", SERVES)
    assert CLIENT_ID.fullmatch(client.client_id)
    assert len(secret) == 43  # token_urlsafe(32): 256 random bits
    assert (client.name, client.created_at) == ("kong-prod", 1_800_000_000)
    assert client.audiences == SERVES
    item = dynamodb.get_item(TableName=TABLE, Key={"id": {"S": f"client#{client.client_id}"}})[
        "Item"
    ]
    assert item["secret_hash"]["S"] == secret_hash(client.client_id, secret)
    assert secret not in str(item)
    assert "expires_at" not in item  # clients never expire by TTL
    assert store.authenticate(client.client_id, secret) == client


def test_each_client_gets_its_own_id_and_secret(store):
    (first, secret1), (second, secret2) = store.add("a", SERVES), store.add("a", SERVES)
    assert first.client_id != second.client_id and secret1 != secret2


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "ünïcode", "a/b"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError):
        ClientStore(None, TABLE).add(name, SERVES)  # refused before any DynamoDB call


def test_list_shows_clients_only_and_remove_deletes(store, dynamodb):
    dynamodb.put_item(TableName=TABLE, Item={"id": {"S": "sig#abc"}, "expires_at": {"N": "1"}})
    dynamodb.put_item(TableName=TABLE, Item={"id": {"S": "revoked-jti#x"}})
    b, _ = store.add("b-gateway", ["billing-api"])
    a, _ = store.add("a-gateway", ["orders-api", "billing-api"])
    assert store.list() == [a, b]
    assert [c.audiences for c in store.list()] == [("billing-api", "orders-api"), ("billing-api",)]
    assert store.remove(b.client_id) is True
    assert store.remove(b.client_id) is False
    assert store.remove("not-a-client-id") is False
    assert store.list() == [a]


def test_wrong_secret_unknown_and_malformed_ids_are_invalid_client(store, dynamodb):
    client, secret = store.add("kong", SERVES)
    calls = count_get_item(dynamodb)
    cases = [
        (client.client_id, secret + "x", "wrong_secret"),
        (client.client_id, secret[:-1], "wrong_secret"),
        ("tc_ffffffffffffffffffff", secret, "unknown_client"),
        ("tc_FFFF", secret, "malformed_credentials"),
        (f"client#{client.client_id}", secret, "malformed_credentials"),
        (client.client_id, "", "malformed_credentials"),
        (client.client_id, "x" * 129, "malformed_credentials"),
    ]
    for client_id, presented, reason in cases:
        with pytest.raises(InvalidClient) as err:
            store.authenticate(client_id, presented)
        assert err.value.reason == reason
    # Malformed input never reaches DynamoDB; the second wrong secret is compared with
    # the item the first one read.
    assert len(calls) == 2


def test_a_clients_item_is_kept_briefly_and_unknown_ids_never(store, dynamodb, clock):
    """Guessing a known client's secret costs no DynamoDB read per guess (the kept hash
    answers); an id that names no client is read every time (random ids are not kept)."""
    client, secret = store.add("kong", SERVES)
    calls = count_get_item(dynamodb)
    for _ in range(3):
        store.authenticate(client.client_id, secret)
    assert len(calls) == 1
    for _ in range(2):
        with pytest.raises(InvalidClient):
            store.authenticate(client.client_id, "wrong")
    assert len(calls) == 1
    for _ in range(2):
        with pytest.raises(InvalidClient):
            store.authenticate("tc_" + "0" * 20, secret)
    assert len(calls) == 3
    store.remove(client.client_id)
    clock.now += VERIFIED_CACHE_SECONDS - 1
    assert store.authenticate(client.client_id, secret) == client  # still cached
    clock.now += 1
    with pytest.raises(InvalidClient):  # removal has taken effect
        store.authenticate(client.client_id, secret)


def test_the_verified_clients_kept_are_bounded(store, dynamodb, monkeypatch):
    """At MAX_CACHED_CLIENTS verified clients the cache starts again empty: no number of
    clients (or of secrets rotated) grows a warm environment without bound."""
    monkeypatch.setattr(introspection_clients, "MAX_CACHED_CLIENTS", 3)
    clients = [store.add(f"kong-{n}", SERVES) for n in range(4)]
    calls = count_get_item(dynamodb)
    for client, secret in clients[:3]:
        store.authenticate(client.client_id, secret)
    store.authenticate(clients[0][0].client_id, clients[0][1])
    assert len(calls) == 3  # the first three kept
    store.authenticate(clients[3][0].client_id, clients[3][1])  # a fourth: starts again
    store.authenticate(clients[3][0].client_id, clients[3][1])
    assert len(calls) == 4
    store.authenticate(clients[0][0].client_id, clients[0][1])  # no longer kept
    assert len(calls) == 5


def item_of(dynamodb: Any, client_id: str) -> dict[str, Any]:
    key = {"id": {"S": f"client#{client_id}"}}
    return dict(dynamodb.get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"])


def test_audiences_are_stored_as_a_string_set_and_come_back_with_the_client(store, dynamodb):
    client, secret = store.add("kong", ["orders-api", "billing-api", "orders-api"])
    assert client.audiences == ("billing-api", "orders-api")  # distinct, sorted
    assert sorted(item_of(dynamodb, client.client_id)["audiences"]["SS"]) == [
        "billing-api",
        "orders-api",
    ]
    assert store.authenticate(client.client_id, secret).audiences == client.audiences
    assert client.to_dict()["audiences"] == ["billing-api", "orders-api"]


@pytest.mark.parametrize(
    ("audiences", "why"),
    [
        ([], "at least one"),
        (["orders api"], "orders api"),
        ([""], "''"),
        (["a" * 257], "1-256"),
        (["orders-api", "ok", "bad,comma"], "bad,comma"),
        ([f"api-{n}" for n in range(MAX_CLIENT_AUDIENCES + 1)], "at most"),
    ],
)
def test_bad_audiences_are_refused_before_any_write(audiences, why):
    store = ClientStore(None, TABLE)  # no DynamoDB at all: refused before any call
    with pytest.raises(ValueError, match=why):
        store.add("kong", audiences)
    with pytest.raises(ValueError, match=why):
        store.update("tc_0123456789abcdef0123", audiences)
    with pytest.raises(ValueError, match=why):
        store.add_audiences("tc_0123456789abcdef0123", audiences)
    with pytest.raises(ValueError, match=why):
        store.remove_audiences("tc_0123456789abcdef0123", audiences)


def test_a_client_item_without_audiences_authenticates_and_serves_none(store, dynamodb):
    """A client made before audiences existed (or by hand): fail closed, not "all"."""
    legacy, other_type = "tc_" + "1" * 20, "tc_" + "2" * 20
    for client_id, extra in ((legacy, {}), (other_type, {"audiences": {"S": "orders-api"}})):
        item = {
            "id": {"S": f"client#{client_id}"},
            "name": {"S": "old-gateway"},
            "secret_hash": {"S": secret_hash(client_id, "old-secret")},
            "created_at": {"N": "1700000000"},
            **extra,
        }
        dynamodb.put_item(TableName=TABLE, Item=item)
        assert store.authenticate(client_id, "old-secret").audiences == ()
    assert [c.audiences for c in store.list()] == [(), ()]


def test_update_replaces_the_audiences_and_nothing_else(store, dynamodb):
    client, secret = store.add("kong", ["orders-api", "billing-api"])
    before = item_of(dynamodb, client.client_id)
    updated = store.update(client.client_id, ["shipping-api"])
    assert updated is not None and updated.audiences == ("shipping-api",)
    assert (updated.client_id, updated.name, updated.created_at) == (
        client.client_id,
        client.name,
        client.created_at,
    )
    after = item_of(dynamodb, client.client_id)
    assert after["audiences"] == {"SS": ["shipping-api"]}
    assert {k: v for k, v in after.items() if k != "audiences"} == {
        k: v for k, v in before.items() if k != "audiences"
    }
    assert store.authenticate(client.client_id, secret).audiences == ("shipping-api",)


def test_update_of_a_missing_client_creates_nothing(store, dynamodb):
    assert store.update("tc_ffffffffffffffffffff", SERVES) is None
    assert store.update("not-a-client-id", SERVES) is None
    assert store.list() == []
    key = {"id": {"S": "client#tc_ffffffffffffffffffff"}}
    assert "Item" not in dynamodb.get_item(TableName=TABLE, Key=key)


def test_update_takes_effect_in_a_warm_store_within_the_cache_time(store, dynamodb, clock):
    client, secret = store.add("kong", ["orders-api"])
    assert store.authenticate(client.client_id, secret).audiences == ("orders-api",)
    other = ClientStore(dynamodb, TABLE)  # the operator's CLI: another process
    assert other.update(client.client_id, ["billing-api"]) is not None
    clock.now += VERIFIED_CACHE_SECONDS - 1
    assert store.authenticate(client.client_id, secret).audiences == ("orders-api",)
    clock.now += 1
    assert store.authenticate(client.client_id, secret).audiences == ("billing-api",)


def test_dynamodb_failures_are_temporarily_unavailable(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    unreachable = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        config=Config(connect_timeout=0.5, retries={"max_attempts": 1}),
    )
    store = ClientStore(unreachable, TABLE)
    with pytest.raises(TemporarilyUnavailable) as err:
        store.authenticate("tc_0123456789abcdef0123", "secret")
    assert err.value.status == 503 and "127.0.0.1" not in err.value.description
    with pytest.raises(TemporarilyUnavailable):
        store.add("kong", SERVES)
    with pytest.raises(TemporarilyUnavailable):
        store.update("tc_0123456789abcdef0123", SERVES)
    with pytest.raises(TemporarilyUnavailable):
        store.add_audiences("tc_0123456789abcdef0123", SERVES)
    with pytest.raises(TemporarilyUnavailable):
        store.remove_audiences("tc_0123456789abcdef0123", SERVES)


STACK_TEMPLATE = {
    "Resources": {
        "State": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "TableName": "tokex-stack-state",
                "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                "BillingMode": "PAY_PER_REQUEST",
            },
        }
    },
    "Outputs": {"StateTableName": {"Value": {"Ref": "State"}}, "TtlCapSeconds": {"Value": "3600"}},
}


def test_cli_finds_the_state_table_from_the_stack(dynamodb, capsys):
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    cloudformation.create_stack(StackName="tokex", TemplateBody=json.dumps(STACK_TEMPLATE))
    where = ["--stack", "tokex", "--region", "us-east-1"]
    assert main(["clients", "add", "kong", "--audience", "orders-api", "--json", *where]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["audiences"] == ["orders-api"]
    assert main(["clients", "list", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {k: added[k] for k in ("client_id", "name", "created_at", "audiences")}
    ]
    assert main(["revoke", "--jti", "abc", *where]) == 0
    item = dynamodb.get_item(TableName="tokex-stack-state", Key={"id": {"S": "revoked-jti#abc"}})
    assert "Item" in item

    # A jti is base64url: one in 64 starts with "-" (and some with "--"); pasted as it
    # comes, argparse alone would refuse it as a missing value.
    capsys.readouterr()
    for jti in ("-jQlw408u4Ev3PZygjRsX4BXFBnLigRm", "--9xq", "-"):
        for argv in (["--jti", jti], [f"--jti={jti}"]):
            assert main(["revoke", *argv, *where, "--json"]) == 0, argv
            assert json.loads(capsys.readouterr().out)["jti"] == jti
            key = {"id": {"S": f"revoked-jti#{jti}"}}
            assert "Item" in dynamodb.get_item(TableName="tokex-stack-state", Key=key)

    # A wrong table is named as such, not as an outage to wait out.
    code = main(["revoke", "--jti", "j", "--table", "nonexist", "--region", "us-east-1"])
    err = capsys.readouterr().err
    assert code == 1 and "state table nonexist:" in err and "no such table" in err
    assert "retry later" not in err

    template = {"Resources": STACK_TEMPLATE["Resources"]}
    template = json.loads(json.dumps(template).replace("tokex-stack-state", "other"))
    cloudformation.create_stack(StackName="not-tokex", TemplateBody=json.dumps(template))
    capsys.readouterr()
    assert main(["clients", "list", "--stack", "not-tokex", "--region", "us-east-1"]) == 1
    assert "has no StateTableName output" in capsys.readouterr().err
    assert main(["clients", "list", "--stack", "missing", "--region", "us-east-1"]) == 1
    assert "cannot describe stack 'missing'" in capsys.readouterr().err


def lose_first_answer(dynamodb: Any, operation: str) -> list[str]:
    """The first `operation` is applied by the emulated DynamoDB, then its answer is lost
    (a read timeout): the SDK retries it, as it would against AWS."""
    from botocore.exceptions import ReadTimeoutError
    from moto.core.models import botocore_stubber

    attempts: list[str] = []

    def before_send(request: Any, **kwargs: Any) -> None:
        if kwargs["event_name"].endswith(operation):
            attempts.append(operation)
            if len(attempts) == 1:
                botocore_stubber(request=request, **kwargs)  # applied...
                raise ReadTimeoutError(endpoint_url=request.url, error="answer lost")
        return None

    dynamodb.meta.events.register_first("before-send.dynamodb", before_send)
    return attempts


def test_an_add_whose_answer_was_lost_is_the_client_it_made(store, dynamodb):
    """The retry found its own item and failed its condition: the operator was told the
    store was unavailable, with a client stored whose secret no one had."""
    attempts = lose_first_answer(dynamodb, "PutItem")
    client, secret = store.add("gateway", SERVES)
    assert attempts == ["PutItem", "PutItem"]
    assert [c.client_id for c in store.list()] == [client.client_id]
    assert store.authenticate(client.client_id, secret).audiences == SERVES


def test_an_add_that_meets_another_clients_item_still_fails(store, dynamodb, monkeypatch):
    """Only its own item counts as success: an id taken by another client is not."""
    import secrets as secrets_module

    first, _ = store.add("first", SERVES)
    monkeypatch.setattr(secrets_module, "token_hex", lambda n: first.client_id.removeprefix("tc_"))
    with pytest.raises(TemporarilyUnavailable):
        store.add("second", SERVES)
    assert [c.name for c in store.list()] == ["first"]


def test_a_remove_whose_answer_was_lost_reports_the_client_gone(store, dynamodb):
    client, _ = store.add("gateway", SERVES)
    attempts = lose_first_answer(dynamodb, "DeleteItem")
    assert store.remove(client.client_id) is True  # was "no such client"
    assert attempts == ["DeleteItem", "DeleteItem"] and store.list() == []
    assert store.remove(client.client_id) is False  # without a retry: truly absent


def test_revoke_keeps_the_record_as_long_as_the_stacks_tokens_live(dynamodb, capsys):
    """A record DynamoDB's TTL deletes while a token it revokes is still valid would let
    introspection accept that token again: --ttl-cap may not be less than the --stack's
    TtlCapSeconds output; by default a record is kept 43200 s, the longest any deployment
    allows (which also outlives tokens issued before a cap was lowered)."""
    outputs = {"StateTableName": {"Value": TABLE}, "TtlCapSeconds": {"Value": "7200"}}
    template = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}, "Outputs": outputs}
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    cloudformation.create_stack(StackName="tokex", TemplateBody=json.dumps(template))
    capsys.readouterr()

    def kept_for(jti: str, *argv: str) -> int:
        assert main(["revoke", "--jti", jti, *argv, "--region", "us-east-1", "--json"]) == 0
        revoked = json.loads(capsys.readouterr().out)
        return int(revoked["expires_at"]) - int(revoked["revoked_at"]) - TTL_MARGIN_SECONDS

    assert kept_for("a", "--stack", "tokex") == 43200
    assert kept_for("b", "--stack", "tokex", "--ttl-cap", "7200") == 7200  # the stack's own
    assert kept_for("c", "--table", TABLE) == 43200
    assert kept_for("d", "--table", TABLE, "--ttl-cap", "60") == 60  # as the operator says

    argv = ["revoke", "--jti", "e", "--stack", "tokex", "--region", "us-east-1"]
    assert main([*argv, "--ttl-cap", "60", "--json"]) == 1
    failure = json.loads(capsys.readouterr().out)
    assert (failure["error"], failure["input"]) == ("failed", "--ttl-cap")
    assert "below the TTL cap of stack tokex (7200 s" in failure["error_description"]
    key = {"id": {"S": "revoked-jti#e"}}
    assert "Item" not in dynamodb.get_item(TableName=TABLE, Key=key)  # nothing written


# --- adding and removing audiences (`tokex clients update --add-audience/--remove-audience`)


def count_update_item(dynamodb: Any) -> list[str]:
    calls: list[str] = []
    dynamodb.meta.events.register("before-call.dynamodb.UpdateItem", lambda **_: calls.append("x"))
    return calls


def test_add_audiences_adds_to_the_set_and_changes_nothing_else(store, dynamodb):
    client, secret = store.add("kong", ["orders-api"])
    before = item_of(dynamodb, client.client_id)
    added = store.add_audiences(client.client_id, ["billing-api", "orders-api"])
    assert added == ClientStore(dynamodb, TABLE).list()[0]
    assert added is not None and added.audiences == ("billing-api", "orders-api")
    after = item_of(dynamodb, client.client_id)
    assert sorted(after["audiences"]["SS"]) == ["billing-api", "orders-api"]
    assert {k: v for k, v in after.items() if k != "audiences"} == {
        k: v for k, v in before.items() if k != "audiences"
    }
    fresh = ClientStore(dynamodb, TABLE)  # nothing kept from before the change
    assert fresh.authenticate(client.client_id, secret).audiences == ("billing-api", "orders-api")


def test_remove_audiences_removes_from_the_set_and_the_last_leaves_none(store, dynamodb):
    client, secret = store.add("kong", ["orders-api", "billing-api", "shipping-api"])
    removed = store.remove_audiences(client.client_id, ["billing-api", "not-served-api"])
    assert removed is not None and removed.audiences == ("orders-api", "shipping-api")
    assert sorted(item_of(dynamodb, client.client_id)["audiences"]["SS"]) == [
        "orders-api",
        "shipping-api",
    ]
    assert store.remove_audiences(client.client_id, ["not-served-api"]) == removed  # no change
    emptied = store.remove_audiences(client.client_id, ["orders-api", "shipping-api"])
    assert emptied is not None and emptied.audiences == ()
    assert "audiences" not in item_of(dynamodb, client.client_id)  # no empty set is stored
    assert store.remove_audiences(client.client_id, ["orders-api"]) == emptied  # still none
    assert ClientStore(dynamodb, TABLE).authenticate(client.client_id, secret).audiences == ()
    # ...and one can be added again: to an item without the attribute.
    again = store.add_audiences(client.client_id, ["orders-api"])
    assert again is not None and again.audiences == ("orders-api",)


def test_adding_or_removing_for_a_missing_client_creates_nothing(store, dynamodb):
    for change in (store.add_audiences, store.remove_audiences):
        assert change("tc_ffffffffffffffffffff", SERVES) is None
        assert change("not-a-client-id", SERVES) is None
    assert store.list() == []
    key = {"id": {"S": "client#tc_ffffffffffffffffffff"}}
    assert "Item" not in dynamodb.get_item(TableName=TABLE, Key=key)


def test_adding_beyond_the_limit_is_refused_and_writes_nothing(store, dynamodb):
    near = [f"api-{n:03}" for n in range(MAX_CLIENT_AUDIENCES - 1)]
    client, _ = store.add("kong", near)
    with pytest.raises(TooManyAudiences) as refused:
        store.add_audiences(client.client_id, ["new-1", "new-2", near[0]])
    assert isinstance(refused.value, ValueError)
    assert (refused.value.serves, refused.value.adding) == (MAX_CLIENT_AUDIENCES - 1, 2)
    assert f"a client serves at most {MAX_CLIENT_AUDIENCES} audiences" in str(refused.value)
    assert sorted(item_of(dynamodb, client.client_id)["audiences"]["SS"]) == near
    full = store.add_audiences(client.client_id, ["new-1"])  # exactly the limit
    assert full is not None and len(full.audiences) == MAX_CLIENT_AUDIENCES
    with pytest.raises(TooManyAudiences):
        store.add_audiences(client.client_id, ["new-2"])
    # Audiences it serves already are no change, also at the limit (the write's condition
    # cannot tell them from new ones: the refusal's item can).
    assert store.add_audiences(client.client_id, ["new-1", near[5]]) == full
    assert len(item_of(dynamodb, client.client_id)["audiences"]["SS"]) == MAX_CLIENT_AUDIENCES


def test_adding_some_served_and_some_new_near_the_limit_adds_the_new(store, dynamodb):
    """One served, one new, one place left: the first write is refused for want of room
    for two, the second adds the one that is new."""
    near = [f"api-{n:03}" for n in range(MAX_CLIENT_AUDIENCES - 1)]
    client, _ = store.add("kong", near)
    calls = count_update_item(dynamodb)
    added = store.add_audiences(client.client_id, [near[0], "new-api"])
    assert added is not None and added.audiences == tuple(sorted([*near, "new-api"]))
    assert len(calls) == 2


def test_an_add_whose_answer_was_lost_is_the_client_as_changed(store, dynamodb):
    """The SDK's retry meets the set the first attempt grew, one place short of room for
    what it adds: the audiences are there, not "too many"."""
    client, _ = store.add("kong", [f"api-{n:03}" for n in range(MAX_CLIENT_AUDIENCES - 1)])
    attempts = lose_first_answer(dynamodb, "UpdateItem")
    added = store.add_audiences(client.client_id, ["new-api"])
    assert attempts == ["UpdateItem", "UpdateItem"]
    assert added is not None and "new-api" in added.audiences
    assert len(added.audiences) == MAX_CLIENT_AUDIENCES


def test_audiences_that_are_no_string_set_are_refused_not_unavailable(store, dynamodb):
    """An item written by hand with `audiences` of another type: DynamoDB would refuse an
    ADD or DELETE on it (a ValidationException, "retry later"); only replacing it helps."""
    client_id = "tc_" + "2" * 20
    item = {
        "id": {"S": f"client#{client_id}"},
        "name": {"S": "by-hand"},
        "secret_hash": {"S": secret_hash(client_id, "s")},
        "created_at": {"N": "1700000000"},
        "audiences": {"S": "orders-api"},
    }
    dynamodb.put_item(TableName=TABLE, Item=item)
    for change in (store.add_audiences, store.remove_audiences):
        with pytest.raises(ValueError, match="not a string set") as refused:
            change(client_id, ["billing-api"])
        assert not isinstance(refused.value, TemporarilyUnavailable)
    assert item_of(dynamodb, client_id) == item
    assert store.update(client_id, ["billing-api"]) is not None


OPERATORS = 8


def test_operators_adding_an_audience_each_at_once_all_land(store, dynamodb):
    """OPERATORS operators add one audience each to the same client at once, each through
    its own store and DynamoDB client (its own `tokex clients update` process); every
    one's first request is held until all have sent theirs. Every audience is there after.

    What `--audience` alone made them do would lose all but one: each lists the client,
    then replaces the set with the one it read plus its own. Held the same way, every read
    sees the set before any write, and each write undoes the others:

        served = set(store.list()[0].audiences)              # all read orders-api
        store.update(client_id, served | {f"api-{n}"})       # the last write wins
    """
    client, _ = store.add("kong", ["orders-api"])
    start = threading.Barrier(OPERATORS, timeout=30)
    first = threading.local()

    def all_at_once(**_: Any) -> None:
        if not getattr(first, "sent", False):
            first.sent = True
            start.wait()

    operators = []
    for _ in range(OPERATORS):
        operator = boto3.client("dynamodb", region_name="us-east-1")
        operator.meta.events.register_first("before-send.dynamodb", all_at_once)
        operators.append(ClientStore(operator, TABLE))

    def add(n: int) -> tuple[str, ...]:
        added = operators[n].add_audiences(client.client_id, [f"api-{n}"])
        assert added is not None
        return added.audiences

    with ThreadPoolExecutor(OPERATORS) as pool:
        answers = list(pool.map(add, range(OPERATORS)))
    mine = {f"api-{n}" for n in range(OPERATORS)}
    assert all(f"api-{n}" in answer for n, answer in enumerate(answers))
    assert set(item_of(dynamodb, client.client_id)["audiences"]["SS"]) == {"orders-api", *mine}
    assert not start.broken


CLI_WHERE = ["--table", TABLE, "--region", "us-east-1"]


def update(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["clients", "update", *argv, *CLI_WHERE])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_add_audience_adds_and_shows_the_set(store, capsys):
    client, _ = store.add("kong", ["orders-api"])
    code, out, err = update(capsys, client.client_id, "--add-audience", "billing-api")
    assert (code, err) == (0, "")
    assert out == (
        f"{client.client_id} (kong) now serves billing-api orders-api "
        "(warm Lambdas may use the previous audiences for up to 30 s)\n"
    )
    argv = [client.client_id, "--add-audience", "shipping-api", "--add-audience", "orders-api"]
    code, out, err = update(capsys, *argv, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        **client.to_dict(),
        "audiences": ["billing-api", "orders-api", "shipping-api"],
    }
    assert store.list()[0].audiences == ("billing-api", "orders-api", "shipping-api")


def test_cli_remove_audience_removes_and_warns_when_none_is_left(store, capsys):
    client, _ = store.add("kong", ["orders-api", "billing-api"])
    argv = [client.client_id, "--remove-audience", "billing-api"]
    code, out, err = update(capsys, *argv, "--remove-audience", "never-served-api")
    assert (code, err) == (0, "")
    assert out.startswith(f"{client.client_id} (kong) now serves orders-api (warm Lambdas")
    code, out, err = update(capsys, client.client_id, "--remove-audience", "orders-api", "--json")
    assert code == 0
    assert json.loads(out) == {**client.to_dict(), "audiences": []}
    assert err == (
        f"tokex clients: {client.client_id} serves no audience now: it gets active: false "
        f"for every token: `tokex clients update {client.client_id} --add-audience AUD`\n"
    )
    code, out, err = update(capsys, client.client_id, "--remove-audience", "orders-api")
    assert code == 0 and "now serves no audience" in out and "active: false" in err
    assert store.list()[0].audiences == ()


def test_cli_audience_still_replaces_the_set(store, capsys):
    client, _ = store.add("kong", ["orders-api", "billing-api"])
    code, out, _ = update(capsys, client.client_id, "--audience", "shipping-api", "--json")
    assert code == 0 and json.loads(out)["audiences"] == ["shipping-api"]


@pytest.mark.parametrize("flag", ["--add-audience", "--remove-audience"])
def test_cli_changes_of_a_missing_client_are_not_found(store, capsys, flag):
    missing = "tc_" + "f" * 20
    code, out, _ = update(capsys, missing, flag, "orders-api", "--json")
    failure = json.loads(out)
    assert (code, failure["error"], failure["input"]) == (1, "not_found", missing)
    assert store.list() == []


def test_cli_add_beyond_the_limit_names_it(store, dynamodb, capsys):
    near = [f"api-{n:03}" for n in range(MAX_CLIENT_AUDIENCES - 1)]
    client, _ = store.add("kong", near)
    argv = [client.client_id, "--add-audience", "new-1", "--add-audience", "new-2"]
    code, out, err = update(capsys, *argv)
    assert (code, out) == (1, "")
    assert f"a client serves at most {MAX_CLIENT_AUDIENCES} audiences" in err
    assert err.count("\n") == 1
    code, out, _ = update(capsys, *argv, "--json")
    failure = json.loads(out)
    assert (code, failure["error"], failure["input"]) == (1, "failed", "--add-audience")
    assert f"at most {MAX_CLIENT_AUDIENCES} audiences" in failure["error_description"]
    assert sorted(item_of(dynamodb, client.client_id)["audiences"]["SS"]) == near


@pytest.mark.parametrize(
    ("argv", "at_fault"),
    [
        (["--audience", "a", "--add-audience", "b"], "--add-audience"),
        (["--add-audience", "a", "--remove-audience", "b"], "--remove-audience"),
        (["--remove-audience", "a", "--audience", "b"], "--audience"),
        (["--add-audience", "bad audience"], "--add-audience"),
        (["--remove-audience", ""], "--remove-audience"),
        ([], "--audience"),
    ],
)
def test_cli_one_kind_of_change_per_command(store, capsys, argv, at_fault):
    client, _ = store.add("kong", ["orders-api"])
    code, out, _ = update(capsys, client.client_id, *argv, "--json")
    failure = json.loads(out)
    assert (code, failure["input"]) == (2, at_fault)
    assert store.list()[0].audiences == ("orders-api",)
