"""The e2e ring drives `tokex local` as a user runs it (tests/e2e/running_local.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.running_local import RunningLocal, start_tokex_local


@pytest.fixture(scope="module")
def local_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLocal]:
    """One `tokex local` per test module; it must stop cleanly on SIGINT."""
    running = start_tokex_local(tmp_path_factory.mktemp("state"))
    yield running
    assert running.stop() == 0, running.console_text()
