"""The core-library Lambda layer, bundled locally with pip (no Docker engine needed).

`pip install --platform manylinux2014_aarch64 --only-binary=:all:` fetches the wheels built
for the Lambda architecture whatever machine synthesizes, so nothing is compiled here.
The AWS SDK (boto3, botocore, s3transfer) is left to the Lambda runtime, which ships it.
The layer is the runtime only: the tooling in the `tokex` package (`TOOLING`: the CLI,
local mode, the Kong generator, the workload client) stays in the installable package
and out of the layer, and nothing in the runtime imports it (tests/infra/test_layer.py).

A finished bundle is kept in a cache directory keyed by a hash of everything that goes
into it (the `tokex` sources, the dependency list, the target platform and this module's
bundling recipe), so synthesizing again - into any `cdk.out` - copies a directory instead
of running pip. The asset hash is derived from the same inputs, so CDK also skips the
bundler entirely when the asset is already staged in the output directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

# Bump when the recipe below changes in a way the inputs hash cannot see.
RECIPE_VERSION = "3"
PLATFORM = "manylinux2014_aarch64"
# Provided by every Lambda Python runtime; bundling them would only shadow the runtime's
# copy and add ~25 MB.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer"})
PACKAGE_NAME = "tokex"
CACHE_ENTRIES_KEPT = 4
# Top-level entries of the `tokex` package that are tooling, not runtime.
TOOLING = frozenset({"cli", "local", "client", "kong.py"})
_IGNORED_PARTS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache"})
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical_name(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """Canonical project name of a PEP 508 requirement string."""
    match = _REQ_NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return canonical_name(match.group(1))


def layer_requirements(pyproject: Path) -> list[str]:
    """The core library's runtime dependencies, minus what the Lambda runtime provides."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [r for r in project["dependencies"] if requirement_name(r) not in RUNTIME_PROVIDED]


def is_runtime_file(relative: Path) -> bool:
    """Whether a file of the `tokex` package (path relative to it) goes in the layer."""
    return (
        relative.parts[0] not in TOOLING
        and not _IGNORED_PARTS.intersection(relative.parts)
        and relative.suffix not in (".pyc", ".pyo")
    )


def runtime_files(package_dir: Path) -> list[Path]:
    """The files of the `tokex` package that the layer ships."""
    return sorted(
        path
        for path in package_dir.rglob("*")
        if path.is_file() and is_runtime_file(path.relative_to(package_dir))
    )


