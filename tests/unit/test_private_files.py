"""One way to write credentials and secrets: whole, mode 0600, never through a symlink;
into a directory no other user could replace, or redirect the way to."""

from __future__ import annotations

import os
import stat
import struct
import tempfile
from pathlib import Path

import pytest

from tokex.private_files import UnsafeDirectory, check_way_to, open_private_dir, write_private


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


# --- the way to a private directory ---------------------------------------------------
# Another user who could replace one step of the path after it was checked (a symlink they
# own, an entry of a folder they may write to) could point it at a folder of their own:
# `tokex local` would write there the env files a shell sources, `tokex token` its tokens.

OTHER_UID = 65534  # nobody
needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="making a file another user's (os.lchown) takes root"
)


def folder(path: Path, mode: int) -> Path:
    path.mkdir()
    path.chmod(mode)
    return path


def test_a_directory_on_the_way_others_may_write_to_is_refused(tmp_path: Path) -> None:
    shared = folder(tmp_path / "shared", 0o777)
    with pytest.raises(UnsafeDirectory) as refused:
        open_private_dir(shared / "state")
    assert str(refused.value) == (
        f"{shared} is writable by everyone without the sticky bit (mode 0777): anyone "
        f"could replace {shared}/state; choose another directory"
    )
    assert list(shared.iterdir()) == []  # nothing made there
    (shared / "state").mkdir(mode=0o700)  # a private directory in it: swapped as easily
    with pytest.raises(UnsafeDirectory, match="without the sticky bit"):
        open_private_dir(shared / "state" / "deeper")
    with pytest.raises(UnsafeDirectory, match="without the sticky bit"):
        check_way_to(shared / "state" / "secret")


def test_a_symlink_in_a_folder_others_may_write_to_is_refused(tmp_path: Path) -> None:
    private = folder(tmp_path / "private", 0o700)
    shared = folder(tmp_path / "shared", 0o777)
    (shared / "state").symlink_to(private)
    with pytest.raises(UnsafeDirectory, match=f"anyone could replace {shared}/state;"):
        open_private_dir(shared / "state")


def test_a_sticky_folder_on_the_way_is_fine_as_tmp_is(tmp_path: Path) -> None:
    sticky = folder(tmp_path / "sticky", 0o1777)
    assert open_private_dir(sticky / "state") == sticky / "state"
    assert stat.S_IMODE((sticky / "state").stat().st_mode) == 0o700
    (sticky / "link").symlink_to(sticky / "state")  # this user's symlink: only it may swap it
    assert open_private_dir(sticky / "link") == sticky / "link"
    check_way_to(sticky / "secret")
    with tempfile.TemporaryDirectory(dir="/tmp") as made:  # the system's own /tmp
        assert open_private_dir(Path(made) / "cache").is_dir()


def test_the_way_is_followed_as_the_kernel_does(tmp_path: Path, monkeypatch) -> None:
    private = folder(tmp_path / "private", 0o700)
    (tmp_path / "link").symlink_to("private")  # relative, this user's
    (private / "back").symlink_to(tmp_path)  # absolute
    assert open_private_dir(tmp_path / "link" / "a" / ".." / "b") == tmp_path / "link/a/../b"
    assert (private / "a").is_dir() and (private / "b").is_dir()
    assert open_private_dir(private / "back" / "link" / "c").is_dir()
    assert (private / "c").is_dir()
    monkeypatch.chdir(private)  # relative: the way from / through the working directory
    assert open_private_dir(Path("d")) == Path("d") and (private / "d").is_dir()
    shared = folder(tmp_path / "shared", 0o777)
    monkeypatch.chdir(shared)
    with pytest.raises(UnsafeDirectory, match=f"anyone could replace {shared}/e;"):
        open_private_dir(Path("e"))
    monkeypatch.chdir(tmp_path)
    (private / "loop").symlink_to("loop")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        open_private_dir(private / "loop")
    (private / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        open_private_dir(private / "file" / "sub")
    with pytest.raises(UnsafeDirectory, match="is not a directory"):
        open_private_dir(private / "file")


def test_a_group_writable_folder_is_refused_unless_this_user_is_its_only_member(
    tmp_path: Path, monkeypatch
) -> None:
    """Umask 002 with a user private group (Debian's and Fedora's default) makes a user's
    folders 0775: a group whose only member is this user lets no one else write."""
    import grp
    import pwd

    group_writable = folder(tmp_path / "project", 0o775)
    gid = group_writable.stat().st_gid
    me = pwd.struct_passwd(("dev", "x", os.getuid(), gid, "", "/home/dev", "/bin/sh"))
    other = pwd.struct_passwd(("eve", "x", os.getuid() + 1, gid, "", "/home/eve", "/bin/sh"))
    users = [me]
    members: list[str] = []
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: me)
    monkeypatch.setattr(pwd, "getpwall", lambda: users)
    monkeypatch.setattr(grp, "getgrgid", lambda _: grp.struct_group(("dev", "x", gid, members)))
    assert open_private_dir(group_writable / "state").is_dir()
    members.append("eve")
    with pytest.raises(UnsafeDirectory) as refused:
        open_private_dir(group_writable / "state")
    assert str(refused.value) == (
        f"{group_writable} is writable by its group (gid {gid}) without the sticky bit "
        f"(mode 0775): the group's members could replace {group_writable}/state; choose "
        "another directory"
    )
    members.clear()
    users.append(other)  # eve's primary group
    with pytest.raises(UnsafeDirectory, match="writable by its group"):
        open_private_dir(group_writable / "state")
    users.remove(other)
    elsewhere = pwd.struct_passwd(("dev", "x", os.getuid(), gid + 1, "", "/home/dev", "/bin/sh"))
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: elsewhere)
    with pytest.raises(UnsafeDirectory, match="writable by its group"):  # not in it at all
        open_private_dir(group_writable / "state")


