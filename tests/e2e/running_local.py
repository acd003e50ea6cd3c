"""`tokex local` as a user runs it: a subprocess on a free port, its console read all the
time (every request writes an audit line there; a full pipe would stall the server) and
kept, so that tests can look for tracebacks in it."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The same subprocess helpers the benchmarks use (benchmarks never import tests/).
from benchmarks.local_process import (
    READY_LINE,
    START_TIMEOUT_SECONDS,
    TOKEX,
    load_env_file,
    stop_on_sigint,
    without_aws_settings,
)
from tests.support.ports import free_port

__all__ = ["TOKEX", "RunningLocal", "load_env_file", "run_token", "start_tokex_local"]


@dataclass
class RunningLocal:
    process: subprocess.Popen[str]
    port: int
    state_dir: Path
    console: list[str] = field(default_factory=list)  # stdout and stderr, line by line

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def console_text(self) -> str:
        return "".join(self.console)

    def stop(self) -> int:
        """SIGINT, as Ctrl-C: the exit code (the test fails if it does not stop)."""
        code = stop_on_sigint(self.process)
        if code is None:
            pytest.fail("tokex local did not stop on SIGINT")
        return code


def start_tokex_local(
    state_dir: Path,
    port: int | None = None,
    *,
    tokex: str = TOKEX,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    options: tuple[str, ...] = (),
) -> RunningLocal:
    """`tokex local [options]` (the checkout's console script unless `tokex` names
    another)."""
    port = port or free_port()
    process = subprocess.Popen(
        [tokex, "local", "--port", str(port), "--state-dir", str(state_dir), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
    )
    running = RunningLocal(process, port, state_dir)
    ready = threading.Event()

    def read_console() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            running.console.append(line)
            if READY_LINE in line:
                ready.set()
        ready.set()  # the process ended: stop waiting

    threading.Thread(target=read_console, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not ready.wait(timeout=0.5):
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("tokex local did not start:\n" + running.console_text())
    if process.poll() is not None and READY_LINE not in running.console_text():
        pytest.fail("tokex local exited:\n" + running.console_text())
    return running


def run_token(
    state_dir: Path, *args: str, extra_env: dict[str, str] | None = None, tokex: str = TOKEX
) -> subprocess.CompletedProcess[str]:
    """`tokex token ARGS` as the demo workload of the `tokex local` behind `state_dir`."""
    env = without_aws_settings()
    env.update(load_env_file(state_dir / "workload.env"))
    env.update(extra_env or {})
    return subprocess.run(
        [tokex, "token", *args], env=env, capture_output=True, text=True, timeout=60
    )
