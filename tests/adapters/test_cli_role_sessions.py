"""`tokex token --cache-dir` with an assume-role profile (tokex/cli/token.py): the role
session is kept with the tokens, as the AWS CLI keeps it, so later runs reuse both. Against
in-process moto STS (the AssumeRole calls), with a loopback fake tokex issuer; the test of
first runs at once starts `tokex token` processes against a moto server subprocess with
SigV4 checks on, behind a loopback proxy that counts and holds the AssumeRole calls."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from defusedxml import ElementTree
from moto import mock_aws

from tests.support.fake_issuer import fake_issuer, without_aws_set_up
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex import base64url
from tokex.cli.main import main
from tokex.cli.token import ROLE_SESSIONS_DIR
from tokex.local.emulator import SubprocessMotoServer, set_signature_checking


def assume_role_profile(monkeypatch, tmp_path: Path) -> None:
    """AWS_PROFILE=dev: role `dev`, assumed with the static keys of profile `base`."""
    without_aws_set_up(monkeypatch)
    config, credentials = tmp_path / "config", tmp_path / "credentials"
    config.write_text(
        "[profile dev]\nrole_arn = arn:aws:iam::123456789012:role/dev\n"
        "source_profile = base\nregion = us-east-1\n"
    )
    credentials.write_text(
        "[base]\naws_access_key_id = AKIAEXAMPLEBASE00001\n"
        "aws_secret_access_key = base-secret-not-real\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "dev")


def test_an_assume_role_profile_reuses_its_session_and_so_the_cached_token(
    monkeypatch, tmp_path: Path, capsys
) -> None:
    """Each run made a new role session (a new ASIA key id, which names the cache file):
    an AssumeRole call per run, a cache that never hit, and a file left per run."""
    assume_role_profile(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    # moto puts fake static keys in the environment unless told not to: the profile is used.
    with mock_aws(config={"core": {"mock_credentials": False}}), fake_issuer() as issuer:
        for _ in range(3):
            ask = ["token", "--endpoint", issuer.url, "--audience", "orders-api"]
            assert main([*ask, "--cache-dir", str(cache)]) == 0
            assert capsys.readouterr().out.strip() == "token-1"
    assert issuer.exchanges == 1
    [session] = (cache / ROLE_SESSIONS_DIR).iterdir()
    assert session.suffix == ".json" and session.stat().st_mode & 0o777 == 0o600
    tokens = [p for p in cache.iterdir() if p.is_file()]
    assert len(tokens) == 1


@pytest.mark.parametrize(
    "damage",
    [
        "a file where the folder goes",
        '{"Credentials": {"AccessKeyId": 5}}',
        '{"Credentials": {"AccessKeyId": "A", "SecretAccessKey": "S", "SessionToken": "T",'
        ' "Expiration": "garbage"}}',
        '{"Credentials": {"AccessKeyId": "A", "SecretAccessKey": "S", "SessionToken": "T",'
        ' "Expiration": "2099-01-01T00:00:00"}}',  # no zone: botocore's compare raised
    ],
)
def test_a_role_session_cache_it_cannot_use_never_fails_the_command(
    monkeypatch, tmp_path: Path, capsys, damage: str
) -> None:
    """botocore's own cache raised FileExistsError and KeyError('Expiration') out of the
    command as an internal error of tokex; the token was to be had all the same."""
    assume_role_profile(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    with mock_aws(config={"core": {"mock_credentials": False}}), fake_issuer() as issuer:
        ask = ["token", "--endpoint", issuer.url, "--audience", "orders-api", "--json"]
        if damage == "a file where the folder goes":
            (cache / ROLE_SESSIONS_DIR).write_text("not a folder")
        else:
            assert main([*ask, "--cache-dir", str(cache)]) == 0
            capsys.readouterr()
            [session] = (cache / ROLE_SESSIONS_DIR).iterdir()
            session.write_text(damage)
            for token in (p for p in cache.iterdir() if p.is_file()):
                token.unlink()  # so the run needs credentials again
        assert main([*ask, "--cache-dir", str(cache)]) == 0
        out, err = capsys.readouterr()
    assert json.loads(out)["access_token"].startswith("token-")
    assert "internal" not in err
    if damage == "a file where the folder goes":
        assert "role session not kept" in err


def _signing_key_id(issuer) -> str:
    """The access key id of the request the issuer last received."""
    signed = json.loads(base64url.decode(issuer.forms[-1]["subject_token"][0]))
    return signed["headers"]["Authorization"].split("Credential=")[1].split("/")[0]


@pytest.mark.parametrize("planted", ["another user's file", "a readable file", "a symlink"])
def test_role_credentials_another_user_could_have_put_there_are_never_used(
    monkeypatch, tmp_path: Path, capsys, planted: str
) -> None:
    """Under a permissive umask botocore made the folder world-writable and read whatever
    file was there: another user chose the credentials the workload signed with."""
    assume_role_profile(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    previous = os.umask(0)  # restored below whatever happens
    try:
        with mock_aws(config={"core": {"mock_credentials": False}}), fake_issuer() as issuer:
            ask = ["token", "--endpoint", issuer.url, "--audience", "orders-api"]
            assert main([*ask, "--cache-dir", str(cache / "deeper")]) == 0
            sessions = cache / "deeper" / ROLE_SESSIONS_DIR
            for directory in (cache, cache / "deeper", sessions):
                assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
            [entry] = sessions.iterdir()
            own_key = _signing_key_id(issuer)
            document = json.loads(entry.read_text())
            document["Credentials"]["AccessKeyId"] = "ASIAPLANTEDKEY000001"
            if planted == "a symlink":
                elsewhere = tmp_path / "elsewhere.json"
                elsewhere.write_text(json.dumps(document))
                elsewhere.chmod(0o600)
                entry.unlink()
                entry.symlink_to(elsewhere)
            else:
                entry.write_text(json.dumps(document))
                if planted == "another user's file":
                    if os.geteuid() != 0:
                        pytest.skip("only root can give a file to another user")
                    os.chown(entry, 65534, 65534)
                    entry.chmod(0o600)
                else:
                    entry.chmod(0o644)
            for token in (p for p in (cache / "deeper").iterdir() if p.is_file()):
                token.unlink()  # so the run needs credentials again
            assert main([*ask, "--cache-dir", str(cache / "deeper")]) == 0
            used = _signing_key_id(issuer)
    finally:
        os.umask(previous)
    assert used.startswith("ASIA") and used not in ("ASIAPLANTEDKEY000001", own_key)


# --- first runs at once, as processes -----------------------------------------------------

# `tokex token` processes started at once on an empty cache directory (2 cores: enough
# to overlap, few enough to stay quick).
FIRST_RUNS = 6
ASSUME_ROLE = "AssumeRole"
SESSION_FIELDS = ("AccessKeyId", "SecretAccessKey", "SessionToken")


@dataclass
class HeldAssumeRoles:
    """What the proxy saw: the AssumeRole calls, how many waited for all the others before
    any went on to STS, and the credentials of each role session STS answered."""

    racers: int
    calls: int = 0
    met: int = 0
    answered: list[tuple[str, ...]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    asked: threading.Barrier = field(init=False)
    answers: threading.Barrier = field(init=False)

    def __post_init__(self) -> None:
        # A run that never calls AssumeRole breaks the barriers (`met` says so) instead of
        # hanging the test.
        self.asked = threading.Barrier(self.racers, timeout=30)
        self.answers = threading.Barrier(self.racers, timeout=30)


@contextlib.contextmanager
def assume_role_proxy(moto_url: str, racers: int) -> Iterator[tuple[str, HeldAssumeRoles]]:
    """A loopback proxy in front of the moto server: passes every call on unchanged (its
    Host header too, so the SigV4 signature still verifies there); holds each AssumeRole
    until `racers` of them have arrived, and each answer until STS has answered them all,
    so that the runs get their role sessions, and keep them in the cache directory, at
    once."""
    held = HeldAssumeRoles(racers)
    target = urlsplit(moto_url)

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assume_role = parse_qs(body.decode()).get("Action") == [ASSUME_ROLE]
            if assume_role:
                with held.lock:
                    held.calls += 1
                with contextlib.suppress(threading.BrokenBarrierError):
                    held.asked.wait()
                    with held.lock:
                        held.met += 1
            upstream = http.client.HTTPConnection(target.netloc, timeout=30)
            try:
                upstream.request("POST", self.path, body, dict(self.headers.items()))
                answer = upstream.getresponse()
                document = answer.read()
            finally:
                upstream.close()
            if assume_role and answer.status == 200:
                credentials = {
                    element.tag.rpartition("}")[2]: element.text
                    for element in ElementTree.fromstring(document).iter()
                }
                with held.lock:
                    held.answered.append(tuple(credentials[name] for name in SESSION_FIELDS))
                with contextlib.suppress(threading.BrokenBarrierError):
                    held.answers.wait()
            content_type = answer.getheader("Content-Type") or "text/xml"
            self.send_document(answer.status, document, {"Content-Type": content_type})

    with serving(LoopbackServer(Handler)) as server:
        yield server.url, held


@contextlib.contextmanager
def moto_with_a_role_to_assume(tmp_path: Path) -> Iterator[str]:
    """A moto server subprocess (SigV4 and IAM checks on once set up) with the role `dev`
    and an IAM user allowed to assume it, whose keys are profile `base`'s in the files
    `assume_role_profile` names; yields the server's URL."""
    server = SubprocessMotoServer()
    try:
        setup = {
            "endpoint_url": server.url,
            "region_name": "us-east-1",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="base")
        key = iam.create_access_key(UserName="base")["AccessKey"]
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:*"}],
        }
        iam.create_role(RoleName="dev", AssumeRolePolicyDocument=json.dumps(trust))
        allowed = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="base", PolicyName="assume-dev", PolicyDocument=json.dumps(allowed)
        )
        (tmp_path / "credentials").write_text(
            f"[base]\naws_access_key_id = {key['AccessKeyId']}\n"
            f"aws_secret_access_key = {key['SecretAccessKey']}\n"
        )
        set_signature_checking(server.url, on=True, admin_token=server.admin_token)
        yield server.url
    finally:
        server.stop()


