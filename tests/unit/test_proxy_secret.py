"""tokex/proxy/secret.py: the token endpoint's secret, its file and its comparison."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tokex.proxy.secret import (
    UnsafeSecretFile,
    new_secret,
    remove_secret_file,
    secret_matches,
    write_secret_file,
)


def test_a_new_secret_is_32_random_bytes_urlsafe() -> None:
    first, second = new_secret(), new_secret()
    assert first != second and len(first) == 43
    assert set(first) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_the_secret_matches_only_itself() -> None:
    assert secret_matches("s3cret", "s3cret")
    for presented in (None, "", "s3cre", "s3cret ", "S3CRET", "s3cr\xe9t"):
        assert not secret_matches(presented, "s3cret"), presented


def test_the_default_file_is_private_and_goes_with_its_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = write_secret_file("s3cret", None)
    assert path.parent.parent == tmp_path and path.parent.name.startswith("tokex-proxy-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == "s3cret"
    remove_secret_file(path, "s3cret", with_directory=True)
    assert not path.parent.exists()


def test_a_named_file_is_replaced_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "proxy-secret"
    path.write_text("the previous start's")
    os.chmod(path, 0o644)
    assert write_secret_file("s3cret", path) == path
    assert path.read_text() == "s3cret" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["proxy-secret"]
    remove_secret_file(path, "another start's", with_directory=False)  # not ours: kept
    assert path.exists()
    remove_secret_file(path, "s3cret", with_directory=False)
    assert not path.exists() and tmp_path.exists()


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "proxy-secret").symlink_to(target)
    with pytest.raises(UnsafeSecretFile, match="is a symlink"):
        write_secret_file("s3cret", tmp_path / "proxy-secret")
    assert target.read_text() == ""


def test_a_directory_anyone_may_write_to_needs_the_sticky_bit(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # noqa: S103 - the unsafe directory under test
    with pytest.raises(UnsafeSecretFile, match="writable by everyone without the sticky bit"):
        write_secret_file("s3cret", shared / "proxy-secret")
    os.chmod(shared, 0o1777)  # noqa: S103 - as /tmp: only the owner may replace a file
    assert write_secret_file("s3cret", shared / "proxy-secret").read_text() == "s3cret"


def test_a_way_another_user_could_redirect_is_refused(tmp_path: Path) -> None:
    """The folder is fine, the way to it is not: a private folder in one anyone may write
    to could be swapped, after the check, for theirs, where they would read the secret."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # noqa: S103 - the unsafe directory under test
    (shared / "run").mkdir(mode=0o700)
    with pytest.raises(UnsafeSecretFile) as refused:
        write_secret_file("s3cret", shared / "run" / "proxy-secret")
    assert str(refused.value) == (
        f"{shared} is writable by everyone without the sticky bit (mode 0777): anyone could "
        f"replace {shared}/run; choose another directory"
    )
    assert list((shared / "run").iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="making a symlink another user's takes root")
def test_a_symlink_on_the_way_another_user_owns_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(private)
    os.lchown(tmp_path / "run", 65534, 65534)  # nobody's: they could point it elsewhere
    with pytest.raises(UnsafeSecretFile, match=f"{tmp_path}/run is a symlink owned by uid"):
        write_secret_file("s3cret", tmp_path / "run" / "proxy-secret")
    assert list(private.iterdir()) == []
