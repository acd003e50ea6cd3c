"""Global-table replication, simulated for `tokex local` and its tests (issue 14;
docs/security.md "Regional exchanges", docs/local.md "Several Regions").

moto does not replicate global-table items between Regions, so a simulated Region has a
table of its own (in its own emulator Region, or under a name of its own) and this copies
the writes across, after a controllable delay, and can be paused: a test of the
cross-Region rules runs with replication paused, so it proves the rule, not a shared
table. Like DynamoDB's own global tables, puts and deletes both replicate, the last writer
wins per item, and nothing is transactional across Regions.

A pass sees the tables, not their writes: a write is an item found changed (or gone)
since the previous pass, dated when first seen. It reaches the other Regions once the
first of its Region's unreplicated changes to that item is `delay` old; a newer write in
another Region replaces it (ties within one pass: the Region listed last). A write that
lands in a Region between a pass's scan and its copy there can be overwritten: only
concurrent writes of one item in two Regions meet that, as they meet a conflict in
DynamoDB.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tokex.adapters.state_table.schema import KEY_ATTRIBUTE

DEFAULT_INTERVAL_SECONDS = 0.2

Item = dict[str, Any]


@dataclass(frozen=True)
class _Write:
    item: Item | None  # None: deleted
    region: str
    since: float  # when the first unreplicated change in that Region was seen


class Replicator:
    """Replicates one table between Regions: `tables` maps each Region to its table's name.

    `dynamodb` is one DynamoDB client for every Region's table (tables of one emulator
    Region, each under a name of its own) or a mapping Region -> that Region's client (the
    tables then have one name, as a global table's replicas do)."""

    def __init__(
        self,
        dynamodb: Any,
        tables: Mapping[str, str],
        *,
        delay: float = 0.0,
        interval: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        if len(tables) < 2:
            raise ValueError("replication needs at least two Regions' tables")
        self._tables = dict(tables)
        per_region = isinstance(dynamodb, Mapping)
        self._clients = {r: dynamodb[r] if per_region else dynamodb for r in self._tables}
        self.delay = delay
        self._interval = interval
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one pass at a time (the thread or a flush)
        # Each Region's items (by key) as the last pass left them.
        self._known: dict[str, dict[str, Item]] = {region: {} for region in self._tables}
        # The latest write of each item not yet in every Region.
        self._pending: dict[str, _Write] = {}
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
        """Nothing crosses Regions until `resume` (items written meanwhile wait); a pass
        under way finishes before this returns."""
        self._paused.set()
        with self._lock:
            pass

    def resume(self) -> None:
        self._paused.clear()

    def flush(self) -> int:
        """One pass now, ignoring the delay (even while paused); the items copied or
        deleted."""
        return self.replicate_once(ignore_delay=True)

    def replicate_once(self, *, ignore_delay: bool = False) -> int:
        """One pass now (even while paused): the items copied or deleted."""
        with self._lock:
            return self._pass(ignore_delay=ignore_delay)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:  # checked under the lock: `pause` waits for this pass
                if self._paused.is_set():
                    continue
                try:
                    self._pass(ignore_delay=False)
                except (BotoCoreError, ClientError) as err:  # the next pass tries again
                    print(f"tokex local: replication pass failed: {err}", file=sys.stderr)

    def _pass(self, *, ignore_delay: bool) -> int:
        now = time.monotonic()
        current = {region: self._scan(region) for region in self._tables}
        for region, items in current.items():
            known = self._known[region]
            for key in items.keys() | known.keys():
                item = items.get(key)
                if item == known.get(key):
                    continue
                pending = self._pending.get(key)
                # The lag runs from a Region's first unreplicated change: an item changed
                # on every pass (a rate counter) still replicates.
                since = pending.since if pending is not None and pending.region == region else now
                self._pending[key] = _Write(item, region, since)
            self._known[region] = items
        copied = 0
        for key, write in list(self._pending.items()):
            if not ignore_delay and now - write.since < self.delay:
                continue
            for region, items in current.items():
                if items.get(key) != write.item:
                    self._write(region, key, write.item)
                    copied += 1
            del self._pending[key]
        return copied

    def _write(self, region: str, key: str, item: Item | None) -> None:
        client, table, known = self._clients[region], self._tables[region], self._known[region]
        if item is None:
            client.delete_item(TableName=table, Key={KEY_ATTRIBUTE: {"S": key}})
            known.pop(key, None)
        else:
            client.put_item(TableName=table, Item=item)
            known[key] = item

    def _scan(self, region: str) -> dict[str, Item]:
        items: dict[str, Item] = {}
        kwargs: dict[str, Any] = {"TableName": self._tables[region], "ConsistentRead": True}
        while True:
            page = self._clients[region].scan(**kwargs)
            items.update((item[KEY_ATTRIBUTE]["S"], item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class Replicators(dict[str, Replicator]):
    """Several tables' replicators (by table name), paused, resumed and flushed together:
    what `tokex local --regions` runs for its policy and state tables."""

    def start(self) -> Replicators:
        for replicator in self.values():
            replicator.start()
        return self

    def stop(self) -> None:
        for replicator in self.values():
            replicator.stop()

    def pause(self) -> None:
        for replicator in self.values():
            replicator.pause()

    def resume(self) -> None:
        for replicator in self.values():
            replicator.resume()

    def flush(self) -> int:
        return sum(replicator.flush() for replicator in self.values())
