"""The secret a caller of `GET /.tokex/token` presents (header `X-Tokex-Proxy-Secret`).

In Lambda it is the function's session token, as AWS's own extensions ask for (the
Parameters and Secrets extension's `X-Aws-Parameters-Secrets-Token`): the function has it,
nothing else on the network does. Elsewhere it is new at every start (32 random bytes,
urlsafe) and written to a file of mode 0600 that only the workload's user can read: being
able to connect to the loopback port is not enough (docs/injection.md "Threat model").
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from tokex.private_files import UnsafeDirectory, check_way_to, write_private

SECRET_BYTES = 32
DEFAULT_FILE_NAME = "secret"  # in a new directory tokex-proxy-XXXXXXXX


class UnsafeSecretFile(ValueError):
    """A secret file path another user could read, replace or redirect."""


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def secret_matches(presented: str | None, secret: str) -> bool:
    """Constant time in the presented value: its timing says nothing of the secret."""
    given = (presented or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, secret.encode()) and presented is not None


def write_secret_file(secret: str, path: Path | None) -> Path:
    """Write `secret` (mode 0600) to `path`, or to a new private directory in
    $XDG_RUNTIME_DIR (else the system's temporary directory); returns the file written.

    `path` is refused if it is a symlink, or if another user could swap the file for
    their own or redirect the way to it (`private_files.check_way_to`: its directory
    writable by everyone without the sticky bit, say). It is replaced atomically: a reader
    sees the old secret or the new one, never half of one."""
    if path is None:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        parent = runtime if runtime and Path(runtime).is_dir() else None
        directory = Path(tempfile.mkdtemp(prefix="tokex-proxy-", dir=parent))  # 0700
        path = directory / DEFAULT_FILE_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secret)
        return path
    if path.is_symlink():
        raise UnsafeSecretFile(f"{path} is a symlink: name the file itself")
    if path.is_dir():
        raise UnsafeSecretFile(f"{path} is a directory: name a file in it, e.g. {path}/secret")
    try:
        check_way_to(path)
    except UnsafeDirectory as err:
        raise UnsafeSecretFile(str(err)) from None
    write_private(path, secret, prefix=".tokex-proxy-")
    return path


def remove_secret_file(path: Path, secret: str, *, with_directory: bool) -> None:
    """Remove the file if it still holds `secret` (another start may have replaced it),
    and its directory if it was made for it (`write_secret_file` without a path)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as file:
            if not hmac.compare_digest(file.read(len(secret) + 1), secret.encode()):
                return
        path.unlink()
        if with_directory:
            path.parent.rmdir()
