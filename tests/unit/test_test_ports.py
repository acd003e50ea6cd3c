"""The tests' port bands (tests/support/ports.py): two test processes on one machine
never hand out ports from the same band, whatever their xdist worker names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
# Takes a port (claiming a band), says which, and lives until its stdin closes.
HOLDER = """
import sys
from tests.support import ports
print(ports.free_port(), flush=True)
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
    first_port = holder.stdout.readline()
    assert first_port, "the holder exited before claiming a band"
    return holder, int(first_port)


def release(holder: subprocess.Popen[str]) -> None:
    holder.communicate(timeout=30)
    assert holder.returncode == 0


@pytest.fixture
def lock_root(tmp_path: Path) -> Path:
    return tmp_path  # a lock directory of its own, away from the running suite's bands


def test_two_processes_of_the_same_worker_name_get_different_bands(lock_root: Path) -> None:
    first, first_port = start_holder(lock_root)
    try:
        second, second_port = start_holder(lock_root)
        release(second)
    finally:
        release(first)
    # The band's first free port each: a band apart, so the bands do not overlap.
    assert abs(first_port - second_port) >= 750


def test_a_band_is_free_again_once_its_process_has_ended(lock_root: Path) -> None:
    first, first_port = start_holder(lock_root)
    release(first)
    again, again_port = start_holder(lock_root)
    release(again)
    assert again_port == first_port
