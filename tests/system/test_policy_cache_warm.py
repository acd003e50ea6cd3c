"""A warm exchange reads DynamoDB zero times (docs/performance.md "Hot path budget"): proven
black-box by
taking the policy out of the table between two exchanges of one warm handler."""

from __future__ import annotations

import json
import time

from tests.support.exchange_handler import cold_exchange_handler
from tests.support.exchange_handler import invoke_exchange as invoke_for
from tests.system.endpoints import assert_refused, audit_lines, emitted_metrics, outcomes, sign
from tokex.adapters.policy_table import PolicyStore
from tokex.local.provision import DEMO_ROLE_ARN
from tokex.policy.model import Policy

PROBE = {
    "id": "cache-probe",
    "effect": "allow",
    "principals": [DEMO_ROLE_ARN],
    "audiences": ["cache-probe-api"],
}


def test_warm_exchange_is_served_from_the_policy_cache(local_system):
    deployment = local_system.deployment
    store = PolicyStore(deployment.client("dynamodb"), deployment.policy_table)
    store.put(Policy.from_document(PROBE))
    warm = cold_exchange_handler(local_system, TOKEX_POLICY_CACHE_SECONDS="60")
    try:
        assert invoke_for(warm, sign(local_system), "cache-probe-api")[0] == 200
        assert store.delete("cache-probe")
        # Same warm handler: the deleted policy still applies, so nothing was read.
        assert invoke_for(warm, sign(local_system), "cache-probe-api")[0] == 200
    finally:
        store.delete("cache-probe")
    # A cold start reads the table and no longer finds the policy.
    cold = cold_exchange_handler(local_system, TOKEX_POLICY_CACHE_SECONDS="60")
    signed = sign(local_system)
    assert_refused(
        lambda: invoke_for(cold, signed, "cache-probe-api"),
        400,
        "invalid_target",
        "policy demo-instance does not cover the audience; "
        "policy demo-workload does not cover the audience",
    )


def test_an_invalid_stored_allow_is_in_every_audit_line_and_counted(local_system):
    """An allow that no longer validates stops granting (a deny stands in for it): its
    callers hear only `invalid_target`, so every exchange's audit line names it
    (`invalid_policies`) and the `InvalidPolicies` metric counts it, for an alarm."""
    deployment = local_system.deployment
    dynamodb = deployment.client("dynamodb")
    broken = {**PROBE, "id": "invalid-probe", "scopes": "probe:read"}  # scopes: not a list
    item = {
        "id": {"S": "invalid-probe"},
        "document": {"S": json.dumps(broken)},
        "updated_at": {"N": str(int(time.time()))},
    }
    dynamodb.put_item(TableName=deployment.policy_table, Item=item)
    try:
        handler = cold_exchange_handler(local_system)
        with audit_lines() as audits, emitted_metrics() as metrics:
            issued = invoke_for(handler, sign(local_system))
            denied = invoke_for(handler, sign(local_system), "cache-probe-api")
        assert (issued[0], denied[0], denied[2]["error"]) == (200, 400, "invalid_target")
        assert [a["invalid_policies"] for a in audits] == [["invalid-probe"]] * 2
        assert outcomes(metrics) == ["issued", "refused"]
        assert [m["InvalidPolicies"] for m in metrics if "InvalidPolicies" in m] == [[1.0]] * 2
    finally:
        dynamodb.delete_item(TableName=deployment.policy_table, Key={"id": {"S": "invalid-probe"}})
    with audit_lines() as audits, emitted_metrics() as metrics:
        assert invoke_for(cold_exchange_handler(local_system), sign(local_system))[0] == 200
    assert "invalid_policies" not in audits[0]
    assert not [m for m in metrics if "InvalidPolicies" in m]


def test_a_stored_item_that_may_be_a_deny_blocks_and_is_named_and_counted(local_system):
    """An invalid item that may be a deny makes every exchange a 503 misconfigured: its
    audit line names every invalid item all the same, and `InvalidPolicies` counts them."""
    deployment = local_system.deployment
    dynamodb = deployment.client("dynamodb")
    items = {
        "invalid-deny": {"id": "invalid-deny", "effect": "deny", "audiences": "x"},
        "invalid-allow": {
            "id": "invalid-allow",
            "effect": "allow",
            "principals": ["arn:aws:iam::123456789012:role/someone"],
            "audiences": ["a"],
            "scopes": "not a list",
        },
    }
    for item_id, document in items.items():
        dynamodb.put_item(
            TableName=deployment.policy_table,
            Item={
                "id": {"S": item_id},
                "document": {"S": json.dumps(document)},
                "updated_at": {"N": str(int(time.time()))},
            },
        )
    try:
        handler = cold_exchange_handler(local_system)
        with audit_lines() as audits, emitted_metrics() as metrics:
            status, _, body = invoke_for(handler, sign(local_system))
        assert (status, body["error"]) == (503, "temporarily_unavailable")
        [audit] = audits
        assert (audit["outcome"], audit["invalid_policies"]) == (
            "misconfigured",
            ["invalid-allow", "invalid-deny"],
        )
        assert audit["reason"].startswith("policy 'invalid-deny' is invalid and may be a deny")
        assert outcomes(metrics) == ["misconfigured"]
        assert [m["InvalidPolicies"] for m in metrics if "InvalidPolicies" in m] == [[2.0]]
    finally:
        for item_id in items:
            dynamodb.delete_item(TableName=deployment.policy_table, Key={"id": {"S": item_id}})
