"""`python -m benchmarks` keeps the handlers' last log lines and shows them when a run
fails: the audit line of a failed exchange names the upstream, the error alone does not."""

from __future__ import annotations

import sys
import threading

import pytest

from benchmarks import __main__ as benchmark_main
from benchmarks.figures import Figure


def test_recent_lines_keeps_the_last_lines_whole() -> None:
    kept = benchmark_main.RecentLines(3)
    for n in range(5):
        kept.write(f"line {n}")
        kept.write("\n")
    kept.write("partial")
    assert kept.recent() == ["line 2", "line 3", "line 4", "partial"]


def test_recent_lines_keeps_lines_written_at_once_whole() -> None:
    kept = benchmark_main.RecentLines(10_000)

    def write(name: str) -> None:
        for n in range(500):
            kept.write(f"{name} {n}\n")

    threads = [threading.Thread(target=write, args=(name,)) for name in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(kept.recent()) == sorted(f"{name} {n}" for name in "abcd" for n in range(500))


def test_a_failed_run_shows_the_handlers_last_log_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing_run(profile: str, handler_log: benchmark_main.RecentLines) -> list[Figure]:
        print('{"message":"token exchange","reason":"kms Sign: ReadTimeout"}', file=handler_log)
        raise RuntimeError("the exchange answered 503")

    monkeypatch.setattr(benchmark_main, "run", failing_run)
    monkeypatch.setattr(sys, "argv", ["benchmarks", "--profile", "small", "--output", "/dev/null"])
    with pytest.raises(RuntimeError, match="answered 503"):
        benchmark_main.main()
    err = capsys.readouterr().err
    assert "the handlers' last log lines before the failure:" in err
    assert '"reason":"kms Sign: ReadTimeout"' in err
