"""The layer bundler's logic, without pip or a synth of its own (the umask test reuses the
session's synth, whose extension bundle is then cached)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cdk.layer_bundling import (
    COMPILER_ENV,
    RUNTIME_PROVIDED,
    BytecodeCompiler,
    CoreLayerBundling,
    _reachable,
    find_bytecode_compiler,
    layer_requirements,
    probe_interpreter,
    requirement_name,
)
from tests.infra.conftest import REPO_ROOT, Synthesized
from tests.infra.locks import write_locks

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
    write_locks(root)
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


def test_inputs_hash_says_whether_and_by_which_python_bytecode_was_compiled(
    tmp_path: Path,
) -> None:
    _project(tmp_path)

    def bundling(compiler: BytecodeCompiler | None) -> CoreLayerBundling:
        return CoreLayerBundling(
            project_root=tmp_path,
            python_version="3.13",
            cache_dir=tmp_path,
            find_compiler=lambda version: compiler,
        )

    sources_only = bundling(None).inputs_hash()
    compiled = bundling(BytecodeCompiler("/x/python3.13", "3.13.0", "cpython-313")).inputs_hash()
    patched = bundling(BytecodeCompiler("/y/python3.13", "3.13.1", "cpython-313")).inputs_hash()
    assert len({sources_only, compiled, patched}) == 3


def test_an_interpreter_that_does_not_run_is_no_compiler(tmp_path: Path) -> None:
    """pyenv's `python3.13` shim exits 127 when 3.13 is not the selected version."""
    shim = tmp_path / "python3.13"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.13: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    assert probe_interpreter(str(shim)) is None
    assert probe_interpreter(str(tmp_path / "missing")) is None


def test_a_named_interpreter_of_another_version_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(COMPILER_ENV, sys.executable)
    with pytest.raises(RuntimeError, match=COMPILER_ENV):
        find_bytecode_compiler("2.7")


def test_the_runtime_python_compiles_unchecked_hash_bytecode(tmp_path: Path) -> None:
    compiler = find_bytecode_compiler("3.13")
    if compiler is None:
        pytest.skip("no CPython 3.13 on this machine")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    compiler.compile_tree(tmp_path)
    pyc = tmp_path / "pkg" / "__pycache__" / "mod.cpython-313.pyc"
    data = pyc.read_bytes()
    assert int.from_bytes(data[4:8], "little") == 0b01  # PEP 552: hash-based, unchecked
    # Tracebacks name the file where Lambda mounts the layer, not the build directory.
    assert b"/opt/python/pkg/mod.py" in data and str(tmp_path).encode() not in data


def test_a_failed_compilation_fails_the_bundle(tmp_path: Path) -> None:
    compiler = find_bytecode_compiler("3.13")
    if compiler is None:
        pytest.skip("no CPython 3.13 on this machine")
    (tmp_path / "broken.py").write_text("def f(:\n")
    with pytest.raises(RuntimeError, match="bytecode failed"):
        compiler.compile_tree(tmp_path)


def test_assets_built_under_a_strict_umask_are_readable_by_lambda(
    tmp_path: Path, default_synth: Synthesized
) -> None:
    """Lambda runs the function as a user who owns none of the asset's files, and the
    asset's zip keeps their modes: built under umask 077 (a hardened CI runner), every
    module was 600 and the function could not import its own code."""
    from cdk.extension_layer import ExtensionLayerBundling
    from cdk.functions import build_function_asset

    _project(tmp_path / "project")
    cache = tmp_path / "cache"
    core = CoreLayerBundling(
        project_root=tmp_path / "project", python_version="3.13", cache_dir=cache
    )
    cached = cache / core.inputs_hash() / "python" / "pkg"
    cached.mkdir(parents=True)
    (cached / "module.py").write_text("x = 1\n")
    extension = ExtensionLayerBundling()
    previous = os.umask(0o077)
    try:
        (cached / "module.py").chmod(0o600)  # as a cache built under that umask holds it
        core.build_into(tmp_path / "core")
        build_function_asset("exchange", tmp_path / "function")
        extension.build_into(tmp_path / "extension", key=extension.inputs_hash())
    finally:
        os.umask(previous)
    for root in ("core", "function", "extension"):
        for path in (tmp_path / root).rglob("*"):
            mode = path.stat().st_mode & 0o777
            assert mode in ((0o755,) if path.is_dir() else (0o644, 0o755)), (path, oct(mode))
    launcher = tmp_path / "extension" / "extensions" / "tokex-proxy"
    assert launcher.stat().st_mode & 0o777 == 0o755
