"""The system under test: a moto server (subprocess, SigV4 checks on), provisioned like
`tokex local`, with the real handlers behind the local HTTP front."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from tokex.cli.main import main
from tokex.local.emulator import SubprocessMotoServer
from tokex.local.runner import LocalSystem, start_local


@pytest.fixture(scope="session")
def local_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    system = start_local(
        port=0,
        state_dir=tmp_path_factory.mktemp("tokex-local"),
        moto=SubprocessMotoServer(),
    )
    thread = threading.Thread(target=system.serve_forever, daemon=True)
    thread.start()
    yield system
    system.stop()
    thread.join(timeout=10)


StateTableCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def state_table_cli(
    local_system: LocalSystem, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> StateTableCli:
    """`tokex <command> ...` in process against the system's state table, as its service
    identity: `run("revoke", "--jti", "x")` -> (exit code, stdout, stderr)."""
    deployment = local_system.deployment
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in deployment.service.env().items():
        monkeypatch.setenv(name, value)
    where = ["--table", deployment.state_table, "--region", deployment.region]
    where += ["--endpoint-url", deployment.endpoint_url]

    def run(command: str, *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()  # the in-process handlers' log lines, not the CLI's output
        code = main([command, *argv, *where])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    return run
