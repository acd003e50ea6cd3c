"""`tokex local --state-dir` through a way another user could redirect is refused before
anything starts (docs/local.md): a shell sources its env files, so whoever could point the
path at a folder of theirs after the check would run their own lines as the developer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.running_local import TOKEX
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e


def start(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKEX, "local", "--port", str(free_port()), "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_state_directory_in_a_folder_others_may_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "state").mkdir(mode=0o700)  # private itself, but anyone may swap it
    refused = start(shared / "state")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert (
        f"could not start: {shared} is writable by everyone without the sticky bit (mode "
        f"0777): anyone could replace {shared}/state; choose another directory"
    ) in refused.stderr
    assert "Traceback" not in refused.stderr
    assert list((shared / "state").iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="making a symlink another user's takes root")
def test_a_state_directory_through_another_users_symlink_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(private)
    os.lchown(link, 65534, 65534)  # nobody's: they could point it elsewhere
    refused = start(link)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"could not start: {link} is a symlink owned by uid 65534" in refused.stderr
    assert list(private.iterdir()) == []
