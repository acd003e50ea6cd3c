"""The system under test: a moto server (subprocess, SigV4 checks on), provisioned like
`tokex local`, with the real handlers behind the local HTTP front."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.system.upstreams import CountingProxy
from tokex.adapters.policy_table import PolicyStore
from tokex.cli.main import main
from tokex.local.emulator import SubprocessMotoServer, set_signature_checking
from tokex.local.provision import ACCOUNT_ID, DEMO_AUDIENCE, Credentials
from tokex.local.runner import LocalSystem, start_local
from tokex.policy.model import Policy


@contextlib.contextmanager
def serving(state_dir: Path, **options: Any) -> Iterator[LocalSystem]:
    """`tokex local` started on a free port with moto in a subprocess (`options` as
    `start_local` takes them), its front served on a thread, stopped afterwards."""
    system = start_local(port=0, state_dir=state_dir, moto=SubprocessMotoServer(), **options)
    thread = threading.Thread(target=system.serve_forever, daemon=True)
    thread.start()
    try:
        yield system
    finally:
        system.stop()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def local_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with serving(tmp_path_factory.mktemp("tokex-local")) as system:
        yield system


def as_operator(deployment: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's AWS identity becomes operator.env's (the deployment's service
    credentials), with nothing of the machine's own AWS configuration."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in deployment.service.env().items():
        monkeypatch.setenv(name, value)


StateTableCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def counting_proxy(local_system: LocalSystem) -> Iterator[CountingProxy]:
    """A proxy in front of the system's emulator that counts (and can hold or fail) the
    AWS calls sent through it (upstreams.py); stopped after the test."""
    counting = CountingProxy(local_system.deployment.endpoint_url)
    yield counting
    counting.stop()


@pytest.fixture
def state_table_cli(
    local_system: LocalSystem, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> StateTableCli:
    """`tokex <command> ...` in process against the system's state table, as its service
    identity: `run("revoke", "--jti", "x")` -> (exit code, stdout, stderr)."""
    deployment = local_system.deployment
    as_operator(deployment, monkeypatch)
    where = ["--table", deployment.state_table, "--region", deployment.region]
    where += ["--endpoint-url", deployment.endpoint_url]

    def run(command: str, *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()  # the in-process handlers' log lines, not the CLI's output
        code = main([command, *argv, *where])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    return run


@dataclass(frozen=True)
class FreshRole:
    arn: str
    credentials: Credentials


@pytest.fixture
def fresh_role(local_system: LocalSystem) -> FreshRole:
    """A session of a role made for this test alone, so its per-minute budget is not
    shared with other tests; a policy lets it have `demo-api` tokens with `demo:read`."""
    deployment = local_system.deployment
    name = f"fresh-{uuid.uuid4().hex[:12]}"
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    set_signature_checking(
        deployment.endpoint_url, on=False, admin_token=deployment.emulator_admin_token
    )
    try:
        role = deployment.client("iam").create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust)
        )["Role"]
        session = deployment.client("sts").assume_role(
            RoleArn=role["Arn"], RoleSessionName="fresh-session"
        )["Credentials"]
    finally:
        set_signature_checking(
            deployment.endpoint_url, on=True, admin_token=deployment.emulator_admin_token
        )
    policy = {
        "id": name,
        "effect": "allow",
        "principals": [role["Arn"]],
        "audiences": [DEMO_AUDIENCE],
        "scopes": ["demo:read"],
    }
    PolicyStore(deployment.client("dynamodb"), deployment.policy_table).put(
        Policy.from_document(policy)
    )
    credentials = Credentials(
        session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"]
    )
    return FreshRole(role["Arn"], credentials)
