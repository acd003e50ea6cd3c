"""A port for a server that another process (or a later bind) will open: one the kernel
gives no connection as its source port and no other test process hands out.

A port the OS picked (`bind(0)`) and then released is free only for a moment: in a busy
parallel run another connection's source port or another worker's pick could take it
before the server binds it (the extension then failed to start in CI with
Extension.ListenFailed). So each test process hands out ports from a band of its own
below Linux's ephemeral range (32768-60999, which `connect()` and `bind(0)` draw from),
each port once per process while the band lasts, and only ports it can bind right now.

A band is a process's for as long as it lives: it holds an exclusive `flock` on the
band's lock file, which the kernel releases when the process ends however it ends. So
two test runs on one machine (two checkouts, or a 3.13 run beside the 3.11 one) never
hand out the same port; each worker starts looking at the band of its xdist number."""

from __future__ import annotations

import fcntl
import functools
import itertools
import os
import re
import socket
import tempfile
import threading
import warnings
from pathlib import Path

LOOPBACK = "127.0.0.1"
FIRST_PORT = 20000  # above the usual well-known and registered servers' ports
EPHEMERAL_START = 32768
BAND_SIZE = 750  # ports per process: 17 bands fit below the ephemeral range
BAND_COUNT = (EPHEMERAL_START - FIRST_PORT) // BAND_SIZE
LOCK_DIRECTORY = Path(tempfile.gettempdir()) / "tokex-test-port-bands"
_WORKER = re.compile(r"gw(\d+)")
_lock = threading.Lock()


def band_range(index: int) -> range:
    start = FIRST_PORT + index * BAND_SIZE
    return range(start, start + BAND_SIZE)


def _preferred_band() -> int:
    worker = _WORKER.fullmatch(os.environ.get("PYTEST_XDIST_WORKER", "gw0"))
    return int(worker.group(1)) % BAND_COUNT if worker else 0


def _hold(index: int) -> bool:
    """Whether this process now holds band `index` (for the rest of its life)."""
    try:
        if not LOCK_DIRECTORY.is_dir():
            LOCK_DIRECTORY.mkdir(exist_ok=True)
            LOCK_DIRECTORY.chmod(0o1777)  # like /tmp: every user's runs share the bands
        descriptor = os.open(LOCK_DIRECTORY / f"band-{index}", os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        return False  # e.g. another user's lock file: their band
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return False
    # Deliberately never closed: closing would release the band while the process
    # may still hand its ports out. The descriptor is not inherited by subprocesses.
    return True


@functools.cache
def claimed_band() -> range:
    """This process's band, claimed on first use. With every band held (more test
    processes at once than bands), it shares its preferred band, as workers did before
    bands were claimed: ports are still probed before they are handed out."""
    preferred = _preferred_band()
    for offset in range(BAND_COUNT):
        index = (preferred + offset) % BAND_COUNT
        if _hold(index):
            return band_range(index)
    warnings.warn(
        f"all {BAND_COUNT} port bands are held by other test processes ({LOCK_DIRECTORY}):"
        f" sharing band {preferred}",
        stacklevel=2,
    )
    return band_range(preferred)


@functools.cache
def _candidates() -> itertools.cycle[int]:
    return itertools.cycle(claimed_band())


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now and that this process has not
    handed out lately (its band is used round robin)."""
    with _lock:
        candidates = _candidates()
        for _ in range(BAND_SIZE):
            port = next(candidates)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((LOOPBACK, port))
                except OSError:
                    continue  # in use, or in TIME_WAIT without SO_REUSEADDR
                return port
    raise RuntimeError(f"no free port in {claimed_band()}")
