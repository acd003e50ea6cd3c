"""`tokex token --cache-dir` with an assume-role profile (tokex/cli/token.py): the role
session is kept with the tokens, as the AWS CLI keeps it, so later runs reuse both. Against
in-process moto STS (the AssumeRole calls), with a loopback fake tokex issuer."""

from __future__ import annotations

from pathlib import Path

from moto import mock_aws

from tests.support.fake_issuer import fake_issuer, without_aws_set_up
from tokex.cli.main import main
from tokex.cli.token import ROLE_SESSIONS_DIR


def test_an_assume_role_profile_reuses_its_session_and_so_the_cached_token(
    monkeypatch, tmp_path: Path, capsys
) -> None:
    """Each run made a new role session (a new ASIA key id, which names the cache file):
    an AssumeRole call per run, a cache that never hit, and a file left per run."""
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
