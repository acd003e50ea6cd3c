"""`start_local` from Python (docs/local.md): a system whose front never served stops all
the same (shutting a front down waits for a serving loop, which never came); one state
directory serves one system at a time."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tokex.local.emulator import SubprocessMotoServer
from tokex.local.runner import StateDirectoryInUse, start_local


def test_a_system_that_never_served_stops(tmp_path: Path) -> None:
    system = start_local(port=0, state_dir=tmp_path / "state", moto=SubprocessMotoServer())
    stopping = threading.Thread(target=system.stop, daemon=True)
    stopping.start()
    stopping.join(timeout=60)
    assert not stopping.is_alive(), "stop() waited for a front that never served"


def test_a_second_system_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    """It would replace the first one's instance certificate and env files, and the first
    would then refuse its own demo instance's evidence."""
    state = tmp_path / "state"
    first = start_local(port=0, state_dir=state, moto=SubprocessMotoServer())
    try:
        files = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
        assert "imds-local-ca.pem" in files and "workload.env" in files
        refused_emulator = SubprocessMotoServer()
        with pytest.raises(StateDirectoryInUse) as refused:
            start_local(port=0, state_dir=state, moto=refused_emulator)
        assert refused_emulator._process.poll() is not None  # the caller's emulator, stopped
        assert str(state) in str(refused.value)
        assert f"process {os.getpid()}" in str(refused.value)
        assert {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} == files
    finally:
        first.stop()
    # Stopped, it lets the directory go.
    second = start_local(port=0, state_dir=state, moto=SubprocessMotoServer())
    second.stop()
