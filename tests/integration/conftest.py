"""The system under test: a moto server (subprocess, SigV4 checks on), provisioned like
`tokex local`, with the real handlers behind the local HTTP front."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tokex.local.emulator import SubprocessMotoServer
from tokex.local.runner import LocalSystem, start_local


@pytest.fixture(scope="session")
def local_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    system = start_local(
        port=0,
        state_dir=tmp_path_factory.mktemp("tokex-local"),
        moto=SubprocessMotoServer(),
    )
    thread = threading.Thread(target=system.serve_forever, daemon=True)
    thread.start()
    yield system
    system.stop()
    thread.join(timeout=10)
