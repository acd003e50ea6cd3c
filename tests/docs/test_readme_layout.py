"""The README's layout table names every package and module of `tokex` and every folder of
the handlers and the tests, so a module added later is placed in the map (or fails here)."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "layers" / "core" / "tokex"


def _layout() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)^## ", readme, re.M | re.S)
    assert match, "README.md has no Layout section"
    return match.group(1)


def _named(layout: str) -> set[str]:
    return {name.strip() for name in re.findall(r"`([^`]+)`", layout)}


def test_every_tokex_package_and_module_is_named() -> None:
    named = _named(_layout())
    packages = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    missing = sorted((packages | modules) - named)
    assert not missing, f"README.md's layout does not name {missing}"


def test_every_test_folder_is_named() -> None:
    named = _named(_layout())
    folders = {
        f"{p.name}/"
        for p in (REPO_ROOT / "tests").iterdir()
        if p.is_dir() and (p / "__init__.py").is_file()
    }
    mentioned = {n.removeprefix("tests/") for n in named}
    missing = sorted(folders - mentioned)
    assert not missing, f"README.md's layout does not name tests/{missing}"
