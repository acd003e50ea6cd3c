"""Files only their owner may read, written whole: credentials, secrets, cached tokens.

`write_private` writes a temporary file in the same directory (`mkstemp`: mode 0600, a
fresh name, no symlink followed) and renames it over the target, so a reader sees the old
file or the new one, never half of one, and a symlink planted at the target is replaced,
not written through.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
