"""The files and URLs a command line names: checked before anything is read or fetched
(a missing file or a malformed URL is a usage error, exit 2), then read strictly (content
that is not what it should be is a failure, exit 1)."""

from __future__ import annotations

import argparse
import errno
import os
import re
import stat
import sys
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from tokex.cli.errors import (
    FILE_NOT_FOUND,
    INVALID_INPUT,
    WRITE_FAILED,
    CommandError,
    UsageError,
)

STDIN = "-"
# What a number on a command line is: int() would also take " 80", "1_0" (ten) and
# other scripts' digits, none of which the user meant or the docs show.
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")


def whole_number(text: str) -> int:
    """argparse's `type` for a whole number (each command checks its range): a value
    that is not one is a usage error (exit 2)."""
    if not _WHOLE_NUMBER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def file_status(
    path: str, *, label: str, follow_symlinks: bool = True, writing: bool = False
) -> os.stat_result | None:
    """What is at `path` (os.lstat when not `follow_symlinks`), or None when nothing is
    there (as pathlib's exists() reads it: no such file, or a parent that is a file).

    A path that cannot be looked up (a directory on the way this user may not search, a
    name too long) is a failure that names it, exit 1: pathlib's exists() and is_dir()
    raise an OSError then, which would be reported as a bug of tokex."""
    try:
        return os.stat(path, follow_symlinks=follow_symlinks)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        verb, code = ("write", WRITE_FAILED) if writing else ("read", INVALID_INPUT)
        raise CommandError(
            f"cannot {verb} {label} {path}: {err.strerror or err}", error=code, input=path
        ) from None


def require_file(
    path: str | None, *, label: str, stdin: bool = False, missing_hint: str = ""
) -> None:
    """`path` names an existing file (or is `-` where stdin is accepted); None: not given.
    `label` is the flag (`--jwks`) or what a positional file is (`policy document`);
    `missing_hint` follows "no such file" (" (mount it there)").

    Existence only: a named pipe or /dev/stdin is a file to read too (`<(...)` in bash)."""
    if path is None or (stdin and path == STDIN):
        return
    found = file_status(path, label=label)
    if found is None:
        raise UsageError(
            f"{label} {path}: no such file{missing_hint}", error=FILE_NOT_FOUND, input=path
        )
    if stat.S_ISDIR(found.st_mode):
        raise UsageError(f"{label} {path} is a directory, not a file", input=path)


def read_text(path: str, *, label: str, limit: int) -> str:
    """A UTF-8 file (or stdin for `-`), exact text, at most `limit` bytes."""
    try:
        if path == STDIN:
            if sys.stdin is None:  # closed by the shell (`<&-`)
                raise CommandError(
                    f"cannot read {label} from standard input: it is closed",
                    error=INVALID_INPUT,
                    input=path,
                )
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            with Path(path).open("rb") as handle:
                raw = handle.read(limit + 1)
    except OSError as exc:
        raise CommandError(
            f"cannot read {label} {path}: {exc.strerror or exc}", error=INVALID_INPUT, input=path
        ) from None
    if len(raw) > limit:
        raise CommandError(
            f"{label} {path} is larger than {limit} bytes", error=INVALID_INPUT, input=path
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(
            f"{label} {path} is not UTF-8 text", error=INVALID_INPUT, input=path
        ) from None


def require_http_url(value: str, *, flag: str) -> SplitResult:
    """An absolute http(s) URL with a host; the usage error suggests the fix."""
    from tokex.client.endpoint import host_problem, redacted

    shown = redacted(value)  # a password in the URL is not repeated
    try:
        url = urlsplit(value)
    except ValueError as err:  # e.g. "Invalid IPv6 URL"
        raise UsageError(f"{flag} {shown!r} is not a valid URL: {err}", input=flag) from None
    if url.scheme not in ("http", "https") or not url.netloc:
        guess = f"https://{shown}" if "://" not in value else None
        fix = f": did you mean {flag} {guess}?" if guess else ""
        raise UsageError(f"{flag} {shown!r} is not an http(s) URL{fix}", input=flag)
    try:
        url.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise UsageError(f"{flag} {shown!r} has an invalid port", input=flag) from None
    if not url.hostname:
        raise UsageError(f"{flag} {shown!r} names no host", input=flag)
    if "@" in url.netloc:  # nothing these URLs reach takes credentials in the URL
        raise UsageError(
            f"{flag} {shown!r} has a user name or password in it: give the URL without them",
            input=flag,
        )
    if problem := host_problem(url.hostname):
        raise UsageError(f"{flag} {shown!r}: its host {problem}", input=flag)
    return url
