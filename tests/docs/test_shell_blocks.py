"""Docs as tests: every shell block of README.md and docs/ runs, under `sh` and `bash`.

The blocks run as a reader runs them: from the root of a checkout (a scratch directory
holding links to the repository's top-level entries and `.venv` -> the virtualenv running
this test), with `tokex local` started there (state directory `.tokex-local`), each block
in a shell of its own with `-e`, the virtualenv's `bin` first on PATH and no AWS_ or
TOKEX_ variables inherited. The blocks name `tokex local`'s default address
127.0.0.1:8787; the test runs it on a free port and rewrites that address in each block,
so parallel runs do not collide. A block that cannot run here carries a marker with its
reason (syntax and reasons: tests/docs/shell_blocks.py); the markers are checked too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs.shell_blocks import (
    SOURCE_COMMAND,
    ShellBlock,
    for_local_port,
    repository_shell_blocks,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TOKEX = shutil.which("tokex", path=str(VENV_BIN)) or "tokex"
# `sh` must be a POSIX shell without bash's extensions; Debian's is dash.
SHELLS = {"sh": shutil.which("dash") or "/bin/sh", "bash": shutil.which("bash") or "bash"}
# What the links into the checkout leave out: the VCS, our own state and build output.
NOT_LINKED = {".git", ".venv", ".tokex-local", "cdk.out", ".pytest_cache", ".ruff_cache"}
BLOCK_TIMEOUT_SECONDS = 120

BLOCKS = repository_shell_blocks(ROOT)
RUN = [block for block in BLOCKS if block.skip is None]


@dataclass(frozen=True)
class LocalCheckout:
    directory: Path
    port: int


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCheckout]:
    directory = tmp_path_factory.mktemp("checkout")
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED:
            (directory / entry.name).symlink_to(entry)
    _link_virtualenv(directory / ".venv")
    port = free_port()
    process = subprocess.Popen(
        [TOKEX, "local", "--port", str(port)],
        cwd=directory,
        env=_reader_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = _wait_for_banner(process)
    assert f"http://127.0.0.1:{port}" in output, output
    yield LocalCheckout(directory, port)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("tokex local did not stop on SIGINT")


def _link_virtualenv(link: Path) -> None:
    """`.venv` as the README made it: the virtualenv running this test, or (outside one)
    a directory whose `bin/activate` puts this interpreter's bin first on PATH."""
    if (VENV_BIN / "activate").is_file():
        link.symlink_to(VENV_BIN.parent)
        return
    (link / "bin").mkdir(parents=True)
    (link / "bin" / "activate").write_text(f'PATH="{VENV_BIN}:$PATH"; export PATH\n')


def _reader_environment() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "TOKEX_")) and name != "VIRTUAL_ENV"
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env


def _wait_for_banner(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            pytest.fail("tokex local exited:\n" + "".join(output))
        output.append(line)
        if "tokex local is running" in line:
            output.append(process.stdout.readline())  # the issuer line
            return "".join(output)
    process.kill()
    pytest.fail("tokex local did not start:\n" + "".join(output))


def test_blocks_are_found_and_some_run() -> None:
    """Discovery itself: both documents the brief names have blocks, and the docs test is
    not vacuous (each marker was validated while finding the blocks)."""
    assert {block.path for block in BLOCKS} >= {"README.md", "docs/local.md"}
    assert {block.path for block in RUN} >= {"README.md", "docs/local.md"}


# Each shell walks the documents in order, as a reader would (the top decorator varies
# fastest).
@pytest.mark.parametrize("block", RUN, ids=[block.id for block in RUN])
@pytest.mark.parametrize("shell", sorted(SHELLS, reverse=True))
def test_shell_block_runs(block: ShellBlock, shell: str, checkout: LocalCheckout) -> None:
    script = for_local_port(block, checkout.port)
    result = subprocess.run(
        [SHELLS[shell], "-e", "-c", script, shell],
        cwd=checkout.directory,
        env=_reader_environment(),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_SECONDS,
        check=False,
    )
    report = f"{block.id} under {shell}:\n{script}\n--- stdout\n{result.stdout}\n--- stderr\n"
    report += result.stderr
    assert result.returncode == 0, report
    assert "Traceback" not in result.stdout + result.stderr, report


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_every_block_is_posix_shell(block: ShellBlock) -> None:
    """Marked blocks too: each parses in `sh` and `bash`, and none uses `source` (dash has
    only `.`), so a reader's shell never matters."""
    script = block.script()
    assert not SOURCE_COMMAND.search(script), f"{block.id}: use `.` rather than `source`"
    for shell, program in SHELLS.items():
        parsed = subprocess.run(
            [program, "-n", "-c", script], capture_output=True, text=True, check=False
        )
        assert parsed.returncode == 0, f"{block.id} does not parse in {shell}: {parsed.stderr}"
