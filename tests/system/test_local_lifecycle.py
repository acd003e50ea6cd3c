"""`start_local` from Python (docs/local.md): a system whose front never served stops all
the same (shutting a front down waits for a serving loop, which never came); one state
directory serves one system at a time."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from tokex.cli.main import main
from tokex.local import moto_fixes
from tokex.local.emulator import SubprocessMotoServer
from tokex.local.runner import StateDirectoryInUse, start_local


def test_a_system_that_never_served_stops(tmp_path: Path) -> None:
    system = start_local(port=0, state_dir=tmp_path / "state", moto=SubprocessMotoServer())
    stopping = threading.Thread(target=system.stop, daemon=True)
    stopping.start()
    stopping.join(timeout=60)
    assert not stopping.is_alive(), "stop() waited for a front that never served"


def test_a_second_system_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    """It would replace the first one's instance certificate and env files, and the first
    would then refuse its own demo instance's evidence."""
    state = tmp_path / "state"
    first = start_local(port=0, state_dir=state, moto=SubprocessMotoServer())
    try:
        files = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
        assert "imds-local-ca.pem" in files and "workload.env" in files
        refused_emulator = SubprocessMotoServer()
        with pytest.raises(StateDirectoryInUse) as refused:
            start_local(port=0, state_dir=state, moto=refused_emulator)
        assert refused_emulator._process.poll() is not None  # the caller's emulator, stopped
        assert str(state) in str(refused.value)
        assert f"process {os.getpid()}" in str(refused.value)
        assert {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} == files
    finally:
        first.stop()
    # Stopped, it lets the directory go.
    second = start_local(port=0, state_dir=state, moto=SubprocessMotoServer())
    second.stop()


# --- the emulator's transaction time (docs/local.md "What it starts") ----------------------


def test_the_emulators_transactions_hold_their_items_as_long_as_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(moto_fixes.TRANSACTION_SECONDS_ENV, "0.5")
    emulator = SubprocessMotoServer()
    try:
        dynamodb = boto3.client(
            "dynamodb",
            endpoint_url=emulator.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        dynamodb.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )

        def count(item: str) -> None:
            update = {"TableName": "t", "Key": {"id": {"S": item}}}
            dynamodb.transact_write_items(
                TransactItems=[{"Update": {**update, "UpdateExpression": "ADD hits :one", **ONE}}]
            )

        holder = threading.Thread(target=count, args=("rate#p",))
        holder.start()
        time.sleep(0.2)
        try:
            with pytest.raises(ClientError) as cancelled:
                count("rate#p")
        finally:
            holder.join()
        reasons = cancelled.value.response["CancellationReasons"]
        assert [reason["Code"] for reason in reasons] == ["TransactionConflict"]
        count("rate#p")
        hits = dynamodb.get_item(TableName="t", Key={"id": {"S": "rate#p"}})["Item"]["hits"]
        assert hits == {"N": "2"}
    finally:
        emulator.stop()


ONE = {"ExpressionAttributeValues": {":one": {"N": "1"}}}


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "6"])
def test_a_wrong_emulator_transaction_time_is_a_usage_error(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv(moto_fixes.TRANSACTION_SECONDS_ENV, value)
    state_dir = tmp_path / "state"
    code = main(["local", "--port", "0", "--state-dir", str(state_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{moto_fixes.TRANSACTION_SECONDS_ENV} must be a number of seconds" in err
    assert repr(value) in err
    assert not state_dir.exists()  # refused before anything was started or written
