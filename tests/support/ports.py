"""A port for a server that another process (or a later bind) will open: one the kernel
gives no connection as its source port and no other test process hands out.

A port the OS picked (`bind(0)`) and then released is free only for a moment: in a busy
parallel run another connection's source port or another worker's pick could take it
before the server binds it (the extension then failed to start in CI with
Extension.ListenFailed). So each pytest-xdist worker hands out ports from its own band
below Linux's ephemeral range (32768-60999, which `connect()` and `bind(0)` draw from),
each port once per process while the band lasts, and only ports it can bind right now."""

from __future__ import annotations

import itertools
import os
import re
import socket
import threading

LOOPBACK = "127.0.0.1"
FIRST_PORT = 20000  # above the usual well-known and registered servers' ports
BAND_SIZE = 1500  # ports per worker: 8 workers fit below 32768
_WORKER = re.compile(r"gw(\d+)")


def _band() -> range:
    worker = _WORKER.fullmatch(os.environ.get("PYTEST_XDIST_WORKER", "gw0"))
    index = int(worker.group(1)) % 8 if worker else 0
    start = FIRST_PORT + index * BAND_SIZE
    return range(start, start + BAND_SIZE)


_candidates = itertools.cycle(_band())
_lock = threading.Lock()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now and that this process has not
    handed out lately (the band is used round robin)."""
    with _lock:
        for _ in range(BAND_SIZE):
            port = next(_candidates)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((LOOPBACK, port))
                except OSError:
                    continue  # in use, or in TIME_WAIT without SO_REUSEADDR
                return port
    raise RuntimeError(f"no free port in {_band()}")
