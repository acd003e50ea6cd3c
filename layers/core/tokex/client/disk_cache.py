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

With `--instance-identity auto` the key says what the IMDS read gave the token
(`instance_evidence`): `sent`, or none (`missed`: IMDS did not answer, or refused, in the
run that got it), kept again as `missed again` once a later run's IMDS read gave none
either (`copy_cached`). Which of these a run serves without reading IMDS is
cli/token.py's rule (`_token_response`).

Each file keeps the key it was named by (`key`), and a file is served only for that key:
one whose key is not the one its name is the hash of (a file renamed over another's name,
by whoever may write to the directory), or that keeps no key (written by a version before
this rule), is a miss, not another request's token.

The files are bearer tokens: mode 0600 in a directory the user owns that no one else may
write to (0700 when tokex makes it: `private_files.open_private_dir`), written atomically
(temp file, `os.replace`), read without following a symlink. A cached token is used while
more than 20 % of its lifetime is left, the rule of the in-memory cache (`REFRESH_AT`),
and only if it is a bearer token, as the token endpoint's answer had to be.

A cached token is served only while the issuer still publishes the key that signed it
(`published_kids`, `token_kid`: cli/token.py's rule): each start of `tokex local` makes new
signing keys, and an emergency rotation removes a key from the JWKS, but neither changes
the key of the request.

The endpoint's discovery document is kept too (`read_discovery`, `write_discovery`): a run
reads it only when discovery gets no usable answer, to fail over between the Regions it
lists while the home Region, which publishes it, is down (token_client.current_discovery).
It is checked as a fresh one is, so that a file edited since can name no Regional endpoint
but the ones tokex publishes under this endpoint.

Every write also removes this user's cache files whose token has expired: a role session
(a Lambda's, an ECS task's, an instance's) changes every hour or so, and each new session
starts a new file, so without pruning a long-lived cache directory would keep one expired
bearer token per session for ever. Only files this user wrote (its own, mode 0600, the
cache's name pattern, the cache's JSON) are ever removed; and the temporary files of writes
that never finished (a run killed between writing one and renaming it into place: it holds
a bearer token too), this user's own, mode 0600, named as `write_private` names them, once
they are older than any write takes (`STALE_TEMPORARY_SECONDS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tokex import base64url
from tokex.client.token_client import (
    BEARER_TOKEN,
    CachedToken,
    Discovery,
    TokenError,
    discovery_of,
    get_json,
)
from tokex.client.token_error import NOT_TOKEX
from tokex.private_files import is_own_private_file, read_own_private, write_private
from tokex.regions import DISCOVERY_MEMBER

FILE_SUFFIX = ".token.json"
DISCOVERY_SUFFIX = ".discovery.json"
MAX_FILE_BYTES = 64 * 1024
# What `write_private` names its temporary files (`mkstemp`, prefix ".tmp-"), and how old
# one is when no write can still be using it: a write takes milliseconds.
TEMPORARY_NAME = re.compile(r"\.tmp-[a-z0-9_]+")
STALE_TEMPORARY_SECONDS = 10 * 60
# `cache_key`'s `instance_evidence` with `--instance-identity auto`: what the IMDS read gave.
EVIDENCE_SENT = "sent"
EVIDENCE_MISSED = "missed"  # in the run that got the token
EVIDENCE_MISSED_AGAIN = "missed again"  # in a later run too
INSTANCE_EVIDENCE_STATES = (EVIDENCE_SENT, EVIDENCE_MISSED, EVIDENCE_MISSED_AGAIN)


def cache_key(
    *,
    endpoint: str,
    issuer: str | None,
    audience: str,
    scopes: Sequence[str],
    evidence: str,
    instance_identity: str,
    principal: str,
    token_file: str | None = None,
    instance_evidence: str | None = None,
) -> dict[str, Any]:
    """What a cached token is kept for. `principal`: the AWS access key id (`sigv4`,
    `aws-oif`), or the service-account token's issuer and subject (`eks`, whose
    `token_file` is given too). `instance_evidence`: with `instance_identity` `auto`, one
    of INSTANCE_EVIDENCE_STATES (a key without it, as `auto` files were written before
    this rule, names a file no run reads)."""
    extra = {} if instance_evidence is None else {"instance_evidence": instance_evidence}
    return {
        "v": 2,
        "endpoint": endpoint.rstrip("/"),
        "issuer": issuer,
        "audience": audience,
        "scopes": sorted(set(scopes)),
        "evidence": evidence,
        "instance_identity": instance_identity,
        "principal": principal,
        "token_file": token_file,
        **extra,
    }


def cache_file_name(key: Mapping[str, Any]) -> str:
    """The file `cache_key`'s `key` is kept in: the sha256 of the key."""
    material = json.dumps(key, sort_keys=True)
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
    20 % of its lifetime left; None for a missing, unsafe, unreadable or stale file, and
    for one that keeps no key or not the key its name is the hash of (another request's
    token, its file renamed: the request named this file by its own key).

    A token's age is counted on the boot clock when the file was written in this boot
    (`boot`, read now unless `now` is given): a wall clock set back after the write (NTP
    correcting a clock that was ahead, an operator) would otherwise make an expired token
    look fresh. Otherwise on the wall clock, where a clock set back counts as stale."""
    if now is None:
        now, boot = time.time(), boot_clock()
    entry = _own_entry(path)
    if entry is None or entry.named != path.name:
        return None
    return _fresh(entry, now, boot)


def _fresh(entry: _Entry, now: float, boot: BootReading | None) -> dict[str, Any] | None:
    obtained_at, response, token, written_boot, _ = entry
    if boot is not None and written_boot is not None and boot[0] == written_boot[0]:
        now = obtained_at + (boot[1] - written_boot[1])  # a boot clock only moves on
    if not obtained_at <= now < token.refresh_at:  # a clock set back counts as stale
        return None
    return {**response, "expires_in": int(token.expires_at - now)}


def copy_cached(
    path: Path,
    to: Path,
    *,
    key: Mapping[str, Any],
    now: float | None = None,
    boot: BootReading | None = None,
) -> bool:
    """The token `read_cached` would serve from `path` kept in `to` too, under `key` (the
    key `to` is named by), with the clocks' readings it was obtained at: as old there as
    it is in `path`. False, and nothing written, when `path` holds no such token; an
    OSError when the write fails."""
    if now is None:
        now, boot = time.time(), boot_clock()
    entry = _own_entry(path)
    if entry is None or entry.named != path.name or _fresh(entry, now, boot) is None:
        return False
    write_cached(to, entry.response, key=key, now=entry.obtained_at, boot=entry.boot)
    return True


def prune_expired(directory: Path, *, now: float | None = None) -> int:
    """Removes this user's cache files whose token has expired, and the temporary files
    of writes that never finished; how many it removed. A file it cannot read as its own
    cache entry is left alone, as is a token still valid (if stale for reuse) and one from
    a clock set back, and a temporary file that is not this user's own 0600 regular file
    or not older than STALE_TEMPORARY_SECONDS by `now`. Housekeeping: a directory it cannot
    list, or a file in it damaged or planted, never fails the run that got a token."""
    now = time.time() if now is None else now
    removed = 0
    try:
        paths = list(directory.iterdir())
    except OSError:  # e.g. no longer readable
        return removed
    for path in paths:
        if TEMPORARY_NAME.fullmatch(path.name):
            if not _stale_temporary(path, now):
                continue
        elif path.name.startswith(".") or not path.name.endswith(FILE_SUFFIX):
            continue  # never an entry
        else:
            entry = _own_entry(path)
            if entry is None or not entry.obtained_at <= entry.token.expires_at <= now:
                continue
        with contextlib.suppress(OSError):  # another run pruned it first
            path.unlink()
            removed += 1
    return removed


def _stale_temporary(path: Path, now: float) -> bool:
    """Whether `path` is this user's own 0600 regular file (not a symlink), last written
    more than STALE_TEMPORARY_SECONDS before `now`: no write still uses it."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return is_own_private_file(info) and info.st_mtime < now - STALE_TEMPORARY_SECONDS


class _Entry(NamedTuple):
    obtained_at: float
    response: dict[str, Any]
    token: CachedToken
    boot: BootReading | None  # the boot clock's reading at obtained_at, if kept
    named: str | None  # the file name of the key it was written for, if it keeps one


def _own_entry(path: Path) -> _Entry | None:
    """The entry of a cache file this user wrote with mode 0600, not through a symlink;
    None for anything else."""
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
        key = entry.get("key")
        named = cache_file_name(key) if isinstance(key, dict) else None
        token = CachedToken.from_response(response, obtained_at=obtained_at)
        return _Entry(obtained_at, response, token, written_boot, named)
    # Not the cache's JSON; OverflowError: a number of 400 digits is no float.
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError):
        return None


def write_cached(
    path: Path,
    response: dict[str, Any],
    *,
    key: Mapping[str, Any],
    now: float | None = None,
    boot: BootReading | None = None,
) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one. `key`:
    the `cache_key` the file is named by, kept in it (ValueError for another: the file
    would never be read). `now` and `boot`: the wall and boot clocks when the token was asked for
    (both read now unless `now` is given)."""
    if cache_file_name(key) != path.name:
        raise ValueError(f"{path.name} is not the file of the key given: see cache_file_name")
    if now is None:
        now, boot = time.time(), boot_clock()
    entry: dict[str, Any] = {"obtained_at": now, "response": response, "key": dict(key)}
    if boot is not None:
        entry["boot"] = list(boot)
    write_private(path, json.dumps(entry))


def token_kid(token: str) -> str | None:
    """The `kid` of a compact JWS's protected header (a tokex token always names one); None
    for a token that is no JWS or whose header names none."""
    header, dot, _ = token.partition(".")
    if not dot:
        return None
    try:
        decoded = json.loads(base64url.decode(header))
    except (ValueError, RecursionError):  # not base64url, not JSON (UnicodeError included)
        return None
    kid = decoded.get("kid") if isinstance(decoded, dict) else None
    return kid if isinstance(kid, str) else None


def published_kids(issuer: str, *, timeout: float) -> frozenset[str]:
    """The `kid`s of the keys `issuer` publishes now: one GET of its JWKS, which is
    `{iss}/.well-known/jwks.json` for every tokex issuer (docs/contract.md "Issuer"), as
    the client's other requests are made (no redirect followed, at most 64 KiB, all within
    `timeout`). A TokenError when no JWKS came: no answer, a non-2xx, or an answer that is
    no `{"keys": [...]}`."""
    from tokex.tokens.jwks import JWKS_PATH

    url = issuer.rstrip("/") + JWKS_PATH
    keys = get_json(url, timeout).get("keys")
    if not isinstance(keys, list):
        raise TokenError(f"{url} answered a JSON object that is no JWKS", error=NOT_TOKEX, url=url)
    return frozenset(
        jwk["kid"] for jwk in keys if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str)
    )


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
