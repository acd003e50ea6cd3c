"""One way to write credentials and secrets: whole, mode 0600, never through a symlink."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tokex.private_files import write_private


def test_written_whole_for_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "workload.env"
    path.write_text("old, world-readable")
    path.chmod(0o644)
    write_private(path, "export AWS_SECRET_ACCESS_KEY=x\n")
    assert path.read_text() == "export AWS_SECRET_ACCESS_KEY=x\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["workload.env"]  # no temporary left


def test_a_planted_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    path = tmp_path / "secret"
    path.symlink_to(victim)
    write_private(path, "s3cret")
    assert victim.read_text() == "untouched"
    assert not path.is_symlink() and path.read_text() == "s3cret"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_private(path, "\udcff")  # not encodable: fails while writing
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]
