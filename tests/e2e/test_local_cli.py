"""`tokex local` as a subprocess, the demo workload's `tokex token`, and two independent
JWT libraries that see nothing but the served JWKS."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from benchmarks.local_process import READY_LINE, without_aws_settings
from tests.e2e.running_local import (
    TOKEX,
    RunningLocal,
    load_env_file,
    run_token,
    start_tokex_local,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tokex_local(local_process: RunningLocal) -> tuple[str, Path]:
    return local_process.issuer, local_process.state_dir


def test_token_from_tokex_local_verifies_with_two_independent_libraries(tokex_local):
    issuer, state_dir = tokex_local
    assert (state_dir / "workload.env").stat().st_mode & 0o077 == 0  # credentials: 0600
    result = run_token(
        state_dir, "--endpoint", issuer, "--audience", "demo-api", "--scope", "demo:read"
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    jwks = json.loads(urllib.request.urlopen(issuer + "/.well-known/jwks.json").read())

    # pyjwt
    key = jwt.PyJWKClient(issuer + "/.well-known/jwks.json").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="demo-api", issuer=issuer)
    assert claims["scope"] == "demo:read"
    assert claims["sub"] == "arn:aws:iam::123456789012:role/demo-workload"

    # jwcrypto, from the same served key set
    keyset = jwcrypto_jwk.JWKSet.from_json(json.dumps(jwks))
    verified = jwcrypto_jwt.JWT(
        jwt=token,
        key=keyset,
        algs=["RS256"],
        check_claims={"iss": issuer, "aud": "demo-api", "exp": None},
    )
    assert json.loads(verified.claims)["jti"] == claims["jti"]


def test_token_json_output_and_refusal_exit_code(tokex_local):
    issuer, state_dir = tokex_local
    result = run_token(state_dir, "--endpoint", issuer, "--audience", "demo-api", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900 and 0 < body["expires_in"] <= 900
    assert body["scope"] == "demo:read demo:write"

    refused = run_token(state_dir, "--endpoint", issuer, "--audience", "not-granted-api")
    assert refused.returncode != 0
    assert refused.stdout == ""
    assert "invalid_target" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_instance_identity_auto_reads_the_emulated_imds(tokex_local):
    issuer, state_dir = tokex_local
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT" in load_env_file(state_dir / "workload.env")
    result = run_token(
        state_dir,
        "--endpoint",
        issuer,
        "--audience",
        "demo-instance-api",
        "--instance-identity",
        "auto",
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    key = jwt.PyJWKClient(issuer + "/.well-known/jwks.json").get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token, key.key, algorithms=["RS256"], audience="demo-instance-api", issuer=issuer
    )
    assert claims["aws"]["instance"]["id"] == "i-0123456789abcdef0"

    without = run_token(
        state_dir,
        "--endpoint",
        issuer,
        "--audience",
        "demo-instance-api",
        "--instance-identity",
        "off",
    )
    assert without.returncode != 0
    assert "invalid_target" in without.stderr


def test_instance_identity_off_ec2(tokex_local, refused_port):
    issuer, state_dir = tokex_local
    closed = f"http://127.0.0.1:{refused_port}"
    common = ("--endpoint", issuer, "--audience", "demo-api")
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": closed}
    auto = run_token(state_dir, *common, "--instance-identity", "auto", "-v", extra_env=env)
    assert auto.returncode == 0, auto.stderr
    assert "no instance identity evidence" in auto.stderr
    required = run_token(state_dir, *common, "--instance-identity", "on", extra_env=env)
    assert required.returncode != 0
    assert "--instance-identity on" in required.stderr and required.stdout == ""


def test_operator_manages_policies_of_the_local_system(tokex_local):
    _, state_dir = tokex_local
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TOKEX_"))}
    env.update(load_env_file(state_dir / "operator.env"))
    listed = subprocess.run(
        [TOKEX, "policy", "list", "--table", "tokex-policies", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    ids = {policy["id"] for policy in json.loads(listed.stdout)["policies"]}
    assert {"demo-workload", "demo-instance"} <= ids


def test_the_emulators_own_api_is_closed_to_other_local_processes(tokex_local):
    """`tokex local`'s emulator is on a loopback port any local process can reach: moto's
    own API (switch SigV4 checks off, dump every key it holds) needs a token that only
    the process holds."""
    _, state_dir = tokex_local
    emulator = load_env_file(state_dir / "operator.env")["AWS_ENDPOINT_URL"]
    for path, data in [("/moto-api/data.json", None), ("/moto-api/reset-auth", b"inf")]:
        request = urllib.request.Request(emulator + path, data=data)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403, path


def banner_block(running: RunningLocal, heading: str) -> str:
    """The banner's command lines under `heading` ("Try it:"), as a user copies them: up
    to the blank line, without the banner's indent."""
    deadline = time.monotonic() + 30
    while "/introspect\n" not in running.console_text():  # the banner's last line
        assert time.monotonic() < deadline, running.console_text()
        time.sleep(0.1)
    banner = running.console_text().splitlines()
    lines = []
    for line in banner[banner.index(heading) + 1 :]:
        if not line.startswith("  "):
            break
        lines.append(line[2:])
    assert lines, running.console_text()
    return "\n".join(lines)


