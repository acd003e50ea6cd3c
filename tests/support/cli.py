"""`tokex ARGV` in the test's own process, as a user runs it: its exit code, stdout and
stderr, never a traceback (a crash is a bug, whatever the input)."""

from __future__ import annotations

import pytest

from tokex.cli.main import main


def tokex(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err
