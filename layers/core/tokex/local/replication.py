"""Global-table replication, simulated for `tokex local` and its tests (issue 14;
docs/security.md "Regional exchanges").

moto keeps one table per name and does not replicate global-table items between Regions,
so a simulated Region has tables of its own and this copies their items across, after a
controllable delay, and can be paused: a test of the cross-Region rules runs with
replication paused, so it proves the rule, not a shared table. Like DynamoDB's own global
tables, the last writer wins per item and nothing is transactional across Regions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from tokex.adapters.state_table.schema import KEY_ATTRIBUTE

DEFAULT_INTERVAL_SECONDS = 0.2


class Replicator:
    """Copies every item of each table (one per Region: `tables` maps a Region to its
    table name) to the others once it has been seen for `delay` seconds."""

    def __init__(
        self,
        dynamodb_client: Any,
        tables: Mapping[str, str],
        *,
        delay: float = 0.0,
        interval: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        if len(tables) < 2:
            raise ValueError("replication needs at least two Regions' tables")
        self._dynamodb = dynamodb_client
        self._tables = dict(tables)
        self.delay = delay
        self._interval = interval
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one pass at a time (the thread or a flush)
        # (table, key) -> (item, when first seen): what is waiting out the delay.
        self._seen: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> Replicator:
        self._thread = threading.Thread(target=self._run, name="replicator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def pause(self) -> None:
        """Nothing crosses Regions until `resume` (items written meanwhile wait)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def flush(self) -> int:
        """One pass now, ignoring the delay (even while paused); the items copied."""
        return self.replicate_once(ignore_delay=True)

    def replicate_once(self, *, ignore_delay: bool = False) -> int:
        """One pass now (even while paused): the items copied."""
        with self._lock:
            return self._pass(ignore_delay=ignore_delay)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if not self._paused.is_set():
                self.replicate_once()

    def _pass(self, *, ignore_delay: bool) -> int:
        now = time.monotonic()
        copied = 0
        for region, table in self._tables.items():
            for item in self._scan(table):
                key = item[KEY_ATTRIBUTE]["S"]
                seen = self._seen.get((table, key))
                if seen is None or seen[0] != item:
                    self._seen[(table, key)] = seen = (item, now)
                if not ignore_delay and now - seen[1] < self.delay:
                    continue
                for other_region, other in self._tables.items():
                    if other_region != region and self._item(other, key) != item:
                        self._dynamodb.put_item(TableName=other, Item=item)
                        self._seen[(other, key)] = (item, now)
                        copied += 1
        return copied

    def _scan(self, table: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            page = self._dynamodb.scan(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _item(self, table: str, key: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._dynamodb.get_item(
            TableName=table, Key={KEY_ATTRIBUTE: {"S": key}}, ConsistentRead=True
        ).get("Item")
        return found
