"""`tokex token --cache-dir`: tokens on disk only when asked, 0600 files in a directory no
one else may write to, one file per endpoint, audience, scopes, kind of evidence and AWS
access key (or, for eks, service account and token file)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_issuer import FakeIssuer, fake_issuer, use_static_credentials
from tests.support.loopback import LoopbackServer, QuietHandler, serving
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


# The key of each file `cache_path` named (file name -> key), for `write_cached`.
KEYS: dict[str, dict] = {}


def cache_path(directory: Path, audience: str = "orders-api") -> Path:
    """The file the cache keeps `audience`'s token in (the rest of the key fixed)."""
    key = disk_cache.cache_key(
        endpoint="https://auth.example.com",
        issuer=None,
        audience=audience,
        scopes=(),
        evidence="sigv4",
        instance_identity="off",
        principal="AKIAEXAMPLEWORKLOAD1",
    )
    name = disk_cache.cache_file_name(key)
    KEYS[name] = key
    return directory / name


def write_cached(path: Path, response: dict, **kwargs: object) -> None:
    """disk_cache.write_cached with the key `cache_path` named `path` by."""
    disk_cache.write_cached(path, response, key=KEYS[path.name], **kwargs)  # type: ignore[arg-type]


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

    def name_of(fields: dict) -> str:
        return disk_cache.cache_file_name(disk_cache.cache_key(**fields))

    name = name_of(base)
    assert name.endswith(disk_cache.FILE_SUFFIX)
    assert name_of({**base, "scopes": ["a", "b", "a"]}) == name
    assert name_of({**base, "endpoint": "https://auth.example.com/"}) == name
    names = {name_of({**base, key: value}) for key, value in changes.items()}
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
    path = cache_path(tmp_path, "x")
    written = ("boot-a", 50.0)
    write_cached(path, {"access_token": "t", "expires_in": 900}, now=1000.0, boot=written)
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
    path = cache_path(tmp_path, "x")
    response = {"access_token": "t", "expires_in": 100}
    write_cached(path, response, now=1000.0)
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
        write_cached(path, {"access_token": token, "expires_in": 100}, now=1000.0)
        assert disk_cache.read_cached(path, now=1000.0) is None, token


def test_what_is_no_cache_file_is_ignored_never_waited_on_or_crashed_on(tmp_path) -> None:
    """A FIFO of a cache file's name blocked the read (and the pruning) for ever; a
    directory or JSON nested too deeply was an internal error."""
    fifo = tmp_path / ("fifo" + disk_cache.FILE_SUFFIX)
    os.mkfifo(fifo, 0o600)
    directory = tmp_path / ("dir" + disk_cache.FILE_SUFFIX)
    directory.mkdir(mode=0o700)
    deep = cache_path(tmp_path, "deep")
    write_cached(deep, {"access_token": "t", "expires_in": 100}, now=1000.0)
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
    expired = cache_path(directory, "expired")
    write_cached(expired, {"access_token": "old", "expires_in": 900}, now=1000.0)
    stale_but_valid = cache_path(directory, "stale")
    write_cached(stale_but_valid, {"access_token": "s", "expires_in": 900}, now=1500.0)
    set_back = cache_path(directory, "future")
    write_cached(set_back, {"access_token": "f", "expires_in": 900}, now=9000.0)
    not_json = directory / ("garbage" + disk_cache.FILE_SUFFIX)
    not_json.write_text("not json")
    not_json.chmod(0o600)
    readable = cache_path(directory, "shared")
    write_cached(readable, {"access_token": "r", "expires_in": 900}, now=1000.0)
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
    earlier_session = cache_path(directory, "earlier")
    write_cached(earlier_session, {"access_token": "old", "expires_in": 60}, now=0.0)
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


def test_a_file_renamed_over_another_requests_is_not_served(issuer, capsys, tmp_path) -> None:
    """A file was trusted by its name: whoever may write to the directory renamed the
    token for one audience over the file of another, and `tokex token` handed it out for
    that other. Each file keeps its key, and is served only for it."""
    directory = tmp_path / "cache"
    ask = ("--cache-dir", str(directory))
    assert token(issuer, capsys, "--audience", "orders-api", *ask)[:2] == (0, "token-1")
    [orders] = cache_files(directory)
    assert token(issuer, capsys, "--audience", "billing-api", *ask)[:2] == (0, "token-2")
    [billing] = [path for path in cache_files(directory) if path != orders]
    os.replace(orders, billing)
    assert token(issuer, capsys, "--audience", "billing-api", *ask)[:2] == (0, "token-3")
    kept = json.loads(billing.read_text())["key"]  # rewritten, with its key
    assert (kept["audience"], kept["endpoint"], kept["scopes"]) == ("billing-api", issuer.url, [])
    assert token(issuer, capsys, "--audience", "billing-api", *ask)[:2] == (0, "token-3")
    assert issuer.exchanges == 3


