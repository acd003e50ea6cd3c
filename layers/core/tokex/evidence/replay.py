"""Single use of accepted signed requests (contract: "Single use"; on by default).

A SigV4 signature stays valid for its whole date window, so anyone who sees a signed
request (a log, a proxy) could exchange it again. The first exchange that gets past STS
uses the request up, whatever its outcome (a token, `invalid_target`, `invalid_scope`,
429): it records the SHA-256 of the signature as `sig#<hex>` in the state table, on
condition that no live record exists (adapters/state_table/admission.py makes that
write, in one request with the rate-limit count). Only a failure of tokex's own upstreams
after that gives the request back, by marking the record released. DynamoDB's TTL
removes a record once the request's date window has passed, when `verify_sts_request`
refuses the request anyway.
"""

from __future__ import annotations

import hashlib

from tokex.errors import InvalidGrant
from tokex.evidence.sigv4_request import MAX_AGE, MAX_SKEW_FUTURE, StsRequest


def signature_digest(request: StsRequest) -> str:
    """The SHA-256 of the request's signature, 64 hex characters: what single use records."""
    return hashlib.sha256(request.signature.encode("ascii")).hexdigest()


def signature_expires_at(request: StsRequest) -> int:
    """Epoch seconds after which no copy of the request can pass verify_sts_request."""
    return int((request.amz_date + MAX_AGE + MAX_SKEW_FUTURE).timestamp())


def replay_refusal() -> InvalidGrant:
    return InvalidGrant(
        "this signed request was already used; sign a new one for each exchange",
        reason="replay",
    )
