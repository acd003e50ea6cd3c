"""The per-caller counter against DynamoDB (moto in process: pure boto3 code)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from tokex.errors import RateLimited, TemporarilyUnavailable
from tokex.evidence.replay import create_state_table
from tokex.ratelimit import DynamoDbRateLimiter

ROLE = "arn:aws:iam::123456789012:role/app"
OTHER = "arn:aws:iam::123456789012:role/other"


@pytest.fixture
def dynamodb():
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_state_table(client, "state")
        yield client


def test_budget_per_principal_and_window(dynamodb) -> None:
    now = [1_800_000_010.0]  # 10 s into a minute window
    limiter = DynamoDbRateLimiter(dynamodb, "state", per_minute=2, clock=lambda: now[0])
    limiter.check(ROLE)
    limiter.check(ROLE)
    with pytest.raises(RateLimited) as refused:
        limiter.check(ROLE)
    assert refused.value.status == 429
    assert refused.value.headers() == {"Retry-After": "51"}
    limiter.check(OTHER)  # another principal has its own budget
    now[0] += 60  # next window
    limiter.check(ROLE)


def test_counter_items_expire(dynamodb) -> None:
    DynamoDbRateLimiter(dynamodb, "state", per_minute=5, clock=lambda: 120.0).check(ROLE)
    item = dynamodb.get_item(TableName="state", Key={"id": {"S": f"rate#{ROLE}#2"}})["Item"]
    assert item["hits"]["N"] == "1"
    assert int(item["expires_at"]["N"]) == 240


def test_store_failure_fails_closed(dynamodb) -> None:
    limiter = DynamoDbRateLimiter(dynamodb, "missing-table", per_minute=5)
    with pytest.raises(TemporarilyUnavailable):
        limiter.check(ROLE)
