"""`tokex local` as a subprocess of its own (free port, temporary state directory), as a
user starts it, with its console drained and its memory measurable."""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port

TOKEX = shutil.which("tokex", path=str(Path(sys.executable).parent)) or "tokex"
READY_LINE = "tokex local is running"
START_TIMEOUT_SECONDS = 120  # two shared cores, other suites running beside this one
STOP_TIMEOUT_SECONDS = 20
_EXPORT = re.compile(r"export ([A-Z0-9_]+)=(.*)")


def load_env_file(path: Path) -> dict[str, str]:
    """The `export NAME=value` lines of a file `tokex local` wrote to its state dir."""
    env = {}
    for line in path.read_text().splitlines():
        match = _EXPORT.fullmatch(line)
        if match:
            env[match[1]] = match[2].strip("'")
    return env


def without_aws_settings() -> dict[str, str]:
    """This process's environment minus `AWS_*` and `TOKEX_*`: the system provisions its
    own identities, and a developer's AWS settings stay out."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TOKEX_"))}


@dataclass
class LocalProcess:
    process: subprocess.Popen[str]
    issuer: str
    state_dir: Path
    # The console: every handler writes its audit line there, so it must be read all the
    # time (a full pipe would stall the server). Kept: the last lines, tracebacks counted.
    console_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=40)
    )
    tracebacks: int = 0

    def env_file(self, name: str) -> dict[str, str]:
        """The `export NAME=value` lines of a file `tokex local` wrote to its state dir."""
        return load_env_file(self.state_dir / name)

    def rss_mib(self) -> float | None:
        """Resident memory of the process and every descendant (None without /proc)."""
        return process_tree_rss_mib(self.process.pid)

    def stop(self) -> int | None:
        return stop_on_sigint(self.process)

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.console_tail.append(line.rstrip("\n"))
            if line.startswith("Traceback"):
                self.tracebacks += 1


def stop_on_sigint(process: subprocess.Popen[str]) -> int | None:
    """SIGINT, as Ctrl-C; the exit code, or None if it had to be killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None
    return process.returncode


def start_tokex_local(state_dir: Path) -> LocalProcess:
    """Start `tokex local` and return once it says it is running."""
    port = free_port()
    process = subprocess.Popen(
        [TOKEX, "local", "--port", str(port), "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=without_aws_settings(),
    )
    local = LocalProcess(process, f"http://127.0.0.1:{port}", state_dir)
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise RuntimeError("tokex local exited:\n" + "\n".join(local.console_tail))
        local.console_tail.append(line.rstrip("\n"))
        if READY_LINE in line:
            threading.Thread(target=local._drain, daemon=True).start()
            return local
    local.stop()
    raise RuntimeError("tokex local did not start:\n" + "\n".join(local.console_tail))


def process_tree_rss_mib(root: int) -> float | None:
    """VmRSS summed over `root` and its descendants, from /proc (Linux)."""
    proc = Path("/proc")
    if not (proc / str(root)).exists():
        return None
    children: dict[int, list[int]] = collections.defaultdict(list)
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # The command name is in parentheses and may contain anything: split after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        children[int(fields[1])].append(int(stat.parent.name))
    total_kib, pending = 0, [root]
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, ()))
        try:
            status = (proc / str(pid) / "status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total_kib += int(match[1]) if match else 0
    return total_kib / 1024