def test_a_group_writable_folder_with_an_access_acl_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Its group bits are the ACL's mask: `user:<other>:rwx` lets another user write to a
    folder whose group is this user's private one (accepted before, as 0775 of that group)."""
    import grp
    import pwd

    group_writable = folder(tmp_path / "project", 0o770)
    gid = group_writable.stat().st_gid
    me = pwd.struct_passwd(("dev", "x", os.getuid(), gid, "", "/home/dev", "/bin/sh"))
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: me)
    monkeypatch.setattr(pwd, "getpwall", lambda: [me])
    monkeypatch.setattr(grp, "getgrgid", lambda _: grp.struct_group(("dev", "x", gid, [])))
    assert open_private_dir(group_writable / "state").is_dir()  # the private group alone
    undefined = 0xFFFFFFFF
    entries = [  # user::rwx, user:<other>:rwx, group::rwx, mask::rwx, other::---
        (0x01, 7, undefined),
        (0x02, 7, OTHER_UID),
        (0x04, 7, undefined),
        (0x10, 7, undefined),
        (0x20, 0, undefined),
    ]
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    try:
        os.setxattr(group_writable, "system.posix_acl_access", acl)
    except (AttributeError, OSError) as err:  # no ACLs on this system or file system
        pytest.skip(f"cannot set an access ACL here: {err}")
    with pytest.raises(UnsafeDirectory) as refused:
        open_private_dir(group_writable / "state")
    assert str(refused.value) == (
        f"{group_writable} has an access ACL that lets others write (mode 0770): they could "
        f"replace {group_writable}/state; choose another directory"
    )


@needs_root
def test_a_symlink_another_user_owns_is_refused(tmp_path: Path) -> None:
    """Their symlink to this user's private directory: checked, then pointed elsewhere."""
    private = folder(tmp_path / "private", 0o700)
    link = tmp_path / "state"
    link.symlink_to(private)
    os.lchown(link, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeDirectory) as refused:
        open_private_dir(link)
    assert str(refused.value) == (
        f"{link} is a symlink owned by uid {OTHER_UID}, not by this user or root: its owner "
        "could point it elsewhere; name the directory itself"
    )
    with pytest.raises(UnsafeDirectory, match="is a symlink owned by uid"):
        open_private_dir(link / "deeper")
    with pytest.raises(UnsafeDirectory, match="is a symlink owned by uid"):
        check_way_to(link / "secret")
    # As on a machine without fs.protected_symlinks: their symlink in /tmp.
    sticky = folder(tmp_path / "sticky", 0o1777)
    (sticky / "state").symlink_to(private)
    os.lchown(sticky / "state", OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeDirectory, match="is a symlink owned by uid"):
        open_private_dir(sticky / "state")
    os.lchown(sticky / "state", 0, 0)  # root's: only root could swap it
    assert open_private_dir(sticky / "state").is_dir()


@needs_root
def test_a_folder_on_the_way_another_user_owns_is_refused(tmp_path: Path) -> None:
    """Its owner may replace its entries whatever its mode; in a sticky folder too."""
    theirs = folder(tmp_path / "theirs", 0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeDirectory) as refused:
        open_private_dir(theirs / "state")
    assert str(refused.value) == (
        f"{theirs} is owned by uid {OTHER_UID}, not by this user or root: its owner could "
        f"replace {theirs}/state; choose another directory"
    )
    assert list(theirs.iterdir()) == []
    with pytest.raises(UnsafeDirectory, match=f"{theirs} is owned by uid {OTHER_UID}"):
        open_private_dir(theirs / ".." / "state")  # through it, even back out of it
    group_of_others = folder(tmp_path / "team", 0o775)
    os.chown(group_of_others, -1, OTHER_UID)  # nogroup: this user is not in it
    with pytest.raises(UnsafeDirectory, match="writable by its group"):
        open_private_dir(group_of_others / "state")
