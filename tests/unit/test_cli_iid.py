"""`tokex iid verify`: offline verification of instance identity documents."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tokex.cli import iid
from tokex.cli.errors import CommandError, UsageError
from tokex.cli.main import main
from tokex.evidence.instance_identity import VARIANTS

SAMPLES = Path(__file__).parents[1] / "data" / "aws-iid" / "samples"
SAMPLE_NAMES = sorted(path.name for path in SAMPLES.iterdir() if path.is_dir())


def arguments(name: str) -> list[str]:
    directory = SAMPLES / name
    variant = next(v for v in VARIANTS if (directory / v).exists())
    return ["iid", "verify", str(directory / "document"), f"--{variant}", str(directory / variant)]


def run(argv: list[str]) -> int:
    """The iid subcommand through its own parser (independent of the other commands)."""
    parser = argparse.ArgumentParser(prog="tokex")
    iid.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_sample_verifies(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = arguments(name)
    assert run(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    document = json.loads((SAMPLES / name / "document").read_bytes())
    variant = argv[3].removeprefix("--")
    label = f"{variant}/{document['region']}"
    assert lines[0] == f"verified: {variant} signature, pinned certificate {label}"
    assert f"id: {document['instanceId']}" in lines
    assert f"account: {document['accountId']}" in lines
    assert f"instance_type: {document['instanceType']}" in lines


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    name = "us-east-1_2024-02_signature_rspamd-iid0"
    assert run([*arguments(name), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verified"] is True
    assert result["certificate"] == "signature/us-east-1"
    assert result["certificate_files"] == ["rsa/us-east-1.pem", "rsa_legacy/default.pem"]
    assert result["instance"]["id"] == "i-0b02d936754a6d637"


def test_flipped_document_fails_with_the_reason(tmp_path: Path) -> None:
    name = "us-west-2_2021-09_rsa2048_teleport-instance1"
    document = tmp_path / "document"
    document.write_bytes((SAMPLES / name / "document").read_bytes().replace(b"10.0", b"10.1"))
    argv = arguments(name)
    argv[2] = str(document)
    with pytest.raises(CommandError, match="not verified: rsa2048 evidence embeds a different"):
        run(argv)


def test_trailing_newline_gets_a_hint(tmp_path: Path) -> None:
    name = "us-east-1_2024-04_signature_rspamd-iid1"
    document = tmp_path / "document"
    document.write_bytes((SAMPLES / name / "document").read_bytes() + b"\n")
    argv = arguments(name)
    argv[2] = str(document)
    with pytest.raises(CommandError, match="ends with a newline"):
        run(argv)


def test_variant_confusion_and_missing_files_fail(tmp_path: Path) -> None:
    argv = arguments("us-west-1_2021-09_rsa2048_teleport-instance2")
    with pytest.raises(CommandError, match="expected sha1"):
        run([*argv[:3], "--pkcs7", argv[4]])
    with pytest.raises(UsageError, match=r"DOCUMENT .*missing: no such file") as missing:
        run([*argv[:2], str(tmp_path / "missing"), *argv[3:]])
    assert (missing.value.exit_code, missing.value.input) == (2, str(tmp_path / "missing"))
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(CommandError, match="not UTF-8"):
        run([*argv[:2], str(tmp_path / "binary"), *argv[3:]])


def test_exactly_one_signature_option_is_required() -> None:
    argv = arguments("us-west-1_2021-09_rsa2048_teleport-instance2")
    with pytest.raises(SystemExit):
        run(argv[:3])
    with pytest.raises(SystemExit):
        run([*argv, "--signature", argv[4]])


def test_main_reports_failure_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    argv = arguments("us-west-1_2021-09_rsa2048_teleport-instance2")
    assert main(argv) == 0
    assert "verified: rsa2048" in capsys.readouterr().out
    assert main([*argv[:3], "--pkcs7", argv[4]]) == 1
    assert "tokex iid: not verified: pkcs7 evidence" in capsys.readouterr().err
    assert main([*argv[:3], "--pkcs7", argv[4], "--json"]) == 1
    failure = json.loads(capsys.readouterr().out)
    assert (failure["error"], failure["input"]) == ("not_verified", argv[2])
    assert main(["iid", "verify", "nope.txt", "--rsa2048", argv[4]]) == 2
    assert capsys.readouterr().err == "tokex iid: DOCUMENT nope.txt: no such file\n"


def test_console_script() -> None:
    script = Path(sys.executable).parent / "tokex"
    if not script.exists() and shutil.which("tokex") is None:
        pytest.skip("the tokex console script is not installed")
    command = str(script if script.exists() else shutil.which("tokex"))
    result = subprocess.run(
        [command, *arguments("us-east-1_2016-04_pkcs7_vault-verify-dsa-test")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "verified: pkcs7 signature, pinned certificate pkcs7/us-east-1" in result.stdout
