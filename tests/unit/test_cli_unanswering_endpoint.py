"""Operator commands against an AWS endpoint that takes the connection and never answers
(a suspended `tokex local`, whose emulator's port still accepts): they waited botocore's
60 s per read, 4 DynamoDB attempts per call and two calls (the table's kind, then the
command's own), 8 minutes. Now a bounded config (cli/deployment.py) ends them, and on
`tokex local`'s loopback emulator (operator.env's AWS_ENDPOINT_URL) the error asks
whether it is running. The commands run as users run them, in a process of their own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.loopback import TcpServer, refusing_port
from tokex.cli import deployment

LOCAL_HINT = "is `tokex local` running?"


class Silent(TcpServer):
    """Takes every connection, reads the request, never answers; closes them on stop."""

    def __init__(self) -> None:
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        super().__init__()

    def serve(self, connection: socket.socket, number: int) -> None:
        self.held.append(connection)
        self.stopping.wait()

    def stop(self) -> None:
        self.stopping.set()
        super().stop()
        for connection in self.held:
            connection.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    try:
        yield server
    finally:
        server.stop()


def operator(tmp_path: Path, endpoint: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`tokex ARGV` with operator.env's kind of settings: AWS_ENDPOINT_URL on loopback,
    and no AWS configuration of this machine's (no AWS_MAX_ATTEMPTS: botocore's defaults
    and tokex's config decide)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TOKEX_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
    )
    return subprocess.run(
        [sys.executable, "-m", "tokex.cli.main", *argv],
        capture_output=True,
        text=True,
        # botocore's defaults took 481 s here; the bounded config, CLI_MAX_ATTEMPTS reads
        # of READ_TIMEOUT seconds and their backoff, about 47 s: under this even on a
        # machine loaded many times over (a run at load 11 took over 120 s).
        timeout=300,
        env=env,
        check=False,
    )


def test_policy_list_against_an_endpoint_that_never_answers_ends_with_a_hint(
    tmp_path: Path, silent: Silent
) -> None:
    done = operator(tmp_path, silent.url, "policy", "list", "--table", "t", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    failure = json.loads(done.stdout)
    assert (failure["error"], failure["input"]) == ("aws_error", "--table")
    description = failure["error_description"]
    assert "ReadTimeoutError" in description and LOCAL_HINT in description, description
    # One call's attempts, not one call's and then the command's own call's as well.
    assert silent.connections == deployment.CLI_MAX_ATTEMPTS


def test_a_stopped_tokex_local_is_named_as_such(tmp_path: Path) -> None:
    """Its emulator's port refuses: still `endpoint unreachable`, and the hint."""
    with refusing_port() as port:
        done = operator(tmp_path, f"http://127.0.0.1:{port}", "policy", "list", "--table", "t")
    assert done.returncode == 1
    assert done.stderr == (
        "tokex policy: policy table 't': dynamodb GetItem: EndpointConnectionError (endpoint"
        " unreachable; is `tokex local` running? source the operator.env of its current run)\n"
    )
