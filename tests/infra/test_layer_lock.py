"""The layers' committed lock files (cdk/lock.py) and what the layer ships of the `tokex`
package: the same sources and lock make the same layer on any machine, at any date.

Once the dependencies were resolved anew by every cold build, while the asset hash saw only
pyproject's `>=` bounds: one S3 key held different code from one machine to the next, a
warm cache deployed its old resolution for ever, and a dependency's security fix never
shipped on its own. And every stray file beside the package's modules (a `.env`, an
editor's backup) was shipped, and changed the asset. No network here: pip is stubbed where a
build runs (what it would install is checked, not installed)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from cdk.extension_layer import EXTENSION_LOCK, RUNTIME_DISTRIBUTIONS, ExtensionLayerBundling
from cdk.layer_bundling import (
    CORE_LOCK,
    RUNTIME_PROVIDED,
    BundlingError,
    CoreLayerBundling,
    Lock,
    layer_requirements,
    runtime_files,
)
from tests.infra.conftest import REPO_ROOT
from tests.infra.locks import PYJWT_PIN, write_locks

pytestmark = pytest.mark.infra

# What `pip install --require-hashes` needs of each line, stated here independently.
PIN_LINE = re.compile(r"([a-z0-9][a-z0-9.-]*)==(\S+) --hash=sha256:[0-9a-f]{64}")
# Left out of the core layer (cdk/layer_bundling.py TOOLING), stated here independently.
TOOLING = frozenset({"cli", "local", "client", "proxy", "extension", "kong.py"})
# Files a working copy gathers beside the modules, none of which is the package's.
STRAY = (
    ".env",
    "x.py.orig",
    ".x.py.swp",
    "exchange.py~",
    ".#exchange.py",
    "notes.txt",
    "evidence/.sigv4_request.py.swp",
    "evidence/certs/.DS_Store",
    "policy/.env.local",
    ".hypothesis/examples/0a1b/2c3d",
    ".ruff_cache/0.6.9/123456",
    "tokens/.mypy_cache/3.11/x.json",
    "__pycache__/settings.cpython-313.pyc",
    "extension/.x.py.swp",
    "extension/main.py.orig",
)


def pins(lock: Path) -> dict[str, str]:
    """name -> version of every pin of `lock`; fails on a line that is not one."""
    found = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        match = PIN_LINE.fullmatch(line)
        assert match, f"{lock.name}: not `name==version --hash=sha256:...`: {line!r}"
        found[match.group(1)] = match.group(2)
    return found


def core_bundling(root: Path, **options: object) -> CoreLayerBundling:
    return CoreLayerBundling(
        project_root=root,
        python_version="3.13",
        cache_dir=root / "cache",
        find_compiler=lambda version: None,
        **options,  # type: ignore[arg-type]
    )


def no_pip(*args: str, **options: str) -> None:
    raise AssertionError(f"pip must not run: {args}")


@pytest.mark.parametrize("layer", ["core", "extension"])
def test_the_committed_lock_pins_every_requirement_at_a_version_it_allows(layer: str) -> None:
    if layer == "core":
        lock, excluded = REPO_ROOT / CORE_LOCK, RUNTIME_PROVIDED
        requirements = layer_requirements(REPO_ROOT / "pyproject.toml")
    else:
        lock, excluded = REPO_ROOT / EXTENSION_LOCK, RUNTIME_DISTRIBUTIONS
        requirements = ExtensionLayerBundling().requirements
    pinned = pins(lock)
    assert requirements and pinned
    for requirement in map(Requirement, requirements):
        version = pinned.get(requirement.name.lower().replace("_", "-"))
        assert version is not None, f"{lock.name} does not pin {requirement}"
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
    assert not pinned.keys() & excluded, f"{lock.name} pins what the runtime provides"
    assert not pinned.keys() & {"boto3", "botocore", "s3transfer"}
    header = lock.read_text(encoding="utf-8").split("\n\n")[0]
    assert "python -m cdk.lock" in header  # how it was made, how to make it again


def test_the_committed_locks_are_for_the_targets_and_pass_the_builds_check() -> None:
    """The core lock for the functions' runtime on arm64 (cp313 wheels), the extension's
    for every Python runtime it supports, pure Python."""
    from cdk.functions import RUNTIME

    core = CoreLayerBundling(
        project_root=REPO_ROOT,
        python_version=RUNTIME.name.removeprefix("python"),
        find_compiler=lambda version: None,
    )
    assert RUNTIME.name == "python3.13"
    text = (REPO_ROOT / CORE_LOCK).read_text(encoding="utf-8")
    assert "# target: platform=manylinux2014_aarch64 implementation=cp python=3.13\n" in text
    text = (REPO_ROOT / EXTENSION_LOCK).read_text(encoding="utf-8")
    assert "# target: platform=any implementation=py abi=none python=3.11,3.12,3.13\n" in text
    core.check_lock(Lock.read(REPO_ROOT / CORE_LOCK))
    ExtensionLayerBundling().check_lock(Lock.read(REPO_ROOT / EXTENSION_LOCK))


def test_the_inputs_hash_follows_the_locks_bytes(tmp_path: Path) -> None:
    """A new lock is a new asset (the only way new dependency versions ship), and the same
    lock the same asset: the hash is computed without pip."""
    _project(tmp_path)
    core, extension = core_bundling(tmp_path), ExtensionLayerBundling(project_root=tmp_path)
    core._pip = extension._pip = no_pip  # type: ignore[method-assign]
    before = core.inputs_hash(), extension.inputs_hash()
    assert (core.inputs_hash(), extension.inputs_hash()) == before
    newer = "pyjwt==2.10.1 --hash=sha256:" + "1" * 64
    core_lock, _ = write_locks(tmp_path, [newer])
    changed = core.inputs_hash(), extension.inputs_hash()
    assert changed[0] != before[0] and changed[1] != before[1]
    core_lock.write_bytes(core_lock.read_bytes().replace(b"1" * 64, b"2" * 64))  # a hash only
    assert core.inputs_hash() not in (before[0], changed[0])
    write_locks(tmp_path)
    assert (core.inputs_hash(), extension.inputs_hash()) == before


def test_the_build_installs_the_committed_lock_and_resolves_nothing(tmp_path: Path) -> None:
    _project(tmp_path)
    core_lock, extension_lock = write_locks(tmp_path)
    calls: list[tuple[str, ...]] = []
    installed: list[bytes] = []

    def pip(*args: str, **options: str) -> None:
        calls.append(args)
        installed.append(Path(args[args.index("-r") + 1]).read_bytes())

    core, extension = (
        core_bundling(tmp_path),
        ExtensionLayerBundling(project_root=tmp_path, cache_dir=tmp_path / "extension-cache"),
    )
    core._pip = extension._pip = pip  # type: ignore[method-assign]
    core.build_into(tmp_path / "core")
    extension.build_into(tmp_path / "extension", key=extension.inputs_hash())
    assert [c[:3] for c in calls] == [("install", "--no-deps", "--require-hashes")] * 2
    assert not any("--dry-run" in c or "--report" in c for c in calls)
    assert installed == [core_lock.read_bytes(), extension_lock.read_bytes()]
    # The cache entry keeps the lock it was built from, as provenance.
    entry = tmp_path / "cache" / core.inputs_hash()
    assert (entry / "requirements.lock").read_bytes() == core_lock.read_bytes()


@pytest.mark.parametrize(
    ("dependencies", "complaint"),
    [
        # A requirement added to pyproject.toml after the lock was made.
        ('"pyjwt>=2.9", "defusedxml>=0.7.1"', "'defusedxml>=0.7.1' is not pinned"),
        # A bound raised (a security fix) above the locked version.
        ('"pyjwt>=2.10.1"', "'pyjwt>=2.10.1' does not allow the pinned 2.9.0"),
    ],
)
def test_a_stale_lock_fails_the_build_naming_it(
    tmp_path: Path, dependencies: str, complaint: str
) -> None:
    _project(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "tokex"\ndependencies = [{dependencies}, "boto3>=1.35"]\n'
    )
    core = core_bundling(tmp_path)
    core._pip = no_pip  # type: ignore[method-assign]
    with pytest.raises(BundlingError) as failed:
        core.build_into(tmp_path / "out")
    message = str(failed.value)
    assert str(tmp_path / CORE_LOCK) in message and complaint in message
    assert "python -m cdk.lock" in message
    assert not (tmp_path / "out").exists()
    if "pyjwt>=2.10.1" in dependencies:  # the extension's only dependency is pyjwt here
        extension = ExtensionLayerBundling(project_root=tmp_path, cache_dir=tmp_path / "ext")
        extension._pip = no_pip  # type: ignore[method-assign]
        with pytest.raises(BundlingError, match=re.escape(str(tmp_path / EXTENSION_LOCK))):
            extension.build_into(tmp_path / "ext-out", key=extension.inputs_hash())


@pytest.mark.parametrize(
    ("pin_lines", "complaint"),
    [
        ([PYJWT_PIN, "botocore==1.35.0 --hash=sha256:" + "0" * 64], "the Lambda runtime provides"),
        (["pyjwt==2.9.0"], "is not `name==version --hash=sha256:<64 hex>`"),
    ],
)
def test_a_lock_that_pins_the_sdk_or_lacks_a_hash_fails_the_build(
    tmp_path: Path, pin_lines: list[str], complaint: str
) -> None:
    _project(tmp_path)
    write_locks(tmp_path, pin_lines)
    core = core_bundling(tmp_path)
    core._pip = no_pip  # type: ignore[method-assign]
    with pytest.raises(BundlingError, match=re.escape(complaint)) as failed:
        core.build_into(tmp_path / "out")
    assert str(tmp_path / CORE_LOCK) in str(failed.value)


def test_a_missing_lock_fails_clearly(tmp_path: Path) -> None:
    _project(tmp_path)
    (tmp_path / CORE_LOCK).unlink()
    with pytest.raises(BundlingError, match=re.escape("python -m cdk.lock")) as failed:
        core_bundling(tmp_path).inputs_hash()
    assert str(tmp_path / CORE_LOCK) in str(failed.value)


def test_a_lock_for_another_python_fails_the_build(tmp_path: Path) -> None:
    """The runtime moved on (3.13 -> 3.14): a cp313 wheel's hash is no 3.14 wheel's."""
    _project(tmp_path)
    write_locks(tmp_path, python_version="3.12")
    core = core_bundling(tmp_path)
    core._pip = no_pip  # type: ignore[method-assign]
    with pytest.raises(BundlingError, match=re.escape("python=3.12")):
        core.build_into(tmp_path / "out")


def _project(root: Path) -> None:
    package = root / "layers" / "core" / "tokex"
    for relative in ("__init__.py", "extension/__init__.py"):
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text("")
    (package / "extension" / "__main__.py").write_text("import jwt\n")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "tokex"\ndependencies = ["pyjwt>=2.9", "boto3>=1.35"]\n'
    )
    write_locks(root)


def test_stray_files_in_the_package_are_not_shipped_and_do_not_change_the_asset(
    tmp_path: Path,
) -> None:
    """The layer ships the package's modules and the package data pyproject.toml declares
    (`py.typed`, the certificates), as the wheel does: a `.env`, an editor's swap or backup
    file, a tool's cache beside them is neither in the layer nor in its asset hash."""
    package = tmp_path / "layers" / "core" / "tokex"
    shutil.copytree(
        REPO_ROOT / "layers" / "core" / "tokex",
        package,
        ignore=shutil.ignore_patterns("__pycache__", ".*", "*.orig", "*~"),
    )
    shutil.copyfile(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for lock in (CORE_LOCK, EXTENSION_LOCK):
        shutil.copyfile(REPO_ROOT / lock, tmp_path / lock)
    core = core_bundling(tmp_path)
    extension = ExtensionLayerBundling(project_root=tmp_path)
    shipped = runtime_files(package, core.package_data)
    hashes = core.inputs_hash(), extension.inputs_hash()

    for relative in STRAY:
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text("AWS_SECRET_ACCESS_KEY=leaked\n")

    assert runtime_files(package, core.package_data) == shipped
    assert (core.inputs_hash(), ExtensionLayerBundling(project_root=tmp_path).inputs_hash()) == (
        hashes
    )
    # What is shipped, stated independently: every module but the tooling, and the data.
    names = {p.relative_to(package).as_posix() for p in shipped}
    assert "py.typed" in names and "evidence/certs/dsa/us-east-1.pem" in names
    modules = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if p.relative_to(package).parts[0] not in TOOLING and "__pycache__" not in p.parts
        and not p.name.startswith(".")
    }  # fmt: skip
    assert modules and modules <= names
    assert not {n for n in names if n.split("/")[0] in TOOLING}
    # And the layer built from it has none of them.
    core._pip = lambda *args: None  # type: ignore[method-assign]
    core.build_into(tmp_path / "out", key=hashes[0])
    built = {
        p.relative_to(tmp_path / "out" / "python" / "tokex").as_posix()
        for p in (tmp_path / "out" / "python" / "tokex").rglob("*")
        if p.is_file()
    }
    assert built == names


