"""`start_local` from Python (docs/local.md): a system whose front never served stops all
the same (shutting a front down waits for a serving loop, which never came)."""

from __future__ import annotations

import threading
from pathlib import Path

from tokex.local.emulator import SubprocessMotoServer
from tokex.local.runner import start_local


def test_a_system_that_never_served_stops(tmp_path: Path) -> None:
    system = start_local(port=0, state_dir=tmp_path / "state", moto=SubprocessMotoServer())
    stopping = threading.Thread(target=system.stop, daemon=True)
    stopping.start()
    stopping.join(timeout=60)
    assert not stopping.is_alive(), "stop() waited for a front that never served"
