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
import threading
from collections import OrderedDict

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


class RecentlyUsed:
    """Signed requests this execution environment knows are used up: a replay of one is
    refused before STS, at no cost (no STS call, no write, no `Sign`). Only an
    authoritative outcome adds one (the state table's write admitted the request, or
    refused it as a replay or over budget), never a request given back after an outage, so
    this refuses earlier what the table would refuse, nothing else. Bounded: the oldest
    entries go first, and a forgotten one is still refused by the table. (An entry needs no
    expiry: once the request's date window has passed, verify_sts_request refuses it before
    this is asked.)
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._digests: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, request: StsRequest) -> bool:
        digest = signature_digest(request)
        with self._lock:
            return digest in self._digests

    def add(self, request: StsRequest) -> None:
        digest = signature_digest(request)
        with self._lock:
            self._digests[digest] = None
            self._digests.move_to_end(digest)
            while len(self._digests) > self._capacity:
                self._digests.popitem(last=False)

    def forget(self, request: StsRequest) -> None:
        """The request was given back (a failure of tokex's own upstreams): usable again."""
        with self._lock:
            self._digests.pop(signature_digest(request), None)
