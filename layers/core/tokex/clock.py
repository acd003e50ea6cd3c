"""A clock for the age of what a process keeps between requests (tokens, policies, keys).

The monotonic clock alone does not count the time a suspended process sleeps (a Lambda
execution environment frozen between invocations, a SnapStart snapshot restored later),
so whatever was cached before would look fresh long after it should have been refreshed.
The wall clock alone can be set back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class SuspendAwareClock:
    """Seconds since it was made, counting time the process was suspended too: each
    reading adds the larger of what the monotonic and the wall clock say has passed since
    the last one (a wall clock set back adds nothing; the monotonic clock still does).

    A token's age cannot be counted on the monotonic clock alone: it does not count the
    time a suspended process sleeps (a Lambda execution environment frozen between
    invocations, a SnapStart snapshot restored later), so a token cached before would look
    fresh long after its `exp`. The wall clock alone can be set back. A wall clock set
    forward and back again makes tokens look older than they are, never younger: an early
    refresh. Read at every `token()` call: one lock and two clock reads.
    """

    def __init__(
        self,
        monotonic: Callable[[], float] | None = None,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self._monotonic = monotonic or time.monotonic
        self._wall = wall or time.time
        self._last_monotonic = self._monotonic()
        self._last_wall = self._wall()
        self._passed = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            monotonic, wall = self._monotonic(), self._wall()
            self._passed += max(monotonic - self._last_monotonic, wall - self._last_wall, 0.0)
            self._last_monotonic, self._last_wall = monotonic, wall
            return self._passed
