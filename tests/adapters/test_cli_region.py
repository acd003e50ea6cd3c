"""The CLI's region (tokex/cli/region.py): it follows the AWS CLI's order, and an error
names where it looked. Against in-process moto CloudFormation, which is why this is not in
tests/unit/test_cli_convention.py (whose helpers it uses)."""

from __future__ import annotations

from pathlib import Path

import pytest
from moto import mock_aws

from tests.unit.test_cli_convention import one_json_object, tokex


@pytest.fixture
def aws_config(monkeypatch, tmp_path) -> Path:
    """No region anywhere, and a config file of the test's own."""
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    config = tmp_path / "config"
    config.write_text("[default]\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return config


def stack_region(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """The region `tokex policy list --stack` looked in, as its error reports it."""
    with mock_aws():
        code, out, _ = tokex(capsys, "policy", "list", "--stack", "missing", *flags, "--json")
    failure = one_json_object(out)
    assert (code, failure["error"], failure["input"]) == (1, "not_found", "--stack")
    return failure["error_description"].split(" not found in region ")[1].split()[0]


def test_region_follows_the_aws_cli_order(capsys, monkeypatch, aws_config) -> None:
    aws_config.write_text("[default]\nregion = ap-south-1\n")
    assert stack_region(capsys) == "ap-south-1"  # the profile's
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    assert stack_region(capsys) == "eu-west-2"
    monkeypatch.setenv("AWS_REGION", "eu-west-3")  # boto3 alone would ignore it
    assert stack_region(capsys) == "eu-west-3"
    assert stack_region(capsys, "--region", "ca-central-1") == "ca-central-1"


def test_an_empty_variable_counts_as_unset(capsys, monkeypatch, aws_config) -> None:
    aws_config.write_text("[default]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_REGION", "")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "")
    assert stack_region(capsys) == "ap-south-1"


def test_no_region_says_what_it_tried(capsys, monkeypatch, aws_config) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "")
    code, out, err = tokex(capsys, "policy", "list", "--stack", "Tokex")
    assert (code, out) == (2, "")
    assert err == (
        "tokex policy: no AWS region: tried --region (not given), AWS_REGION (unset), "
        f"AWS_DEFAULT_REGION (empty), the region of profile 'default' in {aws_config} (none); "
        "pass --region REGION or set AWS_REGION\n"
    )
    code, out, _ = tokex(capsys, "clients", "list", "--table", "t", "--json")
    failure = one_json_object(out)
    assert (code, failure["error"], failure["input"]) == (2, "no_region", "--region")


@pytest.mark.parametrize(
    "variable,value,source",
    [
        ("AWS_REGION", "eu west 1", "AWS_REGION"),
        ("AWS_DEFAULT_REGION", "eu-west-1.", "AWS_DEFAULT_REGION"),
        ("AWS_PROFILE", "no-such-profile", "AWS_PROFILE"),
    ],
)
def test_a_bad_region_source_is_named(capsys, monkeypatch, aws_config, variable, value, source):
    monkeypatch.setenv(variable, value)
    code, out, _ = tokex(capsys, "revoke", "--jti", "j", "--table", "t", "--json")
    failure = one_json_object(out)
    assert (code, failure["input"]) == (2, source)
    assert value in failure["error_description"]
