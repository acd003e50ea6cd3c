"""A warm exchange reads DynamoDB zero times (docs/performance.md "Hot path budget"): proven
black-box by
taking the policy out of the table between two exchanges of one warm handler."""

from __future__ import annotations

from tests.support.exchange_handler import cold_exchange_handler
from tests.support.exchange_handler import invoke_exchange as invoke_for
from tests.system.endpoints import assert_refused, sign
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
