"""The proxy's structured log: one JSON object per line, on stderr by default.

Only what the callers pass in is written, and they pass no token, no secret and no
header value (docs/injection.md "Logs"); a path is logged without its query, which may
carry anything.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO


class JsonLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # one whole line at a time, whatever the threads

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        # ASCII: a lone surrogate (JSON can carry one) would make the line unwritable.
        line = json.dumps(record, default=str) + "\n"
        stream = self._stream or sys.stderr  # looked up late: a test's capture applies
        with self._lock:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):  # a closed stream never fails a request
                pass
