"""A policy stored before its claim names were reserved (or written into the table by hand)
through the real exchange: it still allows, and its reserved names never reach the token
(docs/policies.md "The document")."""

from __future__ import annotations

import base64
import json
import time

from tests.support.exchange_handler import cold_exchange_handler
from tests.support.exchange_handler import invoke_exchange as invoke_for
from tests.system.endpoints import audit_lines, sign, verify
from tokex.local.provision import ACCOUNT_ID, DEMO_ROLE_ARN
from tokex.policy.model import Policy, PolicyValidationError

AUDIENCE = "reserved-claims-api"
POLICY_ID = "stored-reserved-claims"
CLAIMS = {
    # mod_auth_openidc's `Require claim aws.account:999999999999` matched this top-level
    # key: a caller of another account passed as that account.
    "aws.account": "999999999999",
    "aws.evidence": "eks",
    "SCOPE": "orders:admin",
    "Sub": "arn:aws:iam::999999999999:role/admin",
    "scp": "orders:write",
    "role": "admin",
    "team": "orders",
}


def test_a_stored_policy_s_reserved_claim_names_never_reach_the_token(local_system):
    document = {
        "id": POLICY_ID,
        "effect": "allow",
        "principals": [DEMO_ROLE_ARN],
        "audiences": [AUDIENCE],
        "scopes": ["orders:read"],
        "claims": CLAIMS,
    }
    try:
        Policy.from_document(document)
    except PolicyValidationError as refused:  # as `tokex policy put` would
        assert refused.field == "claims.aws.account"
    else:
        raise AssertionError("put accepts a policy claim named aws.account")
    deployment = local_system.deployment
    dynamodb = deployment.client("dynamodb")
    dynamodb.put_item(  # around validation, as an earlier version could store it
        TableName=deployment.policy_table,
        Item={
            "id": {"S": POLICY_ID},
            "document": {"S": json.dumps(document)},
            "updated_at": {"N": str(int(time.time()))},
        },
    )
    try:
        with audit_lines() as audits:
            status, _, body = invoke_for(
                cold_exchange_handler(local_system), sign(local_system), AUDIENCE
            )
    finally:
        dynamodb.delete_item(TableName=deployment.policy_table, Key={"id": {"S": POLICY_ID}})
    assert status == 200, body
    [audit] = audits
    assert (audit["policy"], audit.get("invalid_policies")) == (POLICY_ID, None)
    claims = verify(local_system, body["access_token"], AUDIENCE)
    assert claims["aws"]["account"] == ACCOUNT_ID
    assert claims["aws"]["evidence"] == "sigv4"
    assert (claims["sub"], claims["scope"], claims["team"]) == (
        DEMO_ROLE_ARN,
        "orders:read",
        "orders",
    )
    assert "aws.account" not in claims and "aws.evidence" not in claims
    tokex_own = {
        "iss", "sub", "client_id", "aud", "iat", "nbf", "exp", "jti", "policy", "aws", "aud_kid"
    }  # fmt: skip
    names = {name.casefold() for name in claims}
    assert not names & {"scp", "role"}
    assert len(names) == len(claims)  # no name twice but for its case
    # tokex's claims first in the payload, for readers that take the first they find.
    payload = body["access_token"].split(".")[1]
    order = list(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    assert set(order[: len(tokex_own)]) == tokex_own
