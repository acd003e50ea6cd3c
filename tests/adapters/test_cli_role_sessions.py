"""`tokex token --cache-dir` with an assume-role profile (tokex/cli/token.py): the role
session is kept with the tokens, as the AWS CLI keeps it, so later runs reuse both. Against
in-process moto STS (the AssumeRole calls), with a loopback fake tokex issuer."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from moto import mock_aws

from tests.support.fake_issuer import fake_issuer, without_aws_set_up
from tokex import base64url
from tokex.cli.main import main
from tokex.cli.token import ROLE_SESSIONS_DIR


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
