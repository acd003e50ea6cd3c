"""The emulator fix keeps moto's TransactWriteItems all-or-nothing while backing up only the
items a transaction names (local/moto_fixes.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from tokex.local import moto_fixes

TABLE = "state"


@pytest.fixture
def dynamodb():
    moto_fixes.install()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for n in range(200):  # bystanders a whole-table backup would have copied
            client.put_item(TableName=TABLE, Item={"id": {"S": f"other#{n}"}})
        yield client


def _admit(client, signature: str) -> None:
    client.transact_write_items(
        TransactItems=[
            {
                "Put": {
                    "TableName": TABLE,
                    "Item": {"id": {"S": signature}},
                    "ConditionExpression": "attribute_not_exists(id)",
                }
            },
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": {"id": {"S": "rate#p"}},
                    "UpdateExpression": "ADD hits :one",
                    "ConditionExpression": "attribute_not_exists(hits) OR hits < :limit",
                    "ExpressionAttributeValues": {":one": {"N": "1"}, ":limit": {"N": "3"}},
                }
            },
        ]
    )


def _hits(client) -> int:
    item = client.get_item(TableName=TABLE, Key={"id": {"S": "rate#p"}}).get("Item")
    return int(item["hits"]["N"]) if item else 0


def _exists(client, key: str) -> bool:
    return "Item" in client.get_item(TableName=TABLE, Key={"id": {"S": key}})


def test_a_committed_transaction_writes_every_item(dynamodb) -> None:
    _admit(dynamodb, "sig#a")
    assert _exists(dynamodb, "sig#a")
    assert _hits(dynamodb) == 1


def test_a_failed_first_item_undoes_the_second(dynamodb) -> None:
    _admit(dynamodb, "sig#a")
    # The Put's condition fails, the Update (run after it) succeeds: all of it is undone.
    with pytest.raises(ClientError) as cancelled:
        _admit(dynamodb, "sig#a")
    reasons = cancelled.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["ConditionalCheckFailed", "None"]
    assert _hits(dynamodb) == 1


def test_a_failed_second_item_undoes_the_first(dynamodb) -> None:
    for n in range(3):
        _admit(dynamodb, f"sig#{n}")
    with pytest.raises(ClientError) as cancelled:
        _admit(dynamodb, "sig#new")
    reasons = cancelled.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed"]
    assert not _exists(dynamodb, "sig#new")
    assert _hits(dynamodb) == 3
    assert _exists(dynamodb, "other#199")


def test_moto_lists_its_own_package_once_not_per_request(monkeypatch) -> None:
    """moto's server looked its services up in a fresh `listdir` of its package on every
    request, under the lock every request waits for."""
    import os

    import moto
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    moto_fixes.install()
    package = os.path.dirname(moto.__file__)
    on_disk = [
        name
        for name in sorted(os.listdir(package))
        if os.path.isdir(os.path.join(package, name)) and not name.startswith("__")
    ]
    assert list(backends.list_of_moto_modules()) == on_disk and "kms" in on_disk

    def no_listing(path: str) -> list[str]:
        raise AssertionError(f"listed {path} while serving")

    monkeypatch.setattr(os, "listdir", no_listing)
    app = DomainDispatcherApplication(create_backend_app)
    assert [app.get_backend_for_host(host) for host in ("kms", "dynamodb")] == ["kms", "dynamodb"]


# --- expressions parsed once (local/moto_fixes.py "Expressions") ---------------------------


def _charge(client, limit: int, by: int = 1) -> None:
    client.update_item(
        TableName=TABLE,
        Key={"id": {"S": "rate#p"}},
        UpdateExpression="ADD hits :n",
        ConditionExpression="attribute_not_exists(hits) OR hits < :limit",
        ExpressionAttributeValues={":n": {"N": str(by)}, ":limit": {"N": str(limit)}},
    )


def test_a_kept_condition_is_one_per_set_of_values(dynamodb) -> None:
    """The parsed condition holds its values: the same text with another limit decides
    by that limit, and the same update expression adds whatever value it is given."""
    _charge(dynamodb, limit=5, by=2)
    _charge(dynamodb, limit=5, by=2)
    assert _hits(dynamodb) == 4
    with pytest.raises(ClientError) as refused:
        _charge(dynamodb, limit=4)
    assert refused.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    _charge(dynamodb, limit=10, by=3)
    assert _hits(dynamodb) == 7


def test_a_kept_condition_still_has_its_placeholders_checked(dynamodb) -> None:
    """moto refuses a name the expressions never use; it reads the used ones off the
    parse, so a second identical request (the kept parse) is refused the same way."""
    for _ in range(2):
        with pytest.raises(ClientError) as refused:
            dynamodb.put_item(
                TableName=TABLE,
                Item={"id": {"S": "sig#x"}},
                ConditionExpression="attribute_not_exists(#k)",
                ExpressionAttributeNames={"#k": "id", "#unused": "other"},
            )
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert "#unused" in refused.value.response["Error"]["Message"]
    assert not _exists(dynamodb, "sig#x")


@pytest.mark.parametrize(
    ("field", "expression"),
    [
        ("ConditionExpression", "hits < :undefined"),
        ("ConditionExpression", "attribute_not_exists(id"),
        ("UpdateExpression", "ADD ADD"),
    ],
)
def test_an_invalid_expression_is_refused_every_time(dynamodb, field: str, expression: str) -> None:
    """Never kept: the second attempt fails exactly as the first (moto answers a bad
    update expression with ValidationException; a bad condition escapes it in process)."""
    request = {
        "TableName": TABLE,
        "Key": {"id": {"S": "rate#p"}},
        "UpdateExpression": "ADD hits :one",
        "ExpressionAttributeValues": {":one": {"N": "1"}},
        field: expression,
    }
    failures = []
    for _ in range(2):
        with pytest.raises(Exception) as refused:  # whatever moto raises
            dynamodb.update_item(**request)
        failures.append((type(refused.value), str(refused.value)))
    assert failures[0] == failures[1]
    assert _hits(dynamodb) == 0


def test_concurrent_requests_with_one_condition_text_each_decide_by_their_own_values(
    dynamodb,
) -> None:
    """An empty parse cache and 16 requests at once with the same condition and update
    texts but limits and increments of their own: each is decided by its own values (a
    parse shared across values would decide some by another request's)."""
    for n in range(16):
        dynamodb.put_item(TableName=TABLE, Item={"id": {"S": f"c#{n}"}, "hits": {"N": "5"}})
    moto_fixes.forget_parsed_expressions()
    together = threading.Barrier(16)
    applied: dict[int, bool] = {}

    def charge(n: int) -> None:
        together.wait()
        try:
            dynamodb.update_item(
                TableName=TABLE,
                Key={"id": {"S": f"c#{n}"}},
                UpdateExpression="ADD hits :n",
                ConditionExpression="hits < :limit",
                ExpressionAttributeValues={":n": {"N": str(n)}, ":limit": {"N": str(n)}},
            )
            applied[n] = True
        except ClientError as refused:
            assert refused.response["Error"]["Code"] == "ConditionalCheckFailedException"
            applied[n] = False

    threads = [threading.Thread(target=charge, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert applied == {n: n > 5 for n in range(16)}
    for n in range(16):
        item = dynamodb.get_item(TableName=TABLE, Key={"id": {"S": f"c#{n}"}})["Item"]
        assert int(item["hits"]["N"]) == (5 + n if n > 5 else 5)


def test_moto_parses_a_repeated_expression_once(dynamodb, monkeypatch) -> None:
    from moto.dynamodb.comparisons import ConditionExpressionParser
    from moto.dynamodb.parsing.expressions import ExpressionTokenizer

    moto_fixes.forget_parsed_expressions()  # none kept: this test's first request parses
    lexed: list[str] = []
    lex = ConditionExpressionParser._lex_condition_expression
    tokenize = ExpressionTokenizer.make_list.__func__

    def counting_lex(self):
        lexed.append(self.condition_expression)
        return lex(self)

    def counting_tokenize(cls, expression):
        lexed.append(expression)
        return tokenize(cls, expression)

    monkeypatch.setattr(ConditionExpressionParser, "_lex_condition_expression", counting_lex)
    monkeypatch.setattr(ExpressionTokenizer, "make_list", classmethod(counting_tokenize))
    for _ in range(3):
        _charge(dynamodb, limit=1000, by=1)
    assert _hits(dynamodb) == 3
    # Each exactly once, by the first request; moto had parsed each twice per request.
    assert sorted(lexed) == ["ADD hits :n", "attribute_not_exists(hits) OR hits < :limit"]


def test_a_kept_condition_is_not_changed_by_what_moto_does_to_the_request_later(dynamodb) -> None:
    """A set value in a condition: moto keeps the request's own list in the item it
    writes, and an ADD grows that list in place; the kept parse holds its own copy."""

    def tag_once(key: str) -> None:
        dynamodb.update_item(
            TableName=TABLE,
            Key={"id": {"S": key}},
            UpdateExpression="SET tags = :s",
            ConditionExpression="attribute_not_exists(tags) OR tags <> :s",
            ExpressionAttributeValues={":s": {"SS": ["x"]}},
        )

    tag_once("a")
    dynamodb.update_item(
        TableName=TABLE,
        Key={"id": {"S": "a"}},
        UpdateExpression="ADD tags :t",
        ExpressionAttributeValues={":t": {"SS": ["y"]}},
    )
    dynamodb.put_item(TableName=TABLE, Item={"id": {"S": "c"}, "tags": {"SS": ["x"]}})
    with pytest.raises(ClientError) as refused:
        tag_once("c")  # its tags are {"x"}: the condition fails, as without the fix
    assert refused.value.response["Error"]["Code"] == "ConditionalCheckFailedException"


def _charge_once(client, token: str, hits_limit: int = 3) -> None:
    client.transact_write_items(
        ClientRequestToken=token,
        TransactItems=[
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": {"id": {"S": "rate#p"}},
                    "UpdateExpression": "ADD hits :one",
                    "ConditionExpression": "attribute_not_exists(hits) OR hits < :limit",
                    "ExpressionAttributeValues": {
                        ":one": {"N": "1"},
                        ":limit": {"N": str(hits_limit)},
                    },
                }
            }
        ],
    )


def test_a_transaction_repeated_with_its_token_is_applied_once(dynamodb) -> None:
    # What the SDK's retry after a lost answer sends: AWS applies it once.
    _charge_once(dynamodb, "token-1")
    _charge_once(dynamodb, "token-1")
    assert _hits(dynamodb) == 1
    _charge_once(dynamodb, "token-2")
    assert _hits(dynamodb) == 2


def test_a_token_reused_for_another_request_is_refused(dynamodb) -> None:
    _charge_once(dynamodb, "token-1")
    with pytest.raises(ClientError) as info:
        _charge_once(dynamodb, "token-1", hits_limit=4)
    assert info.value.response["Error"]["Code"] == "IdempotentParameterMismatchException"
    assert _hits(dynamodb) == 1


def test_a_cancelled_transactions_token_may_be_sent_again(dynamodb) -> None:
    _charge_once(dynamodb, "a")
    with pytest.raises(ClientError) as info:
        _charge_once(dynamodb, "cancelled", hits_limit=1)
    assert info.value.response["Error"]["Code"] == "TransactionCanceledException"
    _charge_once(dynamodb, "cancelled", hits_limit=2)  # nothing was applied: a new request
    assert _hits(dynamodb) == 2


def test_a_token_is_remembered_for_ten_minutes(dynamodb, monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(moto_fixes, "_clock", lambda: now[0])
    _charge_once(dynamodb, "token-1")
    now[0] += moto_fixes.IDEMPOTENCY_WINDOW_SECONDS
    _charge_once(dynamodb, "token-1")
    assert _hits(dynamodb) == 1
    now[0] += 1
    _charge_once(dynamodb, "token-1")  # past the window: a new request
    assert _hits(dynamodb) == 2


def test_a_token_sent_again_while_its_transaction_runs_is_in_progress_then_applied_once(
    dynamodb, monkeypatch
) -> None:
    """The SDK's retry can arrive while the first attempt is still applying: DynamoDB
    answers `TransactionInProgressException` (which the SDK retries), and the transaction
    counts once."""
    monkeypatch.setattr(moto_fixes, "transaction_seconds", 0.5)
    no_retries = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    first = threading.Thread(target=_charge_once, args=(dynamodb, "token-1"))
    first.start()
    try:
        _wait_until_running(dynamodb, "token-1")
        with pytest.raises(ClientError) as running:
            _charge_once(no_retries, "token-1")
        _charge_once(dynamodb, "token-1")  # the SDK retries it until the first completes
    finally:
        first.join()
    assert running.value.response["Error"]["Code"] == "TransactionInProgressException"
    assert _hits(dynamodb) == 1


def _wait_until_running(client, token: str) -> None:
    """Until the emulator is applying the transaction sent with `token`."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][client.meta.region_name]
    for _ in range(500):
        tokens = backend.__dict__.get("_tokex_request_tokens")
        if tokens is not None and token in tokens.running:
            return
        time.sleep(0.01)
    pytest.fail(f"the transaction of {token} never started")


# --- conflicts (local/moto_fixes.py "Conflicts") -------------------------------------------


@pytest.fixture
def slow_transactions(monkeypatch):
    """Each transaction holds its items this long, as AWS's take milliseconds of their own."""
    monkeypatch.setattr(moto_fixes, "transaction_seconds", 0.5)
    return 0.5


def _while_a_transaction_holds_rate_p(client, during) -> None:
    """Run `during()` while another thread's admission holds `sig#first` and `rate#p`."""
    holder = threading.Thread(target=_admit, args=(client, "sig#first"))
    holder.start()
    try:
        time.sleep(0.15)  # well inside the holder's 0.5 s
        during()
    finally:
        holder.join()


def test_a_transaction_on_an_item_another_is_writing_is_cancelled(
    dynamodb, slow_transactions
) -> None:
    seen: list[Any] = []

    def racing() -> None:
        with pytest.raises(ClientError) as cancelled:
            _admit(dynamodb, "sig#second")
        seen.append(cancelled.value.response)

    _while_a_transaction_holds_rate_p(dynamodb, racing)
    (response,) = seen
    assert response["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in response["CancellationReasons"]] == ["None", "TransactionConflict"]
    assert not _exists(dynamodb, "sig#second")  # nothing of it applied
    assert _hits(dynamodb) == 1 and _exists(dynamodb, "sig#first")
    _admit(dynamodb, "sig#second")  # once the first has finished, it goes through
    assert _hits(dynamodb) == 2


def test_a_single_write_to_an_item_a_transaction_is_writing_is_refused(
    dynamodb, slow_transactions
) -> None:
    refusals: list[str] = []

    def racing() -> None:
        with pytest.raises(ClientError) as refused:
            _charge(dynamodb, limit=10)
        refusals.append(refused.value.response["Error"]["Code"])
        # Items the transaction does not name are not held.
        dynamodb.put_item(TableName=TABLE, Item={"id": {"S": "sig#bystander"}})
        _admit_other(dynamodb)

    _while_a_transaction_holds_rate_p(dynamodb, racing)
    assert refusals == ["TransactionConflictException"]
    assert _hits(dynamodb) == 1 and _exists(dynamodb, "sig#bystander")
    _charge(dynamodb, limit=10)
    assert _hits(dynamodb) == 2


def test_a_cancelled_or_refused_transaction_holds_nothing_after(dynamodb) -> None:
    _admit(dynamodb, "sig#a")
    with pytest.raises(ClientError):
        _admit(dynamodb, "sig#a")  # its condition fails
    with pytest.raises(ClientError):  # moto refuses it: the same item twice
        dynamodb.transact_write_items(
            TransactItems=[
                {"ConditionCheck": {**_rate_p(), "ConditionExpression": "attribute_exists(id)"}},
                {"Update": {**_rate_p(), "UpdateExpression": "ADD hits :one", **_one()}},
            ]
        )
    _charge(dynamodb, limit=10)  # neither left rate#p held
    _admit(dynamodb, "sig#b")
    assert _hits(dynamodb) == 3


def _rate_p() -> dict[str, Any]:
    return {"TableName": TABLE, "Key": {"id": {"S": "rate#p"}}}


def _one() -> dict[str, Any]:
    return {"ExpressionAttributeValues": {":one": {"N": "1"}}}


def _admit_other(client) -> None:
    """A transaction on items the holder does not name."""
    client.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": TABLE, "Item": {"id": {"S": "sig#elsewhere"}}}},
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": {"id": {"S": "rate#q"}},
                    "UpdateExpression": "ADD hits :one",
                    **_one(),
                }
            },
        ]
    )