def test_first_runs_at_once_keep_one_whole_role_session_that_later_runs_reuse(
    monkeypatch, tmp_path: Path
) -> None:
    """Runs that start together on an empty cache directory all miss, all call AssumeRole
    (held by the proxy until every one has), and all keep their role session in the same
    file at about the same time: each must still print its own token, and what is left
    must be one whole session (not the mixture a write in place leaves when writers
    overlap), 0600, with no temporary file beside it, that the next run uses without
    calling STS. Processes, as users start them, not threads of one interpreter."""
    assume_role_profile(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    with (
        moto_with_a_role_to_assume(tmp_path) as moto_url,
        assume_role_proxy(moto_url, racers=FIRST_RUNS) as (sts_url, held),
        fake_issuer() as issuer,
    ):
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts_url)
        argv = [sys.executable, "-m", "tokex.cli.main", "token", "--endpoint", issuer.url]
        argv += ["--audience", "orders-api", "--cache-dir", str(cache)]

        def start() -> subprocess.Popen[str]:
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        runs = [start() for _ in range(FIRST_RUNS)]
        results = []
        try:
            for run in runs:
                out, err = run.communicate(timeout=60)
                results.append((run.returncode, out, err))
        finally:
            for run in runs:
                if run.poll() is None:
                    run.kill()
                    run.communicate()
        for code, _, err in results:
            assert code == 0, err
            assert "not kept" not in err and "internal" not in err, err
        # Each run printed a whole token, its own: one exchange each.
        assert sorted(out for _, out, _ in results) == sorted(
            f"token-{number}\n" for number in range(1, FIRST_RUNS + 1)
        )
        assert held.met == held.calls == len(held.answered) == FIRST_RUNS

        sessions = cache / ROLE_SESSIONS_DIR
        [session] = sessions.iterdir()  # one key for one role: one file, no temporary one
        assert session.suffix == ".json"
        assert stat.S_IMODE(session.stat().st_mode) == 0o600
        kept = json.loads(session.read_bytes())["Credentials"]
        # Whole: the credentials of one role session STS answered, not fields of several.
        assert tuple(kept[name] for name in SESSION_FIELDS) in held.answered
        tokens = [entry for entry in cache.iterdir() if entry != sessions]
        assert len(tokens) == FIRST_RUNS  # each session's own token; nothing else
        for token in tokens:
            assert token.name.endswith(".token.json"), token.name
            assert stat.S_IMODE(token.stat().st_mode) == 0o600
            json.loads(token.read_bytes())
        session_before = session.read_bytes()

        later = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert later.returncode == 0, later.stderr
        # The kept session and its cached token: no STS call, no exchange, same file.
        assert later.stdout in {out for _, out, _ in results}
        assert held.calls == FIRST_RUNS and issuer.exchanges == FIRST_RUNS
        assert session.read_bytes() == session_before