def test_a_file_without_its_key_is_a_miss(tmp_path) -> None:
    """Written by a version before files kept their key: nothing says whose token it is."""
    path = cache_path(tmp_path)
    write_cached(path, {"access_token": "t", "expires_in": 100}, now=1000.0)
    assert disk_cache.read_cached(path, now=1000.0) == {"access_token": "t", "expires_in": 99}
    entry = json.loads(path.read_text())
    del entry["key"]
    path.write_text(json.dumps(entry))  # the same file, mode 0600 still
    assert disk_cache.read_cached(path, now=1000.0) is None
    assert disk_cache.prune_expired(tmp_path, now=5000.0) == 1  # still the cache's: pruned
    assert not path.exists()


def test_a_file_is_written_only_with_the_key_it_is_named_by(tmp_path) -> None:
    """A file without its key would never be served: writing one is refused."""
    response = {"access_token": "t", "expires_in": 100}
    fields = {
        "endpoint": "https://auth.example.com",
        "issuer": None,
        "audience": "billing-api",
        "scopes": ("b", "a"),
        "evidence": "sigv4",
        "instance_identity": "off",
        "principal": "AKIAEXAMPLEWORKLOAD1",
    }
    key = disk_cache.cache_key(**fields)
    for elsewhere in (cache_path(tmp_path, "orders-api"), tmp_path / "x.token.json"):
        with pytest.raises(ValueError, match="is not the file of the key given"):
            disk_cache.write_cached(elsewhere, response, key=key)
    path = tmp_path / disk_cache.cache_file_name(key)
    disk_cache.write_cached(path, response, key=key, now=1000.0)
    assert disk_cache.read_cached(path, now=1000.0) == {"access_token": "t", "expires_in": 99}
    stored = {**fields, "scopes": ["a", "b"], "token_file": None, "v": 2}
    assert json.loads(path.read_text())["key"] == stored


