"""`tokex local` from a non-editable install (issue 10): a wheel of the checkout installed
into a directory of its own, started from a directory outside the checkout, hands out a
token. The handlers it serves are the installed `tokex_functions`, found through the
import system; nothing in the install may reach back into the checkout.

The wheel is built from a copy of the sources the distribution is made of (so the build
writes nothing into the checkout) with the venv's own setuptools (no network), and
installed with `--no-deps`: its dependencies are the dev venv's, after it on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from tests.e2e.running_local import run_token, start_tokex_local
from tokex.local.provision import DEMO_AUDIENCE

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
# What setup.py and pyproject.toml build the distribution from.
DISTRIBUTION_SOURCES = ("pyproject.toml", "setup.py", "README.md", "layers/core/tokex", "functions")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")

PROBE = """
import tokex, tokex_functions
from tokex.local.functions import functions_dir, handler_path
for path in (tokex.__file__, tokex_functions.__file__, functions_dir(), handler_path("exchange")):
    print(path)
"""


def _run(
    *command: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the wheel was installed into (`--target`)."""
    work = tmp_path_factory.mktemp("non-editable")
    source = work / "source"
    for name in DISTRIBUTION_SOURCES:
        origin = REPO_ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=IGNORED)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / name)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source))
    (wheel,) = (work / "dist").glob("tokex-*.whl")
    target = work / "site"
    _run(*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    return target


def _installed_env(target: Path) -> dict[str, str]:
    # PYTHONPATH comes before site-packages, and the editable install's finder comes after
    # every path entry: `tokex` and `tokex_functions` resolve to the installed copies, in
    # `tokex local` and in the emulator process it starts alike (checked by the probe).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TOKEX_"))}
    env["PYTHONPATH"] = str(target)
    return env


def test_the_install_holds_the_handlers_and_nothing_points_into_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    probe = _run(sys.executable, "-c", PROBE, env=_installed_env(installed), cwd=tmp_path)
    paths = [Path(line) for line in probe.stdout.splitlines()]
    assert len(paths) == 4
    for path in paths:
        assert path.resolve().is_relative_to(installed.resolve()), path


def test_tokex_local_from_the_install_hands_out_a_token(installed: Path, tmp_path: Path) -> None:
    tokex = str(installed / "bin" / "tokex")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = _installed_env(installed)
    running = start_tokex_local(tmp_path / "state", tokex=tokex, env=env, cwd=cwd)
    try:
        result = run_token(
            running.state_dir,
            "--endpoint",
            running.issuer,
            "--audience",
            DEMO_AUDIENCE,
            extra_env={"PYTHONPATH": str(installed)},
            tokex=tokex,
        )
        assert result.returncode == 0, result.stderr + running.console_text()
        token = result.stdout.strip()
        keys = jwt.PyJWKClient(running.issuer + "/.well-known/jwks.json")
        claims = jwt.decode(
            token,
            keys.get_signing_key_from_jwt(token).key,
            algorithms=["RS256"],
            audience=DEMO_AUDIENCE,
            issuer=running.issuer,
        )
        assert claims["aud"] == DEMO_AUDIENCE
    finally:
        assert running.stop() == 0, running.console_text()
    assert "Traceback" not in running.console_text()
    assert not list(cwd.iterdir()), "tokex local wrote into its working directory"
