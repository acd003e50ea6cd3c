"""Files only their owner may read, written whole: credentials, secrets, cached tokens;
and the directories they are written to.

`write_private` writes a temporary file in the same directory (`mkstemp`: mode 0600, a
fresh name, no symlink followed) and renames it over the target, so a reader sees the old
file or the new one, never half of one, and a symlink planted at the target is replaced,
not written through.

A directory is only as private as the way to it: whoever could replace one step of the
path (a symlink, a directory, in a folder they may write to) could point it at a folder of
their own after it was checked. So `open_private_dir` and `check_way_to` walk the path
step by step, as the kernel resolves it, and refuse it unless no other user could change
where it leads: every directory on the way is this user's or root's and no one else may
write to it, unless it has the sticky bit (as /tmp), where only an entry's owner may
replace it; and every symlink and directory on the way is this user's or root's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

# As many symlinks as Linux follows in one path before ELOOP.
MAX_SYMLINKS = 40


class UnsafeDirectory(Exception):
    """The directory could let another user read or plant the files written to it."""


def open_private_dir(path: Path) -> Path:
    """The directory, made 0700 if missing (and so is each missing parent: made with the
    umask's mode, a parent open to others would let them swap the directory); refused if
    another user owns it or anyone but its owner may write to it (they could replace a
    file with one of their own), or if another user could change where its path leads
    (`check_way_to`'s rules, for each step of the way). A symlink to it is followed only
    if this user or root owns the symlink."""
    _, info = _walk(path, make=True)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise UnsafeDirectory(f"{path} is owned by uid {info.st_uid}, not by this user")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"`chmod 700 {path}` or choose another directory"
        )
    return path


def check_way_to(path: Path) -> None:
    """Raises UnsafeDirectory if another user could replace `path` (a file to be written)
    or change where the way to it leads: each directory on the way, its own folder
    included, must be this user's or root's, and writable by no one else unless it has the
    sticky bit (a group of which this user is the only member counts as no one else: the
    user private group, 0775 under umask 002); each symlink on the way must be this user's
    or root's. OSError if the way does not lead to a directory."""
    folder, info = _walk(path.parent, make=False)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent))
    _check_holder(folder, info, path)


def _walk(path: Path, *, make: bool) -> tuple[Path, os.stat_result]:
    """`path` resolved as the kernel does, with its lstat, each step of the way checked:
    the directory each name is looked up in (`_check_holder`), and each symlink followed,
    which must be this user's or root's. With `make`, a missing directory on the way is
    made, mode 0700, in the directory just checked. The last step is not checked itself:
    the caller's rules for it are its own."""
    uid = os.getuid()
    relative = [] if path.is_absolute() else list(Path(os.getcwd()).parts[1:])
    pending = [*relative, *path.parts[1 if path.is_absolute() else 0 :]]
    pending.reverse()  # a stack: the next name last
    current = Path("/")
    info = os.lstat(current)
    followed = 0
    while pending:
        name = pending.pop()
        entry = current / name
        _check_holder(current, info, entry)
        if name == "..":
            current = current.parent
            info = os.lstat(current)
            continue
        try:
            entry_info = os.lstat(entry)
        except FileNotFoundError:
            if not make:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(entry, mode=0o700)
            entry_info = os.lstat(entry)
        if stat.S_ISLNK(entry_info.st_mode):
            if entry_info.st_uid not in (uid, 0):
                raise UnsafeDirectory(
                    f"{entry} is a symlink owned by uid {entry_info.st_uid}, not by this "
                    "user or root: its owner could point it elsewhere; name the directory "
                    "itself"
                )
            followed += 1
            if followed > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
            target = Path(os.readlink(entry))
            if target.is_absolute():
                current, info = Path("/"), os.lstat("/")
            pending.extend(reversed(target.parts[1 if target.is_absolute() else 0 :]))
            continue
        if not stat.S_ISDIR(entry_info.st_mode) and pending:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(entry))
        current, info = entry, entry_info
    return current, info


def _check_holder(directory: Path, info: os.stat_result, entry: Path) -> None:
    """Raises UnsafeDirectory if another user could replace `entry` of `directory` (whose
    lstat is `info`): they own the directory, or may write to it and it has no sticky bit
    (with it, only an entry's owner may replace the entry: the caller checks that owner)."""
    if info.st_uid not in (os.getuid(), 0):
        raise UnsafeDirectory(
            f"{directory} is owned by uid {info.st_uid}, not by this user or root: its owner "
            f"could replace {entry}; choose another directory"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_ISVTX:
        return
    if mode & stat.S_IWOTH:
        raise UnsafeDirectory(
            f"{directory} is writable by everyone without the sticky bit (mode {mode:04o}): "
            f"anyone could replace {entry}; choose another directory"
        )
    if not mode & stat.S_IWGRP:
        return
    if _has_access_acl(directory):
        # The group bits are the ACL's mask: a user or group the ACL names may write.
        raise UnsafeDirectory(
            f"{directory} has an access ACL that lets others write (mode {mode:04o}): they "
            f"could replace {entry}; choose another directory"
        )
    if not _only_member_is_this_user(info.st_gid):
        raise UnsafeDirectory(
            f"{directory} is writable by its group (gid {info.st_gid}) without the sticky "
            f"bit (mode {mode:04o}): the group's members could replace {entry}; choose "
            "another directory"
        )


def _has_access_acl(directory: Path) -> bool:
    """Whether `directory` has a POSIX access ACL (Linux: its extended attribute), whose
    named users and groups may write if the group bits, its mask, allow it. Where
    extended attributes cannot be listed (another system, a file system without them),
    none."""
    listxattr = getattr(os, "listxattr", None)
    if listxattr is None:
        return False
    try:
        return "system.posix_acl_access" in listxattr(directory, follow_symlinks=False)
    except OSError:
        return False


def _only_member_is_this_user(gid: int) -> bool:
    """Whether this user is the only member of group `gid`: a user private group, which
    makes the user's directories 0775 under umask 002 (Debian's and Fedora's default),
    lets no one else write to them (the rule of Debian's OpenSSH for StrictModes)."""
    import grp
    import pwd

    try:
        group = grp.getgrgid(gid)
        user = pwd.getpwuid(os.getuid())
    except KeyError:  # a group or user without a name: nothing says who is in it
        return False
    if any(name != user.pw_name for name in group.gr_mem):
        return False
    if user.pw_gid != gid and user.pw_name not in group.gr_mem:
        return False  # a group this user is not in (a setgid program's, say)
    return all(other.pw_uid == user.pw_uid for other in pwd.getpwall() if other.pw_gid == gid)


def write_private(path: Path, text: str, *, prefix: str = ".tmp-") -> None:
    """`text` as the whole of `path`, mode 0600, atomically."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def is_own_private_file(info: os.stat_result) -> bool:
    """Whether `info` (an fstat, or an lstat: a symlink is no regular file) is of a
    regular file this user owns and no one else may read or write (0600 or narrower)."""
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_uid == os.getuid()
        and not stat.S_IMODE(info.st_mode) & 0o077
    )


def read_own_private(path: Path, limit: int) -> bytes | None:
    """The first `limit` + 1 bytes of a regular file this user owns and no one else may
    read or write (mode 0600 or narrower), opened without following a symlink; None for
    anything else (missing, planted, a FIFO, a directory, unreadable)."""
    try:
        # O_NONBLOCK: a FIFO of that name would otherwise block the open for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not is_own_private_file(info):
                return None
            return file.read(limit + 1)
    except OSError:
        return None