class CoreLayerBundling:
    """Builds `<out>/python/...` for the layer; see the module docstring."""

    def __init__(
        self,
        *,
        project_root: Path,
        python_version: str,
        cache_dir: Path | None = None,
    ) -> None:
        self.project_root = project_root.resolve()
        self.package_dir = self.project_root / "layers" / "core" / PACKAGE_NAME
        self.pyproject = self.project_root / "pyproject.toml"
        self.python_version = python_version
        self.requirements = layer_requirements(self.pyproject)
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()

    def inputs_hash(self) -> str:
        digest = hashlib.sha256()
        header = {
            "recipe": RECIPE_VERSION,
            "platform": PLATFORM,
            "python": self.python_version,
            "requirements": self.requirements,
            "excluded": sorted(RUNTIME_PROVIDED),
        }
        digest.update(json.dumps(header, sort_keys=True).encode())
        for path in runtime_files(self.package_dir):
            relative = path.relative_to(self.package_dir).as_posix()
            digest.update(b"\0" + relative.encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    # --- building -------------------------------------------------------------------

    def build_into(self, output_dir: Path) -> None:
        """Fill `output_dir` (empty or missing) with the layer content, using the cache."""
        key = self.inputs_hash()
        cached = self.cache_dir / key
        if not (cached / "python").is_dir():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f"{key[:12]}-", dir=self.cache_dir))
            try:
                self._build(staging)
                try:
                    # Atomic publish; a concurrent synth that won the race is just as good.
                    staging.rename(cached)
                except OSError:
                    if not (cached / "python").is_dir():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._prune(keep=key)
        # Only `python/` goes in the layer; the lock file stays in the cache as provenance.
        shutil.copytree(cached / "python", output_dir / "python", dirs_exist_ok=True)

    def _prune(self, *, keep: str) -> None:
        """Keep the newest few bundles (each edit of the core makes a new one)."""
        entries = sorted(
            (p for p in self.cache_dir.iterdir() if p.is_dir() and p.name != keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for stale in entries[CACHE_ENTRIES_KEPT - 1 :]:
            shutil.rmtree(stale, ignore_errors=True)

    def _build(self, root: Path) -> None:
        site = root / "python"
        pins = self._resolve(root / "report.json")
        lock = root / "requirements.lock"
        lock.write_text("".join(f"{pin}\n" for pin in pins), encoding="utf-8")
        # Second pass: exactly the resolved wheels (hash-checked), no resolver, so nothing
        # the runtime provides can sneak back in as a dependency of a dependency.
        self._pip(
            "install", "--no-deps", "--require-hashes", "--target", str(site), "-r", str(lock)
        )
        for path in runtime_files(self.package_dir):
            target = site / PACKAGE_NAME / path.relative_to(self.package_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        # Console scripts from --target installs are useless in a layer.
        shutil.rmtree(site / "bin", ignore_errors=True)
        leaked = {canonical_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
        leaked &= RUNTIME_PROVIDED
        if leaked:
            raise RuntimeError(f"layer bundle unexpectedly contains {sorted(leaked)}")
        (root / "report.json").unlink()

    def _resolve(self, report: Path) -> list[str]:
        """Resolve the full dependency set for the target, then drop what the runtime has.

        Returns `name==version --hash=sha256:...` lines for the wheels to install.
        """
        # pip before 23.3 refuses the platform options without `--target`, even on a dry
        # run (`Can not use any platform or abi specific options unless installing via
        # '--target'`); a dry run writes nothing there, so naming a scratch directory makes
        # the same command work with every pip from 23.0.1 (Debian 12's) on.
        self._pip(
            "install",
            "--dry-run",
            "--ignore-installed",
            "--target",
            str(report.parent / "dry-run-target"),
            "--report",
            str(report),
            *self.requirements,
        )
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
        by_name = {canonical_name(item["metadata"]["name"]): item for item in installs}
        needed = _reachable(
            roots=[requirement_name(r) for r in self.requirements],
            edges={
                name: [requirement_name(d) for d in item["metadata"].get("requires_dist", [])]
                for name, item in by_name.items()
            },
            excluded=RUNTIME_PROVIDED,
        )
        pins = []
        for name in sorted(needed & by_name.keys()):
            item = by_name[name]
            sha256 = item["download_info"]["archive_info"]["hashes"]["sha256"]
            pins.append(
                f"{item['metadata']['name']}=={item['metadata']['version']} --hash=sha256:{sha256}"
            )
        return pins

    def _pip(self, *args: str) -> None:
        command = [
            sys.executable, "-m", "pip", *args[:1],
            "--disable-pip-version-check", "--no-input", "--quiet", "--no-compile",
            "--platform", PLATFORM, "--implementation", "cp",
            "--python-version", self.python_version, "--only-binary=:all:",
            *args[1:],
        ]  # fmt: skip
        result = subprocess.run(  # noqa: S603 - fixed argv, our own interpreter
            command, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pip failed ({result.returncode}) bundling the tokex layer:\n"
                f"{' '.join(command)}\n{result.stdout}{result.stderr}"
            )


def _reachable(
    *, roots: Iterable[str], edges: dict[str, list[str]], excluded: frozenset[str]
) -> set[str]:
    """Packages reachable from `roots` without passing through `excluded` ones.

    Environment markers are ignored, which can only add edges: the result is a superset
    of what is needed, intersected by the caller with what pip actually resolved.
    """
    seen: set[str] = set()
    stack = [r for r in roots if r not in excluded]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(d for d in edges.get(name, []) if d not in excluded and d not in seen)
    return seen


def default_cache_dir() -> Path:
    override = os.environ.get("TOKEX_LAYER_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tokex" / "cdk-layer"


@jsii.implements(ILocalBundling)
class _LocalBundler:
    """jsii adapter: CDK calls `try_bundle` with the asset's output directory."""

    def __init__(self, bundling: CoreLayerBundling) -> None:
        self._bundling = bundling

    def try_bundle(self, output_dir: str, *args: Any, **options: Any) -> bool:
        self._bundling.build_into(Path(output_dir))
        return True


def locally_bundled_code(
    *, placeholder: Path, asset_hash: str, bundler: ILocalBundling
) -> lambda_.Code:
    """Lambda `Code` that `bundler` builds on this machine (no Docker), under `asset_hash`.

    `placeholder` is a directory CDK needs to be given: with a custom hash and local
    bundling it is neither fingerprinted nor copied; the bundler writes the asset.
    """
    return lambda_.Code.from_asset(
        str(placeholder),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=asset_hash,
        bundling=BundlingOptions(
            # Never pulled: local bundling always succeeds or raises.
            image=DockerImage.from_registry("tokex-local-bundling-only"),
            local=bundler,
        ),
    )


def core_layer_code(*, project_root: Path, python_version: str) -> lambda_.Code:
    """Lambda `Code` for the layer: local bundling only, custom asset hash = inputs hash."""
    bundling = CoreLayerBundling(project_root=project_root, python_version=python_version)
    return locally_bundled_code(
        placeholder=bundling.package_dir,
        asset_hash=bundling.inputs_hash(),
        bundler=_LocalBundler(bundling),
    )


class CoreLayer(Construct):
    """The `tokex` runtime (no tooling) and its dependencies for arm64 Lambda functions."""

    def __init__(self, scope: Construct, construct_id: str, *, runtime: lambda_.Runtime) -> None:
        super().__init__(scope, construct_id)
        python_version = runtime.name.removeprefix("python")
        self.layer = lambda_.LayerVersion(
            self,
            "Layer",
            code=core_layer_code(
                project_root=Path(__file__).resolve().parent.parent,
                python_version=python_version,
            ),
            compatible_runtimes=[runtime],
            compatible_architectures=[lambda_.Architecture.ARM_64],
            description="tokex core library and dependencies (boto3 from the runtime)",
        )
