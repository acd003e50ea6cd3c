"""Single use of accepted signed requests (contract: "Single use"; on by default).

A SigV4 signature stays valid for its whole date window, so anyone who sees a signed
request (a log, a proxy) could exchange it again. The first exchange that gets past STS
uses the request up, whatever its outcome (a token, `invalid_target`, `invalid_scope`,
429): it records the SHA-256 of the signature as `sig#<hex>` in the state table, on
condition that no live record exists (admission.py makes that write, in one request with
the rate-limit count). Only a failure of tokex's own upstreams after that gives the
request back, by marking the record released. DynamoDB's TTL removes a record once the
request's date window has passed, when `verify_sts_request` refuses the request anyway.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tokex.evidence.sigv4_request import MAX_AGE, MAX_SKEW_FUTURE, StsRequest

KEY_PREFIX = "sig#"


def signature_key(request: StsRequest) -> str:
    """`sig#` + 64 hex characters: the record is ~150 bytes, whatever the request."""
    return KEY_PREFIX + hashlib.sha256(request.signature.encode("ascii")).hexdigest()


def signature_expires_at(request: StsRequest) -> int:
    """Epoch seconds after which no copy of the request can pass verify_sts_request."""
    return int((request.amz_date + MAX_AGE + MAX_SKEW_FUTURE).timestamp())


def create_state_table(dynamodb_client: Any, table_name: str) -> None:
    """The state table, for local mode and tests (the CDK app defines the deployed one):
    key `id` (S), TTL attribute `expires_at` (N, epoch seconds)."""
    dynamodb_client.create_table(
        TableName=table_name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
