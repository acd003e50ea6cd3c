"""Policies held in memory for a short time, so a warm exchange reads DynamoDB zero times
(docs/performance.md "Hot path budget").

Fail closed: once the copy is older than its TTL it is never served again until a reload
succeeds. A reload failure raises (TemporarilyUnavailable from the store, a 503), it does
not quietly keep answering from policies an operator may have since disabled or denied.
The failure is held for 5 s (shared_load.py FAILED_LOAD_HOLD_SECONDS, at most the TTL):
the exchanges of those seconds get the same 503 without reading the table, so a throttled
table or a blocking item costs one load per environment per hold, not one per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from tokex.clock import SuspendAwareClock
from tokex.errors import TemporarilyUnavailable
from tokex.policy.model import Policy
from tokex.settings import MAX_POLICY_CACHE_SECONDS
from tokex.shared_load import SharedLoad

log = logging.getLogger(__name__)


class PolicyLoader(Protocol):
    """What the cache loads policies from (adapters/policy_table.py's PolicyStore).

    Not exchange.py's `PolicySource`, which the cache itself implements."""

    def load_all(self) -> tuple[list[Policy], list[str]]: ...


class CachedPolicies:
    """The `PolicySource` of exchange.py."""

    def __init__(
        self,
        store: PolicyLoader,
        ttl_seconds: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock`: seconds on which the TTL is counted, a SuspendAwareClock unless given
        (a frozen environment's sleep counts: policies loaded before it are not fresh)."""
        # docs/policies.md "Evaluation", settings.py: a change (a new deny, a disabled
        # policy) takes effect
        # within a minute at most.
        if not 0 <= ttl_seconds <= MAX_POLICY_CACHE_SECONDS:
            raise ValueError(f"ttl_seconds must be 0..{MAX_POLICY_CACHE_SECONDS}")
        self._store = store
        self._loads = SharedLoad("dynamodb", ttl_seconds, clock or SuspendAwareClock())
        self._policies: tuple[Policy, ...] = ()
        self._invalid_ids: tuple[str, ...] = ()

    def policies(self) -> list[Policy]:
        """The current policies: from memory while fresh, otherwise reloaded first (one
        reload for the requests that find them stale together, its outcome theirs; a
        failed reload's failure, without another, for the hold after it: shared_load.py)."""
        self._loads(self._reload)
        return list(self._policies)

    def _reload(self) -> None:
        try:
            policies, invalid_ids = self._store.load_all()
        except TemporarilyUnavailable as failure:
            # A load that an invalid item blocks (PoliciesBlocked) still says which items
            # do not validate.
            self._invalid_ids = getattr(failure, "invalid_ids", self._invalid_ids)
            raise
        self._policies = tuple(policies)
        self._invalid_ids = tuple(invalid_ids)
        if invalid_ids:
            log.warning("policies skipped as invalid: %s", ", ".join(invalid_ids))

    @property
    def invalid_ids(self) -> tuple[str, ...]:
        """Ids of stored documents the last load could not read (a successful one, or one
        an item that may be a deny blocked): skipped, or a deny standing in for them. Each
        exchange's audit line names them (`invalid_policies`) and counts them (the
        `InvalidPolicies` metric, for an alarm). Read without waiting for a reload in
        flight (one tuple, replaced whole): a request past its deadline reads it too."""
        return self._invalid_ids

    def invalidate(self) -> None:
        """Forget the copy: the next call reloads (e.g. after an operator's write), even
        within a failed reload's hold."""
        self._loads.forget()
