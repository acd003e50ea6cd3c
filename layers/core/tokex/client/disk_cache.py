"""`tokex token --cache-dir DIR`: tokens kept on disk between runs, only when asked.

One file per (endpoint, issuer, audience, scopes, kind of evidence, instance evidence,
principal, token file), named by the sha256 of those, so a token is never served to a
request that would have been issued a different one. With `sigv4` and `aws-oif` evidence
the principal is named by the AWS access key id of the session's credentials: an access
key id belongs to exactly one principal and is never reused (an IAM user's key, or the
temporary key of one role session, `ASIA…`), and it is known locally, where the
principal's ARN would cost an STS call per run. A new role session therefore starts a new
file. With `eks` evidence it is the `iss` and `sub` of the service-account token (the
cluster and the service account), read from the token file, which is part of the key too.
No secret goes into the key.

The files are bearer tokens: mode 0600 in a directory the user owns that no one else may
write to (0700 when tokex makes it: `private_files.open_private_dir`), written atomically
(temp file, `os.replace`), read without following a symlink. A cached token is used while
more than 20 % of its lifetime is left, the rule of the in-memory cache (`REFRESH_AT`),
and only if it is a bearer token, as the token endpoint's answer had to be.

The endpoint's discovery document is kept too (`read_discovery`, `write_discovery`): a run
reads it only when discovery gets no usable answer, to fail over between the Regions it
lists while the home Region, which publishes it, is down (token_client.current_discovery).
It is checked as a fresh one is, so that a file edited since can name no Regional endpoint
but the ones tokex publishes under this endpoint.

Every write also removes this user's cache files whose token has expired: a role session
(a Lambda's, an ECS task's, an instance's) changes every hour or so, and each new session
starts a new file, so without pruning a long-lived cache directory would keep one expired
bearer token per session for ever. Only files this user wrote (its own, mode 0600, the
cache's name pattern, the cache's JSON) are ever removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokex.client.token_client import (
    BEARER_TOKEN,
    CachedToken,
    Discovery,
    TokenError,
    discovery_of,
)
from tokex.private_files import read_own_private, write_private
from tokex.regions import DISCOVERY_MEMBER

FILE_SUFFIX = ".token.json"
DISCOVERY_SUFFIX = ".discovery.json"
MAX_FILE_BYTES = 64 * 1024


def cache_file_name(
    *,
    endpoint: str,
    issuer: str | None,
    audience: str,
    scopes: Sequence[str],
    evidence: str,
    instance_identity: str,
    principal: str,
    token_file: str | None = None,
) -> str:
    """`principal`: the AWS access key id (`sigv4`, `aws-oif`), or the service-account
    token's issuer and subject (`eks`, whose `token_file` is given too)."""
    material = json.dumps(
        {
            "v": 2,
            "endpoint": endpoint.rstrip("/"),
            "issuer": issuer,
            "audience": audience,
            "scopes": sorted(set(scopes)),
            "evidence": evidence,
            "instance_identity": instance_identity,
            "principal": principal,
            "token_file": token_file,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest() + FILE_SUFFIX


# Where Linux names the running boot: a boot clock's readings compare within one boot only.
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
BootReading = tuple[str, float]  # (the boot's id, seconds since it began, suspend counted)


def boot_clock() -> BootReading | None:
    """A reading of a clock that no one sets (CLOCK_BOOTTIME, suspend counted), with the
    boot it belongs to; None where there is none (not Linux)."""
    try:
        boot_id = BOOT_ID_FILE.read_text(encoding="ascii").strip()
        return boot_id, time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, AttributeError, ValueError):  # AttributeError: no CLOCK_BOOTTIME
        return None


def read_cached(
    path: Path, *, now: float | None = None, boot: BootReading | None = None
) -> dict[str, Any] | None:
    """The cached token response, its `expires_in` counted from now, if it has more than
    20 % of its lifetime left; None for a missing, unsafe, unreadable or stale file.

    A token's age is counted on the boot clock when the file was written in this boot
    (`boot`, read now unless `now` is given): a wall clock set back after the write (NTP
    correcting a clock that was ahead, an operator) would otherwise make an expired token
    look fresh. Otherwise on the wall clock, where a clock set back counts as stale."""
    if now is None:
        now, boot = time.time(), boot_clock()
    entry = _own_entry(path)
    if entry is None:
        return None
    obtained_at, response, token, written_boot = entry
    if boot is not None and written_boot is not None and boot[0] == written_boot[0]:
        now = obtained_at + (boot[1] - written_boot[1])  # a boot clock only moves on
    if not obtained_at <= now < token.refresh_at:  # a clock set back counts as stale
        return None
    return {**response, "expires_in": int(token.expires_at - now)}


def prune_expired(directory: Path, *, now: float | None = None) -> int:
    """Removes this user's cache files whose token has expired; how many it removed.
    A file it cannot read as its own cache entry is left alone, as is a token still valid
    (if stale for reuse) and one from a clock set back. Housekeeping: a directory it
    cannot list, or a file in it damaged or planted, never fails the run that got a token."""
    now = time.time() if now is None else now
    removed = 0
    try:
        paths = list(directory.glob("*" + FILE_SUFFIX))
    except OSError:  # e.g. no longer readable
        return removed
    for path in paths:
        if path.name.startswith("."):
            continue  # never an entry: hidden files (older versions' `.tmp-…` writes) stay
        entry = _own_entry(path)
        if entry is None or not entry[0] <= entry[2].expires_at <= now:
            continue
        with contextlib.suppress(OSError):  # another run pruned it first
            path.unlink()
            removed += 1
    return removed


def _own_entry(
    path: Path,
) -> tuple[float, dict[str, Any], CachedToken, BootReading | None] | None:
    """(obtained_at, response, token, the boot clock's reading at obtained_at if kept) of a
    cache file this user wrote with mode 0600, not through a symlink; None for anything
    else."""
    data = read_own_private(path, MAX_FILE_BYTES)
    if data is None:
        return None
    try:
        entry = json.loads(data)
        obtained_at = float(entry["obtained_at"])
        response = entry["response"]
        if not isinstance(response, dict):
            return None
        token = response.get("access_token")
        if not isinstance(token, str) or not BEARER_TOKEN.fullmatch(token):
            # What the token endpoint's answer is held to (token_client.py): a file edited
            # since would put anything into an Authorization header or onto a terminal.
            return None
        boot = entry.get("boot")
        written_boot = None
        if isinstance(boot, list) and len(boot) == 2 and isinstance(boot[0], str):
            written_boot = (boot[0], float(boot[1]))
        token = CachedToken.from_response(response, obtained_at=obtained_at)
        return obtained_at, response, token, written_boot
    # Not the cache's JSON; OverflowError: a number of 400 digits is no float.
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError):
        return None