def resolving_pip(versions: dict[str, str], *, sdk: bool = False) -> Callable[..., None]:
    """`_pip` whose dry run reports pyjwt at `versions[python_version]` (the extension
    resolves per Python; the core layer for one) and, with `sdk`, boto3, which the runtime
    provides (as the core layer's resolution has it, through aws-lambda-powertools)."""

    def pip(*args: str, python_version: str = "3.13") -> None:
        assert "--dry-run" in args, f"only the lock command resolves: {args}"
        wheel = {
            "metadata": {"name": "PyJWT", "version": versions[python_version]},
            "download_info": {"archive_info": {"hashes": {"sha256": "a" * 64}}},
        }
        boto3 = {
            "metadata": {"name": "boto3", "version": "1.35.0", "requires_dist": []},
            "download_info": {"archive_info": {"hashes": {"sha256": "b" * 64}}},
        }
        report = Path(args[args.index("--report") + 1])
        installs = [wheel, boto3] if sdk else [wheel]
        report.write_text(json.dumps({"install": installs}), encoding="utf-8")

    return pip


def test_the_lock_command_writes_locks_the_build_accepts_and_checks_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m cdk.lock` (pip's resolution stubbed: what a registry answers is not
    tested here) writes both locks from the bundlers' own resolution; the build accepts
    them; `--check` finds them current, then finds a lock edited since stale."""
    from cdk import lock as lock_command

    _project(tmp_path)
    (tmp_path / CORE_LOCK).unlink()
    (tmp_path / EXTENSION_LOCK).unlink()
    every_python = {"3.11": "2.10.1", "3.12": "2.10.1", "3.13": "2.10.1"}
    core = core_bundling(tmp_path)
    extension = ExtensionLayerBundling(project_root=tmp_path)
    core._pip = resolving_pip(every_python, sdk=True)  # type: ignore[method-assign]
    extension._pip = resolving_pip(every_python)  # type: ignore[method-assign]
    monkeypatch.setattr(lock_command, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(lock_command, "bundlings", lambda: [core, extension])

    assert lock_command.main([]) == 0
    for path in (tmp_path / CORE_LOCK, tmp_path / EXTENSION_LOCK):
        assert pins(path) == {"pyjwt": "2.10.1"}  # boto3 is the runtime's
    core.check_lock(Lock.read(tmp_path / CORE_LOCK))
    extension.check_lock(Lock.read(tmp_path / EXTENSION_LOCK))
    assert lock_command.main(["--check"]) == 0

    (tmp_path / CORE_LOCK).write_text(
        (tmp_path / CORE_LOCK).read_text().replace("2.10.1", "2.9.0"), encoding="utf-8"
    )
    capsys.readouterr()
    assert lock_command.main(["--check"]) == 1
    assert "-pyjwt==2.9.0" in capsys.readouterr().out


def test_one_extension_lock_only_if_every_runtime_resolves_alike(tmp_path: Path) -> None:
    _project(tmp_path)
    extension = ExtensionLayerBundling(project_root=tmp_path)
    versions = {"3.11": "2.10.1", "3.12": "2.10.1", "3.13": "2.11.0"}
    extension._pip = resolving_pip(versions)  # type: ignore[method-assign]
    with pytest.raises(BundlingError, match="one lock cannot serve every runtime"):
        extension.lock_text()
