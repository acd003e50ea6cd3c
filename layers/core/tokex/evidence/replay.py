"""Single use of accepted evidence (contract: "Single use"; on by default).

A SigV4 signature stays valid for its whole date window, and an AWS outbound identity
federation token until its `exp`, so anyone who sees one (a log, a proxy) could exchange
it again. The first exchange that gets past verification uses the evidence up, whatever
its outcome (a token, `invalid_target`, `invalid_scope`, 429): it records a SHA-256 digest
(of the signature; of the token's issuer and `jti`) as `sig#<hex>` in the state table, on
condition that no live record exists (adapters/state_table/admission.py makes that
write, in one request with the rate-limit count). Only a failure of tokex's own upstreams
after that gives the evidence back, by marking the record released. DynamoDB's TTL
removes a record RECORD_MARGIN_SECONDS after the last moment verification accepts the
evidence, when verification refuses it anyway.
EKS service-account tokens are not single use: a pod presents the same token until the
kubelet rotates it (docs/security.md "Single use and the rate limit").
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from tokex.errors import InvalidGrant
from tokex.evidence.sigv4_request import MAX_AGE, StsRequest

# How long a record outlives the last moment its evidence passes verification. An
# exchange reads its clock once, when it starts, and writes the record up to its deadline
# later (tokex.deadline: at most a few seconds); other environments' clocks differ a little
# too; and DynamoDB's TTL may delete an expired record at any time. Without this, a copy
# verified in the window's last seconds could find the first use's record already gone.
RECORD_MARGIN_SECONDS = 300


@dataclass(frozen=True)
class UsedEvidence:
    """One piece of evidence as single use records it: `digest` (64 hex characters) names
    it, `expires_at` (epoch seconds) is when no copy of it can pass verification any more,
    and `what` names it in the refusal of a replay."""

    digest: str
    expires_at: int
    what: str = "signed request"

    @classmethod
    def accepted_until(cls, digest: str, last_accepted: float, what: str) -> UsedEvidence:
        """Evidence that passes verification until `last_accepted` (epoch seconds): its
        record lives RECORD_MARGIN_SECONDS longer."""
        return cls(digest, math.ceil(last_accepted) + RECORD_MARGIN_SECONDS, what)

    def replay_refusal(self) -> InvalidGrant:
        return replay_refusal(self.what)


def used_signature(request: StsRequest) -> UsedEvidence:
    """A signed request: the SHA-256 of its signature; verify_sts_request accepts it until
    its date window closes, MAX_AGE after its date."""
    last_accepted = (request.amz_date + MAX_AGE).timestamp()
    return UsedEvidence.accepted_until(signature_digest(request), last_accepted, "signed request")


def signature_digest(request: StsRequest) -> str:
    """The SHA-256 of the request's signature, 64 hex characters: what single use records."""
    return hashlib.sha256(request.signature.encode("ascii")).hexdigest()


def replay_refusal(what: str = "signed request") -> InvalidGrant:
    fresh = "sign a new one" if what == "signed request" else "get a new one"
    return InvalidGrant(f"this {what} was already used; {fresh} for each exchange", reason="replay")


class RecentlyUsed:
    """Evidence this execution environment knows is used up: a replay of it is
    refused before STS, at no cost (no STS call, no write, no `Sign`). Only an
    authoritative outcome adds one (the state table's write admitted the request, or
    refused it as a replay or over budget), never a request this environment gave back
    after an outage, so this refuses earlier what the table would refuse. Not seen: a
    give-back by another environment (or another thread) after this one saw the request
    refused as a replay, which that give-back then undoes; two copies in flight at once
    meet it, the clients never (they sign anew for every attempt). Bounded: the oldest
    entries go first, and a forgotten one is still refused by the table. (An entry needs no
    expiry: once the request's date window has passed, verify_sts_request refuses it before
    this is asked.)
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._digests: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, used: UsedEvidence) -> bool:
        with self._lock:
            return used.digest in self._digests

    def add(self, used: UsedEvidence) -> None:
        digest = used.digest
        with self._lock:
            self._digests[digest] = None
            self._digests.move_to_end(digest)
            while len(self._digests) > self._capacity:
                self._digests.popitem(last=False)

    def forget(self, used: UsedEvidence) -> None:
        """The evidence was given back (a failure of tokex's own upstreams): usable again."""
        with self._lock:
            self._digests.pop(used.digest, None)