def test_kms_refuses_a_key_that_is_not_enabled_as_aws_does() -> None:
    """moto signed with, and gave out the public key of, a disabled key or one scheduled
    for deletion; AWS refuses both (DisabledException, KMSInvalidStateException)."""
    moto_fixes.install()
    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        sign = {"Message": b"m", "SigningAlgorithm": "ECDSA_SHA_256"}
        signature = kms.sign(KeyId=key["Arn"], **sign)["Signature"]

        def refusals() -> list[tuple[str, str]]:
            calls = (
                lambda: kms.sign(KeyId=key["Arn"], **sign),
                lambda: kms.verify(KeyId=key["KeyId"], Signature=signature, **sign),
                lambda: kms.get_public_key(KeyId=key["KeyId"]),
            )
            errors = []
            for call in calls:
                with pytest.raises(ClientError) as refused:
                    call()
                errors.append((refused.value.response["Error"]["Code"], str(refused.value)))
            return errors

        kms.disable_key(KeyId=key["KeyId"])
        for code, message in refusals():
            assert code == "DisabledException"
            assert message.endswith(f"{key['Arn']} is disabled.")
        kms.enable_key(KeyId=key["KeyId"])
        assert kms.verify(KeyId=key["Arn"], Signature=signature, **sign)["SignatureValid"]
        kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
        for code, message in refusals():
            assert code == "KMSInvalidStateException"
            assert message.endswith(f"{key['Arn']} is pending deletion.")
