"""`.ci/run` builds its environment with exactly the README's setup command and runs exactly
its test command; whatever else it runs is listed in the README under "What CI also runs"."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
CI_RUN = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _section(title: str) -> str:
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", README, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _first_block(text: str) -> list[str]:
    match = re.search(r"```sh\n(.*?)```", text, re.S)
    assert match
    return [line for line in match.group(1).splitlines() if line.strip()]


def _ci_commands() -> list[str]:
    lines = [line.strip() for line in CI_RUN.splitlines()]
    return [line for line in lines if line and not line.startswith("#")][2:]  # after set/cd


def test_ci_uses_the_readme_setup_and_test_commands_verbatim() -> None:
    two_commands = _section("Two commands")
    setup = _first_block(two_commands)
    assert len(setup) == 1, "the README's setup stays one command line"
    commands = _ci_commands()
    assert commands[0] == setup[0]
    assert commands[-1] == "pytest"
    assert "pytest" in two_commands
    assert not any("--upgrade pip" in c or "-U pip" in c for c in commands)


def test_every_other_ci_step_is_listed_in_the_readme() -> None:
    listed = _section("What CI also runs")
    for command in _ci_commands()[1:-1]:
        assert f"`{command}`" in listed, f".ci/run runs {command!r}, the README does not say so"