def shell_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A fresh shell's environment (no AWS or tokex settings), with `tokex` on PATH and a
    `curl` that records its arguments, one a line, in the path returned, then runs."""
    recorded = tmp_path / "curl-arguments"
    shims = tmp_path / "bin"
    shims.mkdir()
    real_curl = shutil.which("curl")
    assert real_curl is not None
    (shims / "curl").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >> {recorded}\nexec {real_curl} "$@"\n'
    )
    (shims / "curl").chmod(0o755)
    env = without_aws_settings()
    env["PATH"] = os.pathsep.join([str(shims), str(Path(TOKEX).parent), env["PATH"]])
    return env, recorded


def run_shell(shell: str, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shell, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_banners_introspection_lines_keep_the_secret_and_token_off_command_lines(
    local_process: RunningLocal, tmp_path: Path
) -> None:
    """The banner's "Introspect a token" lines, run alone in a fresh `sh -e` as printed
    (they source what they need): they answer the token active, and no process they
    start has the client's secret or the token in its arguments (which any local user
    reads in `ps`): `curl` here records its own."""
    env, recorded = shell_env(tmp_path)
    script = banner_block(local_process, "Introspect a token (RFC 7662):")
    result = run_shell("sh", "set -e\n" + script, env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["active"], answer["aud"]) == (True, "demo-api")
    secret = load_env_file(local_process.state_dir / "introspection-client.env")[
        "TOKEX_INTROSPECTION_CLIENT_SECRET"
    ]
    arguments = recorded.read_text()
    assert "-K" in arguments.split("\n")
    assert secret not in arguments and "eyJ" not in arguments


def test_the_banners_lines_run_verbatim_from_a_state_dir_with_a_space_and_a_quote(
    tmp_path: Path,
) -> None:
    """A state directory's path with a space (and a `'`) in it: the banner's lines ran
    `. /tmp/it's a dir/state/workload.env` (no such file); they quote every path, so
    bash, sh (dash) and zsh, where installed, run them as printed. And the introspection
    lines stop at a token command that fails, where `curl` answered `{"active":false}` as
    if it were tokex's verdict on a token."""
    env, recorded = shell_env(tmp_path)
    running = start_tokex_local(tmp_path / "it's a dir" / "state", env=without_aws_settings())
    try:
        try_it = banner_block(running, "Try it:")
        introspect = banner_block(running, "Introspect a token (RFC 7662):")
        for shell in [shell for shell in ("bash", "sh", "zsh") if shutil.which(shell)]:
            result = run_shell(shell, "set -e\n" + try_it, env)
            assert result.returncode == 0, (shell, result.stderr)
            tokens = result.stdout.split()
            assert len(tokens) == 4 and all(t.startswith("eyJ") for t in tokens), result
            result = run_shell(shell, "set -e\n" + introspect, env)
            assert result.returncode == 0, (shell, result.stderr)
            assert json.loads(result.stdout)["active"] is True
    finally:
        assert running.stop() == 0, running.console_text()
    recorded.unlink()
    # Stopped: the token command fails, and the lines stop there even without `set -e`
    # (as typed into an interactive shell).
    failed = run_shell("sh", introspect, env)
    assert failed.returncode != 0
    assert "tokex token" in failed.stderr and failed.stdout == ""
    assert not recorded.exists(), "curl ran without a token"


def test_sigterm_while_it_starts_stops_it_and_says_so(tmp_path: Path) -> None:
    """A supervisor's SIGTERM during the seconds of start-up killed the process with no
    word (exit 143) and its servers mid-way; it now stops as Ctrl-C does."""
    port = free_port()
    state_dir = tmp_path / "state"
    process = subprocess.Popen(
        [TOKEX, "local", "--port", str(port), "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=without_aws_settings(),
    )
    try:
        deadline = time.monotonic() + 60
        while not (state_dir / ".lock").exists():  # taken first thing: it is starting
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert READY_LINE not in output, "it had started: the signal came too late to test"
    assert process.returncode == 130, output
    assert output.rstrip().endswith("tokex local: interrupted"), output
    with pytest.raises(OSError):  # nothing of it listens
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_second_signal_while_it_stops_is_ignored(tmp_path: Path) -> None:
    """A supervisor that sends SIGTERM again (or a user's second Ctrl-C) while tokex local
    stops, about a second, cut the stop short: exit 130 and no 'tokex local stopped'."""
    running = start_tokex_local(tmp_path / "state", env=without_aws_settings())
    running.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # into its stop: nothing is timed, the signal only has to land there
    with contextlib.suppress(ProcessLookupError):
        running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=60) == 0, running.console_text()
    for _ in range(200):  # the console's reader thread may not have its last line yet
        if "tokex local stopped" in running.console_text():
            break
        time.sleep(0.05)
    assert "tokex local stopped" in running.console_text()
