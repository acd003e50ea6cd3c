"""`tokex token --cache-dir`: tokens on disk only when asked, 0600 files in a directory no
one else may write to, one file per endpoint, audience, scopes, kind of evidence and AWS
access key (or, for eks, service account and token file)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_issuer import FakeIssuer, fake_issuer, use_static_credentials
from tokex import base64url
from tokex.cli.main import main
from tokex.client import disk_cache
from tokex.private_files import open_private_dir


@pytest.fixture
def issuer(monkeypatch) -> Iterator[FakeIssuer]:
    use_static_credentials(monkeypatch)
    with fake_issuer(expires_in=900) as running:
        yield running


def token(issuer: FakeIssuer, capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["token", "--endpoint", issuer.url, *argv])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + disk_cache.FILE_SUFFIX))


def test_nothing_is_written_without_cache_dir(issuer, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert token(issuer, capsys, "--audience", "orders-api")[:2] == (0, "token-1")
    assert token(issuer, capsys, "--audience", "orders-api")[:2] == (0, "token-2")
    assert list(tmp_path.rglob("*")) == []


def test_a_cached_token_is_reused_from_a_0600_file_in_a_0700_dir(issuer, capsys, tmp_path) -> None:
    directory = tmp_path / "cache"
    ask = ("--audience", "orders-api", "--scope", "orders:read", "--cache-dir", str(directory))
    assert token(issuer, capsys, *ask)[:2] == (0, "token-1")
    assert token(issuer, capsys, *ask)[:2] == (0, "token-1")
    assert issuer.exchanges == 1
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    [file] = cache_files(directory)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == [file.name]  # no temporary file left
    code, out, _ = token(issuer, capsys, *ask, "--json")
    assert code == 0
    assert json.loads(out)["access_token"] == "token-1"
    assert 0 < json.loads(out)["expires_in"] <= 900


def test_the_key_is_endpoint_audience_scopes_and_credentials(
    issuer, capsys, tmp_path, monkeypatch
) -> None:
    cache = ("--cache-dir", str(tmp_path))
    asks = [
        ("--audience", "orders-api"),
        ("--audience", "billing-api"),
        ("--audience", "orders-api", "--scope", "orders:read"),
        ("--audience", "orders-api", "--scope", "orders:write"),
    ]
    for ask in asks:
        assert token(issuer, capsys, *ask, *cache)[0] == 0
    # Scopes in another order are the same request.
    two = ("--scope", "orders:read", "--scope", "orders:write")
    assert token(issuer, capsys, "--audience", "orders-api", *two, *cache)[0] == 0
    assert token(issuer, capsys, "--audience", "orders-api", *two[2:], *two[:2], *cache)[0] == 0
    assert issuer.exchanges == len(cache_files(tmp_path)) == 5
    use_static_credentials(monkeypatch, "AKIAEXAMPLEOTHERONE1")  # another principal
    assert token(issuer, capsys, "--audience", "orders-api", *cache)[1] == "token-6"
    assert len(cache_files(tmp_path)) == 6
    with fake_issuer() as other:  # another endpoint
        assert token(other, capsys, "--audience", "orders-api", *cache)[1] == "token-1"
    assert len(cache_files(tmp_path)) == 7


def sa_token(issuer_url: str, sub: str = "system:serviceaccount:orders:api") -> str:
    header = base64url.encode_json({"alg": "RS256", "kid": "k"})
    claims = {"iss": "https://oidc.example.com", "sub": sub, "aud": issuer_url}
    return f"{header}.{base64url.encode_json(claims)}.c2lnbmF0dXJl"


def test_the_key_includes_the_evidence_and_the_token_file(
    issuer, capsys, tmp_path, monkeypatch
) -> None:
    cache = ("--cache-dir", str(tmp_path / "cache"))
    ask = ("--audience", "orders-api", *cache)
    assert token(issuer, capsys, *ask)[1] == "token-1"  # sigv4
    first = tmp_path / "first"
    first.write_text(sa_token(issuer.url) + "\n")
    eks = (*ask, "--evidence", "eks", "--token-file")
    assert token(issuer, capsys, *eks, str(first))[1] == "token-2"  # not sigv4's token
    assert token(issuer, capsys, *eks, str(first))[1] == "token-2"  # cached
    second = tmp_path / "second"
    second.write_text(sa_token(issuer.url))
    assert token(issuer, capsys, *eks, str(second))[1] == "token-3"  # another token file
    first.write_text(sa_token(issuer.url, "system:serviceaccount:orders:other"))
    assert token(issuer, capsys, *eks, str(first))[1] == "token-4"  # another service account
    # An eks pod needs no AWS credentials, for the key either.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    assert token(issuer, capsys, *eks, str(second))[1] == "token-3"
    assert issuer.exchanges == len(cache_files(tmp_path / "cache")) == 4
    assert [form["subject_token_type"] for form in issuer.forms] == [
        ["urn:tokex:token-type:aws-sigv4"]
    ] + [["urn:ietf:params:oauth:token-type:jwt"]] * 3


def test_cache_file_name_changes_with_every_part() -> None:
    base = {
        "endpoint": "https://auth.example.com",
        "issuer": None,
        "audience": "orders-api",
        "scopes": ("b", "a"),
        "evidence": "sigv4",
        "instance_identity": "off",
        "principal": "AKIAEXAMPLEWORKLOAD1",
        "token_file": None,
    }
    changes = {
        "endpoint": "https://other.example.com",
        "issuer": "https://auth.example.com",
        "audience": "billing-api",
        "scopes": ("a",),
        "evidence": "aws-oif",
        "instance_identity": "auto",
        "principal": "AKIAEXAMPLEOTHERONE1",
        "token_file": "/var/run/secrets/tokex/serviceaccount/token",
    }
    name = disk_cache.cache_file_name(**base)
    assert name.endswith(disk_cache.FILE_SUFFIX)
    assert disk_cache.cache_file_name(**{**base, "scopes": ["a", "b", "a"]}) == name
    assert disk_cache.cache_file_name(**{**base, "endpoint": "https://auth.example.com/"}) == name
    names = {disk_cache.cache_file_name(**{**base, key: value}) for key, value in changes.items()}
    assert len(names) == len(changes) and name not in names


def test_a_token_past_80_percent_of_its_lifetime_is_not_reused(issuer, capsys, tmp_path) -> None:
    ask = ("--audience", "orders-api", "--cache-dir", str(tmp_path))
    assert token(issuer, capsys, *ask)[1] == "token-1"
    [file] = cache_files(tmp_path)
    entry = json.loads(file.read_text())
    entry["obtained_at"] -= 0.8 * 900  # written 12 minutes ago, by both clocks
    if "boot" in entry:  # Linux: the boot clock's reading too
        entry["boot"][1] -= 0.8 * 900
    file.write_text(json.dumps(entry))
    assert token(issuer, capsys, *ask)[1] == "token-2"
    assert token(issuer, capsys, *ask)[1] == "token-2"


def test_a_tokens_age_is_counted_on_the_boot_clock_in_its_boot(tmp_path) -> None:
    """A wall clock set back after the write (NTP correcting a clock that was ahead) made
    an expired token look fresh, with a positive expires_in. Within the boot it was
    written in, its age is the boot clock's; in another boot, the wall clock's."""
    path = tmp_path / ("x" + disk_cache.FILE_SUFFIX)
    written = ("boot-a", 50.0)
    disk_cache.write_cached(
        path, {"access_token": "t", "expires_in": 900}, now=1000.0, boot=written
    )
    # 850 s later by the boot clock, the wall clock set back 300 s: past 80 % (720 s).
    assert disk_cache.read_cached(path, now=1550.0, boot=("boot-a", 900.0)) is None
    # 100 s later, the wall clock set back 500 s: fresh, counted from its write.
    later = disk_cache.read_cached(path, now=600.0, boot=("boot-a", 150.0))
    assert later == {"access_token": "t", "expires_in": 799}
    # A boot clock that went back is no reading of this boot's: stale.
    assert disk_cache.read_cached(path, now=1100.0, boot=("boot-a", 10.0)) is None
    # Another boot: the wall clock, which here is set back: stale.
    assert disk_cache.read_cached(path, now=700.0, boot=("boot-b", 5.0)) is None
    assert disk_cache.read_cached(path, now=1100.0, boot=("boot-b", 5.0))["expires_in"] == 799


def test_the_boot_clock_reads_this_boot() -> None:
    reading = disk_cache.boot_clock()
    if not disk_cache.BOOT_ID_FILE.exists():
        assert reading is None
        return
    assert reading is not None and reading[0] == disk_cache.BOOT_ID_FILE.read_text().strip()
    assert reading[1] > 0


def test_read_cached_rules(tmp_path) -> None:
    path = tmp_path / ("x" + disk_cache.FILE_SUFFIX)
    response = {"access_token": "t", "expires_in": 100}
    disk_cache.write_cached(path, response, now=1000.0)
    # Its life counted from a second before it was asked for (ISSUED_TO_THE_SECOND).
    assert disk_cache.read_cached(path, now=1000.0) == {"access_token": "t", "expires_in": 99}
    assert disk_cache.read_cached(path, now=1078.0)["expires_in"] == 21
    assert disk_cache.read_cached(path, now=1079.0) is None  # 80 % of the lifetime
    assert disk_cache.read_cached(path, now=999.0) is None  # a clock set back
    path.chmod(0o644)
    assert disk_cache.read_cached(path, now=1000.0) is None  # not a file this user locked
    path.chmod(0o600)
    link = tmp_path / ("link" + disk_cache.FILE_SUFFIX)
    link.symlink_to(path)
    assert disk_cache.read_cached(link, now=1000.0) is None
    path.write_text("not json")
    assert disk_cache.read_cached(path, now=1000.0) is None
    # An access token the token endpoint's answer would have been refused for (a file
    # edited since): it would go into an Authorization header or onto a terminal.
    for token in ("t\r\nX-Injected: 1", "two words", "\x1b[2J", "", 7):
        disk_cache.write_cached(path, {"access_token": token, "expires_in": 100}, now=1000.0)
        assert disk_cache.read_cached(path, now=1000.0) is None, token


def test_what_is_no_cache_file_is_ignored_never_waited_on_or_crashed_on(tmp_path) -> None:
    """A FIFO of a cache file's name blocked the read (and the pruning) for ever; a
    directory or JSON nested too deeply was an internal error."""
    fifo = tmp_path / ("fifo" + disk_cache.FILE_SUFFIX)
    os.mkfifo(fifo, 0o600)
    directory = tmp_path / ("dir" + disk_cache.FILE_SUFFIX)
    directory.mkdir(mode=0o700)
    deep = tmp_path / ("deep" + disk_cache.FILE_SUFFIX)
    disk_cache.write_cached(deep, {"access_token": "t", "expires_in": 100}, now=1000.0)
    deep.write_text("[" * 60_000)
    for path in (fifo, directory, deep):
        assert disk_cache.read_cached(path, now=1000.0) is None
    assert disk_cache.prune_expired(tmp_path, now=5000.0) == 0
    assert fifo.exists() and directory.exists() and deep.exists()  # not ours to remove


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o722, 0o1777])
def test_a_directory_others_may_write_to_is_refused(issuer, capsys, tmp_path, mode) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(mode)
    code, _, err = token(issuer, capsys, "--audience", "orders-api", "--cache-dir", str(directory))
    assert code == 2
    assert "--cache-dir" in err and "writable by others" in err and "chmod 700" in err
    assert issuer.exchanges == 0
    code, out, err = token(
        issuer, capsys, "--audience", "a", "--cache-dir", str(directory), "--json"
    )
    assert (code, err) == (2, "")
    assert json.loads(out)["error"] == "invalid_value"
    assert json.loads(out)["input"] == "--cache-dir"


def test_a_directory_of_another_user_or_not_a_directory_is_refused(
    issuer, capsys, tmp_path, monkeypatch
) -> None:
    plain = tmp_path / "file"
    plain.write_text("")
    code, _, err = token(issuer, capsys, "--audience", "orders-api", "--cache-dir", str(plain))
    assert code == 2 and "not a directory" in err
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    code, _, err = token(issuer, capsys, "--audience", "orders-api", "--cache-dir", str(tmp_path))
    assert code == 2 and "not by this user" in err
    assert issuer.exchanges == 0


def test_a_directory_that_cannot_be_made_is_a_write_failure(issuer, capsys, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = token(
        issuer, capsys, "--audience", "a", "--cache-dir", str(blocker / "sub"), "--json"
    )
    assert (code, err) == (1, "")
    assert json.loads(out)["error"] == "write_failed"
    assert issuer.exchanges == 0


def test_expired_tokens_of_earlier_sessions_are_pruned_and_nothing_else(tmp_path) -> None:
    """A new role session starts a new file: each write removes this user's files whose
    token has expired, and leaves alone valid ones, other files and files not its own."""
    directory = open_private_dir(tmp_path / "cache")
    expired = directory / ("expired" + disk_cache.FILE_SUFFIX)
    disk_cache.write_cached(expired, {"access_token": "old", "expires_in": 900}, now=1000.0)
    stale_but_valid = directory / ("stale" + disk_cache.FILE_SUFFIX)
    disk_cache.write_cached(stale_but_valid, {"access_token": "s", "expires_in": 900}, now=1500.0)
    set_back = directory / ("future" + disk_cache.FILE_SUFFIX)
    disk_cache.write_cached(set_back, {"access_token": "f", "expires_in": 900}, now=9000.0)
    not_json = directory / ("garbage" + disk_cache.FILE_SUFFIX)
    not_json.write_text("not json")
    not_json.chmod(0o600)
    readable = directory / ("shared" + disk_cache.FILE_SUFFIX)
    disk_cache.write_cached(readable, {"access_token": "r", "expires_in": 900}, now=1000.0)
    readable.chmod(0o644)  # not a file this cache wrote
    other = directory / "notes.txt"
    other.write_text("mine")
    link = directory / ("link" + disk_cache.FILE_SUFFIX)
    link.symlink_to(expired)

    # At 2000 s: `expired` ended at 1900 s; `stale` lives until 2400 s.
    assert disk_cache.prune_expired(directory, now=2000.0) == 1
    assert not expired.exists()
    for kept in (stale_but_valid, set_back, not_json, readable, other):
        assert kept.exists(), kept
    assert link.is_symlink()  # never followed, never removed
    assert disk_cache.prune_expired(directory, now=2000.0) == 0


def test_the_command_prunes_when_it_writes(issuer, capsys, tmp_path) -> None:
    directory = open_private_dir(tmp_path / "cache")
    earlier_session = directory / ("earlier" + disk_cache.FILE_SUFFIX)
    disk_cache.write_cached(earlier_session, {"access_token": "old", "expires_in": 60}, now=0.0)
    ask = ("--audience", "orders-api", "--cache-dir", str(directory))
    assert token(issuer, capsys, *ask)[:2] == (0, "token-1")
    assert not earlier_session.exists()
    assert len(cache_files(directory)) == 1


def test_a_cached_lifetime_counts_from_when_the_token_was_asked_for(
    monkeypatch, capsys, tmp_path
) -> None:
    """tokex counts `expires_in` from when it issued the token, before its answer came:
    counted from the answer, a cached token would be handed out after its `exp`."""
    use_static_credentials(monkeypatch)
    with fake_issuer(expires_in=900, delay=1.0) as slow:
        asked = time.time()
        assert token(slow, capsys, "--audience", "orders-api", "--cache-dir", str(tmp_path))[0] == 0
    [file] = cache_files(tmp_path)
    obtained_at = json.loads(file.read_text())["obtained_at"]
    assert asked <= obtained_at < asked + 1.0  # before the 1 s the answer took


def test_eight_processes_at_once_on_an_empty_cache_dir_each_get_a_whole_token(
    issuer, tmp_path
) -> None:
    """Scripts start `tokex token --cache-dir` side by side: each process writes its file
    whole (a temporary file renamed over it) while the others read and prune, so no run
    reads half a file or fails, no temporary file is left, and a later run is served from
    the cache."""
    issuer.delay = 0.3  # the eight exchanges overlap, and so do their writes
    directory = tmp_path / "cache"
    argv = [
        sys.executable, "-m", "tokex.cli.main", "token", "--endpoint", issuer.url,
        "--audience", "orders-api", "--cache-dir", str(directory),
    ]  # fmt: skip
    runs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    answers = [run.communicate(timeout=60) for run in runs]
    assert [(run.returncode, err) for run, (_, err) in zip(runs, answers, strict=True)] == [
        (0, "")
    ] * 8
    tokens = {out.strip() for out, _ in answers}
    assert tokens <= {f"token-{n}" for n in range(1, 9)}
    files = cache_files(directory)
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert sorted(path.name for path in directory.iterdir()) == [files[0].name]  # no .tmp-
    exchanges = issuer.exchanges
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert again.stdout.strip() in tokens
    assert issuer.exchanges == exchanges  # from the cache
