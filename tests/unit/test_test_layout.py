"""The unit tests stay unit tests (tests/README.md): no module in tests/unit, nor any test
helper it imports, imports moto or boto3 or something that starts an emulator or the local
system. Tests that need those belong in tests/adapters or tests/system. And the system
tests use no in-process moto: that is for tests/adapters."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.unit.test_architecture import imported_names

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "tests" / "unit"
SYSTEM = ROOT / "tests" / "system"
# Top-level packages a unit test must not import, and tokex modules that start servers.
FORBIDDEN_PACKAGES = frozenset({"moto", "boto3"})
FORBIDDEN_MODULES = (
    "tokex.local.runner",  # the whole local system: moto server, HTTP front, IMDS
    "tokex.local.emulator",  # the moto server subprocess
    "tokex.local.front",  # the local HTTP front
    "tests.adapters",
    "tests.system",
    "tests.e2e",
    "tests.interop",
)


def helper_file(name: str) -> Path | None:
    """The file of a `tests.` module `name` imports (a name in a module counts as the
    module), or None."""
    parts = name.split(".")
    while parts:
        candidate = ROOT.joinpath(*parts)
        if candidate.with_suffix(".py").is_file():
            return candidate.with_suffix(".py")
        if (candidate / "__init__.py").is_file():
            return candidate / "__init__.py"
        parts.pop()
    return None


def forbidden_imports(path: Path, seen: set[Path]) -> Iterator[str]:
    """Each forbidden import of `path`, and of the test helpers it imports, in turn."""
    seen.add(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for line, name in imported_names(tree):
        if name.split(".")[0] in FORBIDDEN_PACKAGES or name.startswith(FORBIDDEN_MODULES):
            yield f"{where}:{line}: imports {name}"
        elif name.startswith("tests.") and (helper := helper_file(name)) and helper not in seen:
            yield from forbidden_imports(helper, seen)


def test_unit_tests_touch_no_moto_boto3_or_emulator() -> None:
    seen: set[Path] = set()
    found = [
        problem
        for path in sorted(UNIT.rglob("*.py"))
        if "__pycache__" not in path.parts
        for problem in forbidden_imports(path, seen)
    ]
    assert not found, "\n".join(found)


def test_the_layout_guard_sees_hidden_and_indirect_imports(tmp_path: Path) -> None:
    """Not vacuous: an import inside a function is found, and so is one in a test helper
    that a unit test imports."""
    unit_test = tmp_path / "test_example.py"
    unit_test.write_text(
        "from tests.system.endpoints import exchange\n"
        "def test_x():\n    from moto import mock_aws\n"
    )
    problems = list(forbidden_imports(unit_test, set()))
    assert any(problem.endswith("imports moto.mock_aws") for problem in problems)
    assert any("tests.system.endpoints.exchange" in problem for problem in problems)
    helper = helper_file("tests.system.endpoints.exchange")
    assert helper == ROOT / "tests" / "system" / "endpoints.py"
    assert any("tokex.local.runner" in problem for problem in forbidden_imports(helper, set()))


def test_system_tests_use_no_in_process_moto() -> None:
    """tests/README.md: the system tests run against a moto server with SigV4 checks on;
    moto in process (`mock_aws`, which checks no signature) belongs in tests/adapters."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in sorted(SYSTEM.rglob("*.py"))
        if "__pycache__" not in path.parts
        for line, name in imported_names(ast.parse(path.read_text(encoding="utf-8")))
        if name.split(".")[0] == "moto"
    ]
    assert not found, "\n".join(found)
