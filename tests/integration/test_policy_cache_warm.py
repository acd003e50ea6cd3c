"""A warm exchange reads DynamoDB zero times (architecture.md hot path): proven black-box by
taking the policy out of the table between two exchanges of one warm handler."""

from __future__ import annotations

from tests.integration.test_exchange import sign
from tests.integration.test_upstream_failures import invoke_for
from tokex.local.functions import load_handler
from tokex.local.provision import DEMO_ROLE_ARN
from tokex.local.runner import handler_environment
from tokex.policy.model import Policy
from tokex.policy.store import PolicyStore

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
    env = deployment.handler_env(local_system.issuer, TOKEX_POLICY_CACHE_SECONDS="60")
    with handler_environment(env):
        warm = load_handler("exchange")
    try:
        assert invoke_for(warm, sign(local_system), "cache-probe-api")[0] == 200
        assert store.delete("cache-probe")
        # Same warm handler: the deleted policy still applies, so nothing was read.
        assert invoke_for(warm, sign(local_system), "cache-probe-api")[0] == 200
    finally:
        store.delete("cache-probe")
    # A cold start reads the table and no longer finds the policy.
    with handler_environment(env):
        cold = load_handler("exchange")
    status, _, body = invoke_for(cold, sign(local_system), "cache-probe-api")
    assert (status, body["error"]) == (400, "invalid_target")
