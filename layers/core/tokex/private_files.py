"""Files only their owner may read, written whole: credentials, secrets, cached tokens;
and the directories they are written to.

`write_private` writes a temporary file in the same directory (`mkstemp`: mode 0600, a
fresh name, no symlink followed) and renames it over the target, so a reader sees the old
file or the new one, never half of one, and a symlink planted at the target is replaced,
not written through.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


class UnsafeDirectory(Exception):
    """The directory could let another user read or plant the files written to it."""


def open_private_dir(path: Path) -> Path:
    """The directory, made 0700 if missing (and so is each missing parent: made with the
    umask's mode, a parent open to others would let them swap the directory); refused if
    another user owns it or anyone but its owner may write to it (they could replace a
    file with one of their own)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    info = path.stat()  # a symlink to a safe directory is fine: its target is checked
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
            if not stat.S_ISREG(info.st_mode):
                return None
            if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
                return None
            return file.read(limit + 1)
    except OSError:
        return None
