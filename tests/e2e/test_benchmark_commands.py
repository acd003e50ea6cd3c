"""The documented commands (docs/performance.md): `python -m benchmarks`, fuzz and load, run
briefly as a user runs them, so that none can rot: they start, check every answer and print
their report. No timed assertion: the figures are measured, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.load_requests import KINDS
from tests.unit.test_fuzz import TARGETS

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def run_command(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_load_command_gets_every_answer_right(tmp_path: Path) -> None:
    report_file = tmp_path / "load.json"
    result = run_command(
        "benchmarks.load", "--clients", "4", "--seconds", "3", "--json", str(report_file)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_file.read_text())
    assert report["wrong_answers"] == 0 and report["dropped"] == 0
    assert report["server"] == {"exit_code": 0, "tracebacks": 0}
    # Every client sends one request of each kind first, and each was answered right.
    assert {name: kind["ok"] > 0 for name, kind in report["kinds"].items()} == {
        kind.name: True for kind in KINDS
    }
    for line in ("requests", "wrong answers   0", "429s", "dropped         0", "latency ms"):
        assert line in result.stdout
    assert "server RSS MiB" in result.stdout


def test_fuzz_command_runs_every_target() -> None:
    result = run_command("benchmarks.fuzz", "--examples", "25")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:-1]}
    names = [target.name for target in TARGETS] + ["handler-token", "handler-introspect"]
    assert sorted(rows) == sorted(names)
    for name in names:
        inputs, _refused, _accepted, server_errors, tokens, _seconds, outcome = rows[name]
        assert int(inputs) > 0 and (server_errors, tokens, outcome) == ("0", "0", "ok")


def test_benchmark_command_small_profile_writes_every_figure(tmp_path: Path) -> None:
    results = ROOT / "benchmarks" / "results.json"
    committed = results.read_bytes() if results.exists() else None
    output = tmp_path / "results.json"
    result = run_command("benchmarks", "--profile", "small", "--output", str(output))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(output.read_text())["figures"]
    assert figures and all(
        set(figure) == {"name", "value", "unit", "target", "met"} for figure in figures
    )
    names = {figure["name"] for figure in figures}
    for expected in (
        "AWS calls per warm exchange: KMS Sign",
        "handler CPU / floor CPU",
        "cold start / dependencies",
        "client: cached token() p50",
        "client: refresh happens at",
        "deadline: its 503 this long after it, kms:Sign not answering (slowest)",
    ):
        assert expected in names
    # A figure without a target is never said to meet one; one with a target always says.
    assert all((figure["target"] is None) == (figure["met"] is None) for figure in figures)
    assert "figure" in result.stdout.splitlines()[0]
    # The small profile never writes over the committed results.
    assert (results.read_bytes() if results.exists() else None) == committed


def test_benchmark_command_refuses_to_write_small_results_over_the_committed_ones() -> None:
    result = run_command("benchmarks", "--profile", "small")
    assert result.returncode == 2 and "--output" in result.stderr
