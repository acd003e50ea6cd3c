"""`tokex local` fails cleanly: a second start on a busy port names the port, exits 1 and
leaves the state directory as it found it, so the instance already running there keeps
working, its instance identity evidence included (docs/local.md "Starting and stopping")."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import jwt
import pytest

from tests.e2e.running_local import TOKEX, RunningLocal, run_token
from tokex.local.provision import DEMO_INSTANCE_AUDIENCE, DEMO_INSTANCE_ID

pytestmark = pytest.mark.e2e


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every entry under `directory`: its bytes (files) and its mode."""
    return {
        path.relative_to(directory).as_posix(): (
            path.read_bytes() if path.is_file() else b"",
            path.stat().st_mode,
        )
        for path in sorted(directory.rglob("*"))
    }


def start_again(port: int, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKEX, "local", "--port", str(port), "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_second_start_on_a_busy_port_leaves_the_running_one_working(
    local_process: RunningLocal, tmp_path: Path
) -> None:
    first = local_process
    before = snapshot(first.state_dir)
    assert "imds-local-ca.pem" in before

    second = start_again(first.port, first.state_dir)
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"port {first.port} on 127.0.0.1 is already in use" in second.stderr
    assert "--port" in second.stderr  # the fix
    assert "Traceback" not in second.stdout + second.stderr
    assert snapshot(first.state_dir) == before

    # A state directory that did not exist is not even created.
    fresh = tmp_path / "never-made"
    third = start_again(first.port, fresh)
    assert third.returncode == 1 and f"port {first.port}" in third.stderr
    assert not fresh.exists()

    # The first instance still trusts its own instance certificate.
    result = run_token(
        first.state_dir,
        "--endpoint",
        first.issuer,
        "--audience",
        DEMO_INSTANCE_AUDIENCE,
        "--instance-identity",
        "on",
    )
    assert result.returncode == 0, result.stderr
    key = jwt.PyJWKClient(first.issuer + "/.well-known/jwks.json")
    token = result.stdout.strip()
    claims = jwt.decode(
        token,
        key.get_signing_key_from_jwt(token).key,
        algorithms=["RS256"],
        audience=DEMO_INSTANCE_AUDIENCE,
        issuer=first.issuer,
    )
    assert claims["aws"]["instance"]["id"] == DEMO_INSTANCE_ID
    assert "Traceback" not in first.console_text()


def test_a_state_directory_others_may_write_to_is_refused(tmp_path: Path) -> None:
    """workload.env is sourced by a shell: in a directory anyone may write to, another user
    could swap it for their own lines. Refused before anything starts or is written."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = start_again(port, shared)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"{shared} is writable by others (mode 0777)" in refused.stderr
    assert "choose another directory" in refused.stderr and "Traceback" not in refused.stderr
    assert list(shared.iterdir()) == []