def write_cached(
    path: Path,
    response: dict[str, Any],
    *,
    now: float | None = None,
    boot: BootReading | None = None,
) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one. `now`
    and `boot`: the wall and boot clocks when the token was asked for (both read now
    unless `now` is given)."""
    if now is None:
        now, boot = time.time(), boot_clock()
    entry: dict[str, Any] = {"obtained_at": now, "response": response}
    if boot is not None:
        entry["boot"] = list(boot)
    write_private(path, json.dumps(entry))


def discovery_file(directory: Path, endpoint: str) -> Path:
    """Where `endpoint`'s discovery document is kept: named by the endpoint's sha256, never
    one of the token files (`prune_expired` leaves it alone)."""
    digest = hashlib.sha256(endpoint.rstrip("/").encode()).hexdigest()
    return directory / (digest + DISCOVERY_SUFFIX)


def read_discovery(directory: Path, endpoint: str) -> Discovery | None:
    """The discovery document kept for `endpoint`, checked as a fresh one; None for a
    missing, unsafe or unreadable file, or one a fresh document would be refused as."""
    path = discovery_file(directory, endpoint)
    data = read_own_private(path, MAX_FILE_BYTES)
    if data is None:
        return None
    try:
        document = json.loads(data)
        if not isinstance(document, dict):
            return None
        return discovery_of(document, endpoint, str(path))
    except (ValueError, RecursionError, TokenError):
        return None


def write_discovery(directory: Path, endpoint: str, discovery: Discovery) -> None:
    """Atomically, mode 0600, as the token files."""
    regions = [{"region": r.region, "token_endpoint": r.token_endpoint} for r in discovery.regions]
    document = {"issuer": discovery.issuer, DISCOVERY_MEMBER: regions}
    write_private(discovery_file(directory, endpoint), json.dumps(document))
