"""The tests' port bands (tests/support/ports.py): two test processes on one machine
never hand out ports from the same band, whatever their xdist worker names."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ports

REPOSITORY = Path(__file__).resolve().parents[2]
# Takes a port (claiming a band), says where its band starts, and lives until its stdin
# closes.
HOLDER = """
import sys
from tests.support import ports
assert ports.free_port() in ports.claimed_band()
print(ports.claimed_band().start, flush=True)
sys.stdin.read()
"""


def start_holder(lock_root: Path) -> tuple[subprocess.Popen[str], int]:
    environment = dict(os.environ, TMPDIR=str(lock_root), PYTEST_XDIST_WORKER="gw0")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=REPOSITORY,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    first_band = holder.stdout.readline()
    assert first_band, "the holder exited before claiming a band"
    return holder, int(first_band)


def release(holder: subprocess.Popen[str]) -> None:
    holder.communicate(timeout=30)
    assert holder.returncode == 0


@pytest.fixture
def lock_root(tmp_path: Path) -> Path:
    return tmp_path  # a lock directory of its own, away from the running suite's bands


def test_two_processes_of_the_same_worker_name_get_different_bands(lock_root: Path) -> None:
    first, first_band = start_holder(lock_root)
    try:
        second, second_band = start_holder(lock_root)
        release(second)
    finally:
        release(first)
    assert abs(first_band - second_band) >= ports.BAND_SIZE  # the bands do not overlap


def test_a_band_is_free_again_once_its_process_has_ended(lock_root: Path) -> None:
    first, first_band = start_holder(lock_root)
    release(first)
    again, again_band = start_holder(lock_root)
    release(again)
    assert again_band == first_band


def test_with_every_band_held_a_process_shares_its_preferred_band(lock_root: Path) -> None:
    """More test processes at once than bands: the next one shares a band (its ports are
    still probed before they are handed out) instead of failing every test that needs a
    port."""
    directory = lock_root / ports.LOCK_DIRECTORY.name
    directory.mkdir()
    held = []
    try:
        for index in range(ports.BAND_COUNT):
            descriptor = os.open(directory / f"band-{index}", os.O_RDONLY | os.O_CREAT, 0o644)
            held.append(descriptor)
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder, band = start_holder(lock_root)
        release(holder)
    finally:
        for descriptor in held:
            os.close(descriptor)
    assert band == ports.band_range(0).start  # gw0's own
