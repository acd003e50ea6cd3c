"""No cross-Region replay (issue 14; docs/security.md "Regional exchanges"): two Regional
exchanges on the emulator, each with its own state table, and the simulated global-table
replication between them paused, so nothing but the rule can refuse a replay in the other
Region. Then replication resumes and both Regions hold the evidence's record."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.exchange_handler import (
    cold_exchange_handler,
    invoke_exchange,
    invoke_jwt_exchange,
)
from tests.system.endpoints import audit_lines, sign
from tests.system.local_federation import sts_client
from tokex.adapters.state_table.schema import create_state_table
from tokex.local.emulator import set_signature_checking
from tokex.local.replication import Replicator
from tokex.local.runner import LocalSystem

REGIONS = ("us-east-1", "eu-west-1")


@pytest.fixture
def regional(local_system: LocalSystem) -> Iterator[tuple[dict[str, Any], Replicator, Any]]:
    """One exchange handler per Region (TOKEX_SERVING_REGION, its own state table), and
    the replicator between the tables, paused."""
    dynamodb = local_system.deployment.client("dynamodb")
    suffix = uuid.uuid4().hex[:8]
    tables = {region: f"tokex-state-{region}-{suffix}" for region in REGIONS}
    deployment = local_system.deployment
    admin = deployment.emulator_admin_token
    set_signature_checking(deployment.endpoint_url, on=False, admin_token=admin)  # the admin's step
    try:
        for table in tables.values():
            create_state_table(dynamodb, table)
    finally:
        set_signature_checking(deployment.endpoint_url, on=True, admin_token=admin)
    replicator = Replicator(dynamodb, tables, delay=0.0).start()
    replicator.pause()
    handlers = {
        region: cold_exchange_handler(
            local_system, TOKEX_SERVING_REGION=region, TOKEX_STATE_TABLE=tables[region]
        )
        for region in REGIONS
    }
    try:
        yield handlers, replicator, (dynamodb, tables)
    finally:
        replicator.stop()


def exchange_jwt(handler: Any, token: str) -> tuple[int, dict[str, Any]]:
    status, _, body = invoke_jwt_exchange(handler, token)
    return status, body


def signature_records(dynamodb: Any, table: str) -> set[str]:
    items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    return {item["id"]["S"] for item in items if item["id"]["S"].startswith("sig#")}


def test_a_signed_request_used_in_one_region_is_refused_in_the_other(
    local_system: LocalSystem, regional: Any
) -> None:
    handlers, replicator, (dynamodb, tables) = regional
    signed = sign(local_system, region="us-east-1")
    status, _, body = invoke_exchange(handlers["us-east-1"], signed)
    assert status == 200, body
    # Replication is paused: eu-west-1's table has never heard of this request...
    assert signature_records(dynamodb, tables["eu-west-1"]) == set()
    # ...and its exchange refuses it all the same: not signed for its Region's STS.
    status, _, body = invoke_exchange(handlers["eu-west-1"], signed)
    assert (status, body["error"]) == (400, "invalid_grant"), body
    assert "access_token" not in body
    # A request signed for eu-west-1 is that Region's to use.
    status, _, body = invoke_exchange(handlers["eu-west-1"], sign(local_system, region="eu-west-1"))
    assert status == 200, body
    replicator.resume()
    replicator.flush()
    assert signature_records(dynamodb, tables["us-east-1"]) == signature_records(
        dynamodb, tables["eu-west-1"]
    )
    assert len(signature_records(dynamodb, tables["us-east-1"])) == 2


def test_an_oif_token_is_exchanged_only_in_its_source_region(
    local_system: LocalSystem, regional: Any
) -> None:
    handlers, _, (dynamodb, tables) = regional
    token = sts_client(local_system, region="eu-west-1").get_web_identity_token(
        Audience=[local_system.issuer], SigningAlgorithm="RS256", DurationSeconds=60
    )["WebIdentityToken"]
    status, body = exchange_jwt(handlers["us-east-1"], token)  # another Region's token
    assert (status, body["error"]) == (400, "invalid_grant"), body
    assert signature_records(dynamodb, tables["us-east-1"]) == set()  # not even used up
    status, body = exchange_jwt(handlers["eu-west-1"], token)
    assert status == 200, body
    status, body = exchange_jwt(handlers["eu-west-1"], token)  # and once only
    assert (status, body["error"]) == (400, "invalid_grant"), body


def test_the_replicator_waits_out_its_delay_and_copies_both_ways(
    local_system: LocalSystem, regional: Any
) -> None:
    _, replicator, (dynamodb, tables) = regional
    east, west = tables["us-east-1"], tables["eu-west-1"]
    for table, key in ((east, "sig#east"), (west, "sig#west")):
        dynamodb.put_item(TableName=table, Item={"id": {"S": key}})
    assert signature_records(dynamodb, east) == {"sig#east"}  # paused: nothing crossed
    replicator.delay = 3600.0
    replicator.resume()
    assert replicator.replicate_once() == 0  # within the delay: nothing crosses
    assert signature_records(dynamodb, west) == {"sig#west"}
    assert replicator.flush() == 2
    assert (
        signature_records(dynamodb, east)
        == signature_records(dynamodb, west)
        == {
            "sig#east",
            "sig#west",
        }
    )


def test_a_regional_exchange_answers_at_its_own_regions_path(
    local_system: LocalSystem, regional: Any
) -> None:
    """docs/multi-region.md: CloudFront forwards `/regions/<r>/token` whole to Region r."""
    handlers, _, _ = regional
    own = invoke_exchange(
        handlers["eu-west-1"], sign(local_system, region="eu-west-1"),
        path="/regions/eu-west-1/token",
    )  # fmt: skip
    assert own[0] == 200, own[2]
    assert own[2]["token_type"] == "Bearer"
    # Another Region's path is not this function's: 404, and the request is not used.
    signed = sign(local_system, region="eu-west-1")
    with audit_lines() as audits:
        other = invoke_exchange(handlers["eu-west-1"], signed, path="/regions/us-east-1/token")
    assert other[0] == 404
    assert "access_token" not in other[2]
    refusals = [(a["outcome"], a["error"], a["reason"]) for a in audits]
    assert refusals == [("refused", "invalid_request", "no_such_endpoint")]
    assert invoke_exchange(handlers["eu-west-1"], signed)[0] == 200
