"""The layer bundler's logic, without pip or a synth."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdk.layer_bundling import (
    RUNTIME_PROVIDED,
    CoreLayerBundling,
    _reachable,
    layer_requirements,
    requirement_name,
)
from tests.infra.conftest import REPO_ROOT

pytestmark = pytest.mark.infra


def test_requirements_come_from_pyproject_without_boto3() -> None:
    requirements = layer_requirements(REPO_ROOT / "pyproject.toml")
    names = {requirement_name(r) for r in requirements}
    assert "aws-lambda-powertools" in names and "cryptography" in names
    assert not names & RUNTIME_PROVIDED


def test_requirement_name_is_canonical() -> None:
    assert requirement_name("aws-lambda-powertools[tracer]>=3.3") == "aws-lambda-powertools"
    assert requirement_name("PyJWT>=2.9 ; python_version>'3'") == "pyjwt"
    assert requirement_name("typing_extensions") == "typing-extensions"


def test_packages_only_needed_by_the_sdk_are_left_out() -> None:
    edges = {
        "aws-lambda-powertools": ["jmespath", "aws-xray-sdk", "boto3"],
        "aws-xray-sdk": ["botocore", "wrapt"],
        "botocore": ["python-dateutil", "jmespath", "urllib3"],
        "python-dateutil": ["six"],
        "cryptography": ["cffi"],
        "cffi": ["pycparser"],
    }
    needed = _reachable(
        roots=["aws-lambda-powertools", "cryptography", "urllib3"],
        edges=edges,
        excluded=RUNTIME_PROVIDED,
    )
    assert needed == {
        "aws-lambda-powertools", "jmespath", "aws-xray-sdk", "wrapt",
        "cryptography", "cffi", "pycparser", "urllib3",
    }  # fmt: skip


def _project(root: Path) -> Path:
    package = root / "layers" / "core" / "tokex"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "tokex"\ndependencies = ["pyjwt>=2.9", "boto3>=1.35"]\n'
    )
    return package


def test_inputs_hash_follows_sources_and_ignores_bytecode(tmp_path: Path) -> None:
    package = _project(tmp_path)
    bundling = CoreLayerBundling(project_root=tmp_path, python_version="3.13", cache_dir=tmp_path)
    first = bundling.inputs_hash()
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert bundling.inputs_hash() == first
    (package / "__init__.py").write_text("x = 2\n")
    assert bundling.inputs_hash() != first
    other = CoreLayerBundling(project_root=tmp_path, python_version="3.12", cache_dir=tmp_path)
    assert other.inputs_hash() != bundling.inputs_hash()


def test_cached_bundle_is_reused_without_pip(tmp_path: Path) -> None:
    _project(tmp_path / "project")
    cache = tmp_path / "cache"
    bundling = CoreLayerBundling(
        project_root=tmp_path / "project", python_version="3.13", cache_dir=cache
    )
    cached = cache / bundling.inputs_hash() / "python"
    cached.mkdir(parents=True)
    (cached / "marker.txt").write_text("from cache")

    def no_pip(*args: str) -> None:
        raise AssertionError("pip must not run when the bundle is cached")

    bundling._pip = no_pip  # type: ignore[method-assign]
    out = tmp_path / "out"
    bundling.build_into(out)
    assert (out / "python" / "marker.txt").read_text() == "from cache"