def left_by_a_killed_write(directory: Path, age: float, now: float = 10_000.0) -> Path:
    """A temporary file as `write_private` makes one (mkstemp, prefix .tmp-, mode 0600),
    holding a bearer token, never renamed into place; last written `age` s before `now`."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps({"obtained_at": 0, "response": {"access_token": "secret"}}))
    os.utime(name, (now - age, now - age))
    return Path(name)


def test_temporary_files_of_killed_writes_are_pruned_once_stale(tmp_path) -> None:
    """A run killed between writing its temporary file and renaming it left a bearer token
    in a hidden file that nothing removed."""
    directory = open_private_dir(tmp_path / "cache")
    stale = left_by_a_killed_write(directory, age=3600)  # no write takes an hour
    under_way = left_by_a_killed_write(directory, age=5)  # another run's write, maybe
    readable = left_by_a_killed_write(directory, age=3600)
    readable.chmod(0o644)  # not one write_private made
    not_its_name = directory / ".tmp.notes"
    not_its_name.write_text("")
    os.utime(not_its_name, (0, 0))
    link = directory / ".tmp-link0000"
    link.symlink_to(readable)
    os.utime(link, (0, 0), follow_symlinks=False)
    assert disk_cache.prune_expired(directory, now=10_000.0) == 1
    assert not stale.exists()
    for kept in (under_way, readable, not_its_name):
        assert kept.exists(), kept
    assert link.is_symlink()


@pytest.mark.skipif(os.getuid() != 0, reason="making a file another user's takes root")
def test_another_users_temporary_file_is_left_alone(tmp_path) -> None:
    directory = open_private_dir(tmp_path / "cache")
    theirs = left_by_a_killed_write(directory, age=3600)
    os.chown(theirs, 65534, 65534)
    assert disk_cache.prune_expired(directory, now=10_000.0) == 0
    assert theirs.exists()


def test_a_cache_dir_another_user_could_redirect_is_refused(issuer, capsys, tmp_path) -> None:
    """A private directory in a folder anyone may write to: swapped after the check for
    theirs, it would receive the tokens (and the role sessions' credentials)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "cache").mkdir(mode=0o700)
    ask = ("--audience", "orders-api", "--cache-dir", str(shared / "cache"))
    code, out, err = token(issuer, capsys, *ask)
    assert (code, out) == (2, "")
    assert f"--cache-dir {shared} is writable by everyone without the sticky bit" in err
    assert f"anyone could replace {shared}/cache" in err
    code, out, err = token(issuer, capsys, *ask, "--json")
    assert (code, err) == (2, "")
    answer = json.loads(out)
    assert (answer["error"], answer["input"]) == ("invalid_value", "--cache-dir")
    assert issuer.exchanges == 0
    assert list((shared / "cache").iterdir()) == []


# --- --instance-identity auto: a token obtained without instance evidence -----------------


class FlakyImds(QuietHandler):
    """IMDS that gives no answer (the connection closed, as a timeout leaves it) to the
    first `missing` session-token requests, then the evidence; `puts` counts the reads."""

    missing = 1
    puts = 0

    def do_PUT(self) -> None:
        cls = type(self)
        cls.puts += 1
        if cls.puts <= cls.missing:
            self.close_connection = True  # nothing answered
            return
        self.send_document(200, b"session-token", {"Content-Type": "text/plain"})

    def do_GET(self) -> None:
        body = b'{"instanceId": "i-0123456789abcdef0"}'
        self.send_document(200, body, {"Content-Type": "text/plain"})


@contextlib.contextmanager
def imds_missing(monkeypatch, missing: int) -> Iterator[type[FlakyImds]]:
    handler = type("Imds", (FlakyImds,), {"missing": missing, "puts": 0})
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    with serving(LoopbackServer(handler)) as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        yield handler


def test_auto_a_token_without_instance_evidence_does_not_outlive_one_imds_failure(
    issuer, capsys, monkeypatch, tmp_path
) -> None:
    """Cached as `auto`'s token, the one obtained while IMDS did not answer was served for
    80 % of its lifetime after IMDS answered again: without the instance evidence, and so
    without what an instance policy grants. The next run reads IMDS again."""
    ask = ("--audience", "orders-api", "--instance-identity", "auto", "--cache-dir", str(tmp_path))
    with imds_missing(monkeypatch, missing=1) as imds:
        assert token(issuer, capsys, *ask)[:2] == (0, "token-1")
        assert token(issuer, capsys, *ask)[:2] == (0, "token-2")
        assert token(issuer, capsys, *ask)[:2] == (0, "token-2")  # cached: no IMDS read
        assert imds.puts == 2
    first, second = issuer.forms
    assert "aws_instance_identity" not in first
    sent = json.loads(base64url.decode(second["aws_instance_identity"][0]))
    assert sent["document"] == '{"instanceId": "i-0123456789abcdef0"}'


def test_auto_off_ec2_a_token_is_served_from_the_cache_once_imds_failed_twice(
    issuer, capsys, monkeypatch, tmp_path
) -> None:
    """Where IMDS never answers (off EC2) the cache still saves the exchanges: the run
    after the one that got the token reads IMDS once more and is served the cached token;
    from then on runs are served without reading IMDS."""
    ask = ("--audience", "orders-api", "--instance-identity", "auto", "--cache-dir", str(tmp_path))
    with imds_missing(monkeypatch, missing=10**6) as imds:
        for reads in (1, 2, 2, 2):
            assert token(issuer, capsys, *ask)[:2] == (0, "token-1")
            assert imds.puts == reads
    assert issuer.exchanges == 1
    assert "aws_instance_identity" not in issuer.forms[0]
    # Kept again with its own age, not the second run's.
    missed, again = (json.loads(file.read_text()) for file in cache_files(tmp_path))
    assert missed["obtained_at"] == again["obtained_at"]
    assert {missed["key"]["instance_evidence"], again["key"]["instance_evidence"]} == {
        "missed",
        "missed again",
    }


def test_auto_a_token_is_kept_apart_from_one_of_before_this_rule(
    issuer, capsys, monkeypatch, tmp_path
) -> None:
    """A file `auto` wrote under its old key (no `instance_evidence`) may hold a token
    without the evidence: no run serves it."""
    fields = {
        "endpoint": issuer.url,
        "issuer": None,
        "audience": "orders-api",
        "scopes": (),
        "evidence": "sigv4",
        "instance_identity": "auto",
        "principal": "AKIAEXAMPLEWORKLOAD1",
    }
    old_key = disk_cache.cache_key(**fields)
    old = tmp_path / disk_cache.cache_file_name(old_key)
    disk_cache.write_cached(old, {"access_token": "old", "expires_in": 900}, key=old_key)
    ask = ("--audience", "orders-api", "--instance-identity", "auto", "--cache-dir", str(tmp_path))
    with imds_missing(monkeypatch, missing=0):
        assert token(issuer, capsys, *ask)[:2] == (0, "token-1")
    assert "aws_instance_identity" in issuer.forms[0]
