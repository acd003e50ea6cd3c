"""A state table in in-process moto, for the adapters' tests of the state-table stores
(never imported by unit tests: it loads boto3 and moto)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tokex.adapters.state_table.schema import create_state_table


@contextlib.contextmanager
def state_table(monkeypatch: pytest.MonkeyPatch, table: str) -> Iterator[Any]:
    """A DynamoDB client of in-process moto, the state table `table` created, with
    credentials and endpoints of the environment kept out of it."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_state_table(client, table)
        yield client
