"""JWT evidence with `tokex local` as a user runs it (docs/local.md "JWT evidence"): the
env files alone point an unmodified SDK at the local STS-compatible endpoint, and the demo
policies tell the two Lambda functions of one role apart by their function ARN."""

from __future__ import annotations

import json
import subprocess
import sys

import jwt
import pytest

from benchmarks.local_process import without_aws_settings
from tests.e2e.running_local import RunningLocal, load_env_file, run_token
from tokex.local.provision import (
    ACCOUNT_ID,
    DEMO_AUDIENCE,
    DEMO_INSTANCE_ID,
    DEMO_LAMBDA_AUDIENCE,
    lambda_function_arn,
)

pytestmark = pytest.mark.e2e

# What a workload's own code does: a default boto3 client, no endpoint named anywhere.
SDK_SCRIPT = """
import json, sys, boto3
sts = boto3.client("sts")
token = sts.get_web_identity_token(Audience=[sys.argv[1]], SigningAlgorithm="ES384")
print(json.dumps({"arn": sts.get_caller_identity()["Arn"],
                  "token": token["WebIdentityToken"], "endpoint": sts.meta.endpoint_url}))
"""


def sdk_as(local: RunningLocal, env_file: str) -> dict:
    env = without_aws_settings()
    env.update(load_env_file(local.state_dir / env_file))
    result = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT, local.issuer],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_the_env_files_take_an_unmodified_sdk_to_the_local_sts(
    local_process: RunningLocal,
) -> None:
    state = local_process.state_dir
    for name in ("workload.env", "user.env", "lambda-a.env", "lambda-b.env", "eks-token"):
        assert (state / name).stat().st_mode & 0o077 == 0, name

    workload = sdk_as(local_process, "workload.env")
    assert workload["endpoint"] == load_env_file(state / "workload.env")["AWS_ENDPOINT_URL_STS"]
    assert workload["arn"].endswith(f":assumed-role/demo-workload/{DEMO_INSTANCE_ID}")
    claims = jwt.decode(workload["token"], options={"verify_signature": False})
    assert claims["iss"] == f"{local_process.issuer}/_local/oif/{ACCOUNT_ID}"
    assert claims["aud"] == local_process.issuer

    for env_file, function in (("lambda-a.env", "tokex-demo-a"), ("lambda-b.env", "tokex-demo-b")):
        answer = sdk_as(local_process, env_file)
        assert answer["arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-lambda/{function}"
        claims = jwt.decode(answer["token"], options={"verify_signature": False})
        aws = claims["https://sts.amazonaws.com/"]
        assert aws["lambda_source_function_arn"] == lambda_function_arn(function)


@pytest.mark.parametrize(
    ("first", "then", "gone"),
    [
        ("workload.env", "lambda-a.env", "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
        ("workload.env", "user.env", "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
        ("workload.env", "operator.env", "AWS_ENDPOINT_URL_STS"),
        ("operator.env", "workload.env", "AWS_ENDPOINT_URL"),
    ],
)
def test_an_env_file_sourced_after_another_leaves_none_of_its_settings(
    local_process: RunningLocal, first: str, then: str, gone: str
) -> None:
    """Sourced in one shell, as README's block does: the Lambda kept the EC2 demo's IMDS
    endpoint and sent instance evidence; the operator's STS calls went elsewhere."""
    state = local_process.state_dir
    script = f'. "{state / first}"; . "{state / then}"; env'
    shell = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    names = {line.partition("=")[0] for line in shell.stdout.splitlines()}
    assert gone not in names
    assert "TOKEX_ENDPOINT" in names


def test_the_demo_policies_grant_by_evidence_and_by_function(local_process: RunningLocal) -> None:
    state, issuer = local_process.state_dir, local_process.issuer

    def token(env_file: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_token(
            state,
            "--endpoint",
            issuer,
            *args,
            extra_env=load_env_file(state / env_file),
        )

    oif = ("--evidence", "aws-oif")
    assert token("workload.env", *oif, "--audience", DEMO_AUDIENCE).returncode == 0
    assert token("lambda-b.env", *oif, "--audience", DEMO_AUDIENCE).returncode == 0
    granted = token("lambda-a.env", *oif, "--audience", DEMO_LAMBDA_AUDIENCE)
    assert granted.returncode == 0, granted.stderr
    refused = token("lambda-b.env", *oif, "--audience", DEMO_LAMBDA_AUDIENCE)
    assert refused.returncode == 1 and "invalid_target" in refused.stderr

    eks = ("--evidence", "eks", "--token-file", str(state / "eks-token"))
    pod = token("workload.env", *eks, "--audience", DEMO_AUDIENCE, "--json")
    assert pod.returncode == 0, pod.stderr
    assert json.loads(pod.stdout)["scope"] == "demo:read"
    assert "Traceback" not in local_process.console_text()
