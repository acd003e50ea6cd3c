"""`TOKEX_SYNTH_WITHOUT_BUNDLING=1 python app.py`: a synth with no network at all (the
layer bundling skipped through CDK's own `aws:cdk:bundling-stacks` context)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.infra.conftest import REPO_ROOT

pytestmark = pytest.mark.infra


def test_synth_without_pip_or_network(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin:" + str(REPO_ROOT / ".venv" / "bin"),
        "HOME": str(tmp_path),
        # An empty bundle cache, and an index no pip could reach: a bundling run would fail.
        "TOKEX_LAYER_CACHE_DIR": str(tmp_path / "empty-cache"),
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_NO_INDEX": "1",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "TOKEX_SYNTH_WITHOUT_BUNDLING": "1",
        "CDK_OUTDIR": str(tmp_path / "out"),
    }
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    template = json.loads((tmp_path / "out" / "Tokex.template.json").read_text())
    assert any(r["Type"] == "AWS::Lambda::LayerVersion" for r in template["Resources"].values())
    assert not (tmp_path / "empty-cache").exists()  # pip never ran
