"""The CDK app as docs/deploy.md runs it: `python app.py` and the CDK CLI, cold.

- The layer is bundled from an empty cache by the pip of the venv the README's setup
  command made (no pip upgrade): pip 23.0.1-23.2.1 refuse `--platform` without `--target`.
- `python app.py` writes `./cdk.out` unless the CLI (or the user) set `CDK_OUTDIR`.
- `TOKEX_SYNTH_WITHOUT_BUNDLING=1` skips the layer under the CDK CLI too, and the assets it
  leaves unbuilt never take a built asset's S3 key.
- An invalid context value ends the synth with one line naming the key, no traceback; a
  layer that cannot be built ends it with the reason (pip's own words), no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.conftest import REPO_ROOT, Synthesized

pytestmark = pytest.mark.infra

# The CDK CLI release docs/deploy.md was checked with; `npx --yes aws-cdk@2` takes the
# newest 2.x, which is what a user gets.
CDK_CLI = "aws-cdk@2"


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No pip index, an empty bundle cache: a synth that bundled would fail or leave a cache."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "TOKEX_LAYER_CACHE_DIR": str(tmp_path / "empty-cache"),
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_NO_INDEX": "1",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "TOKEX_SYNTH_WITHOUT_BUNDLING": "1",
    }


def _run_app(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python app.py`, as docs/deploy.md runs it."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "app.py")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _built_asset_keys(template: dict) -> list[str]:
    """The S3 keys of the assets tokex builds itself: its layers and its functions."""
    keys = []
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::LayerVersion":
            keys.append(properties["Content"]["S3Key"])
        elif str(properties.get("Handler", "")).startswith("tokex_functions."):
            keys.append(properties["Code"]["S3Key"])
    return keys


def _layer_count(template_path: Path) -> int:
    template = json.loads(template_path.read_text(encoding="utf-8"))
    return sum(r["Type"] == "AWS::Lambda::LayerVersion" for r in template["Resources"].values())


def test_layer_was_bundled_cold_by_the_venv_pip(
    default_synth: Synthesized, cold_layer_cache: Path
) -> None:
    # The session's cache started empty: the bundle in it was made by pip in this run.
    bundles = [p for p in cold_layer_cache.iterdir() if (p / "python").is_dir()]
    assert len(bundles) == 1
    assert (bundles[0] / "requirements.lock").read_text().count("--hash=sha256:") >= 5
    assert (default_synth.layer_dir() / "python" / "tokex" / "exchange.py").is_file()


def test_python_app_writes_cdk_out_in_the_working_directory(
    tmp_path: Path, default_synth: Synthesized
) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "app.py")],
        cwd=tmp_path,
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    template = tmp_path / "cdk.out" / "Tokex.template.json"
    assert _layer_count(template) == 2  # the core layer and the proxy extension layer
    assert "cdk.out/Tokex.template.json" in result.stderr
    assert not (tmp_path / "empty-cache").exists()  # pip never ran
    # Unbundled, an asset is its bare sources: a deploy from such a synth must not leave
    # them under the key a real build uploads to (the next deploy would find them there
    # and skip its upload).
    unbundled = _built_asset_keys(json.loads(template.read_text(encoding="utf-8")))
    built = _built_asset_keys(default_synth.raw)
    assert len(unbundled) == len(built) >= 5  # two layers, three functions
    assert not set(unbundled) & set(built)


def test_cdk_outdir_wins_over_the_default(tmp_path: Path) -> None:
    env = {**_offline_env(tmp_path), "CDK_OUTDIR": str(tmp_path / "elsewhere")}
    result = _run_app(REPO_ROOT, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _layer_count(tmp_path / "elsewhere" / "Tokex.template.json") == 2


@pytest.mark.parametrize(
    ("context", "line"),
    [
        ({"ttlCapSeconds": 5}, "ttlCapSeconds must be between 60 and 43200"),
        (
            # As `-c trustedIssuers='[...]'` passes it: a string.
            {"trustedIssuers": '[{"kind": "aws-oif", "issuer": "https://sts.example.com"}]'},
            "trustedIssuers[0].account is required (a string)",
        ),
        ({"regions": "us-east-1,europe"}, "regions: 'europe' is not a region name"),
        (
            {
                "publishedKeyArns": "arn:aws-cn:kms:us-east-1:123456789012:key/"
                "1234abcd-12ab-34cd-56ef-1234567890ab"
            },
            "publishedKeyArns: 'arn:aws-cn:kms:us-east-1:123456789012:key/"
            "1234abcd-12ab-34cd-56ef-1234567890ab' is an aws-cn ARN, but its Region,"
            " us-east-1, is in the aws partition",
        ),
    ],
)
def test_invalid_context_is_one_line_naming_the_key(
    tmp_path: Path, context: dict[str, object], line: str
) -> None:
    env = {**_offline_env(tmp_path), "CDK_CONTEXT_JSON": json.dumps(context)}
    result = _run_app(tmp_path, env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"tokex: invalid CDK context: {line}"]
    assert not (tmp_path / "cdk.out" / "Tokex.template.json").exists()


@pytest.mark.parametrize(
    ("region", "partition"), [("us-gov-west-1", "aws-us-gov"), ("cn-north-1", "aws-cn")]
)
def test_a_cli_region_outside_the_aws_partition_is_one_line(
    tmp_path: Path, region: str, partition: str
) -> None:
    """The CLI's Region (CDK_DEFAULT_REGION, from its profile) in GovCloud or China: synth
    wrote a template with a CloudFront distribution, which only the deploy refused."""
    env = {**_offline_env(tmp_path), "CDK_DEFAULT_REGION": region}
    result = _run_app(tmp_path, env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tokex: invalid CDK context: the CDK CLI's Region, {region}, is in the {partition}"
        " partition, not aws: the stack's CloudFront distribution deploys in aws only; deploy"
        " tokex in the aws partition, and serve aws-cn and aws-us-gov workloads from there"
        " with the stsPartitions context"
    ]
    assert not (tmp_path / "cdk.out" / "Tokex.template.json").exists()


def test_a_cli_region_of_the_aws_partition_serving_the_others_synthesizes(tmp_path: Path) -> None:
    env = {
        **_offline_env(tmp_path),
        "CDK_DEFAULT_REGION": "eu-west-1",
        "CDK_CONTEXT_JSON": json.dumps({"stsPartitions": "aws,aws-cn,aws-us-gov"}),
    }
    result = _run_app(tmp_path, env)
    assert result.returncode == 0, result.stderr[-2000:]
    template = json.loads((tmp_path / "cdk.out" / "Tokex.template.json").read_text())
    types = [resource["Type"] for resource in template["Resources"].values()]
    assert types.count("AWS::CloudFront::Distribution") == 1


def test_a_layer_that_cannot_be_built_is_reported_without_a_traceback(tmp_path: Path) -> None:
    """A bytecode compiler that does not run, raised as the app builds the layer."""
    env = {**_offline_env(tmp_path), "TOKEX_LAYER_PYTHON": str(tmp_path / "no-python")}
    del env["TOKEX_SYNTH_WITHOUT_BUNDLING"]
    result = _run_app(tmp_path, env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"tokex: cannot build a Lambda layer: TOKEX_LAYER_PYTHON={tmp_path / 'no-python'}"
        " does not run; the layer needs CPython 3.13"
    )


def test_pip_failing_in_cdk_bundling_is_reported_without_a_traceback(tmp_path: Path) -> None:
    """pip with no index and an empty cache: the error is raised in CDK's bundling
    callback and comes back through jsii; pip's own words are what the operator needs."""
    env = _offline_env(tmp_path)
    del env["TOKEX_SYNTH_WITHOUT_BUNDLING"]
    result = _run_app(tmp_path, env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "JavaScriptError" not in result.stderr
    report = result.stderr[result.stderr.index("tokex: cannot build a Lambda layer: ") :]
    assert report.startswith("tokex: cannot build a Lambda layer: pip failed (1) bundling the")
    assert "No matching distribution found" in report


def test_cdk_cli_offline_synth_skips_bundling(tmp_path: Path) -> None:
    npx = shutil.which("npx")
    if npx is None:
        if os.environ.get("CI") == "true":
            pytest.fail("npx (Node.js) is required in CI for the CDK CLI test")
        pytest.skip("npx (Node.js) is not installed")
    out = tmp_path / "out"
    env = {**_offline_env(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # No terminal here: without --yes, npx stops at "missing packages and no YES option".
    result = subprocess.run(
        [npx, "--yes", CDK_CLI, "synth", "--quiet", "--output", str(out)],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert _layer_count(out / "Tokex.template.json") == 2
    # The app honoured the CLI's bundling context override and its --output (CDK_OUTDIR).
    assert not (tmp_path / "empty-cache").exists()
