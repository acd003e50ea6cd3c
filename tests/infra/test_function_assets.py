"""A function's asset without a synth: its hash and its bytecode (cdk/functions.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdk.functions import (
    TASK_ROOT,
    build_function_asset,
    function_asset_files,
    function_asset_hash,
    function_compiler,
)
from cdk.layer_bundling import BytecodeCompiler

pytestmark = pytest.mark.infra


def test_the_asset_hash_follows_the_files_and_the_bytecode_compiler(tmp_path: Path) -> None:
    handler = tmp_path / "handler.py"
    handler.write_text("def lambda_handler(event, context):\n    return 1\n")
    files = {"tokex_functions/exchange/handler.py": handler}
    sources_only = function_asset_hash(files, None)
    release = BytecodeCompiler("/x/python3.13", "3.13.0", "cpython-313")
    compiled = function_asset_hash(files, release)
    patched = function_asset_hash(files, BytecodeCompiler("/y/python3.13", "3.13.1", "cpython-313"))
    assert len({sources_only, compiled, patched}) == 3
    assert function_asset_hash(files, None) == sources_only  # stable
    handler.write_text("def lambda_handler(event, context):\n    return 2\n")
    assert function_asset_hash(files, None) != sources_only


def test_the_bytecode_names_the_files_where_lambda_puts_them(tmp_path: Path) -> None:
    compiler = function_compiler()
    if compiler is None:
        pytest.skip("no CPython of the runtime's version here: the functions ship sources")
    build_function_asset("exchange", tmp_path)
    for name in function_asset_files("exchange"):
        source = tmp_path / name
        pyc = source.parent / "__pycache__" / f"{source.stem}.{compiler.cache_tag}.pyc"
        # Tracebacks name the file in /var/task, never the build directory.
        data = pyc.read_bytes()
        assert f"{TASK_ROOT}/{name}".encode() in data and str(tmp_path).encode() not in data


def test_the_handlers_come_from_this_checkout_whatever_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layer is built from this checkout's layers/; handlers of another tree (a second
    checkout on the same venv, a non-editable install) must not ship beside it."""
    import importlib.machinery
    import importlib.util

    other = tmp_path / "tokex_functions"
    (other / "exchange").mkdir(parents=True)
    (other / "__init__.py").write_text("")
    (other / "exchange" / "handler.py").write_text("def lambda_handler(e, c):\n    return 0\n")
    spec = importlib.machinery.ModuleSpec("tokex_functions", None, is_package=True)
    spec.submodule_search_locations = [str(other)]
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: spec if name == "tokex_functions" else found(name, *a),
    )
    checkout = Path(__file__).resolve().parents[2] / "functions"
    files = function_asset_files("exchange")
    assert files["tokex_functions/exchange/handler.py"] == checkout / "exchange" / "handler.py"
    assert all(path.is_relative_to(checkout) for path in files.values())
