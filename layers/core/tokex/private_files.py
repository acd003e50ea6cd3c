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
    """The directory, made 0700 if missing; refused if another user owns it or anyone but
    its owner may write to it (they could replace a file with one of their own)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
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
