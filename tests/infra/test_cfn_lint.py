"""cfn-lint on the synthesized templates: clean except W3005.

W3005 ("DependsOn already implied by Ref/GetAtt") is ignored: CDK emits explicit DependsOn
for ordering it guarantees by construction (e.g. a function after its role's policy),
which is harmless redundancy in generated templates, not a defect we can fix in our code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.conftest import Synthesized

pytestmark = pytest.mark.infra


def _cfn_lint() -> str | None:
    beside_python = Path(sys.executable).with_name("cfn-lint")
    return str(beside_python) if beside_python.exists() else shutil.which("cfn-lint")


def test_cfn_lint_is_clean(
    default_synth: Synthesized,
    alternate_synth: Synthesized,
    accounts_synth: Synthesized,
    rotation_synth: Synthesized,
) -> None:
    synths = (default_synth, alternate_synth, accounts_synth, rotation_synth)
    assert_cfn_lint_clean([str(synth.template_path) for synth in synths])


def assert_cfn_lint_clean(templates: list[str]) -> None:
    cfn_lint = _cfn_lint()
    if cfn_lint is None:
        pytest.skip("cfn-lint is not installed (pip install cfn-lint, or the dev extra)")
    result = subprocess.run(
        [cfn_lint, "--ignore-checks", "W3005", "--", *templates],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"cfn-lint:\n{result.stdout}{result.stderr}"
