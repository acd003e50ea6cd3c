"""The core-library Lambda layer, bundled locally with pip (no Docker engine needed).

`pip install --platform manylinux2014_aarch64 --only-binary=:all:` fetches the wheels built
for the Lambda architecture whatever machine synthesizes, so nothing is compiled here.
The AWS SDK (boto3, botocore, s3transfer) is left to the Lambda runtime, which ships it.
The layer is the runtime only: the tooling in the `tokex` package (`TOOLING`: the CLI,
local mode, the Kong generator, the workload client, the proxy and its Lambda extension,
which has a layer of its own: cdk/extension_layer.py) stays in the installable package
and out of the layer, and nothing in the runtime imports it (tests/infra/test_layer.py).

Dependencies: the layer installs exactly the wheels of a committed lock file,
`layers/core/requirements.lock` (`name==version --hash=sha256:...` lines, installed with
`pip install --no-deps --require-hashes`): nothing is resolved at synth time, so the same
sources and lock give the same layer on every machine and at any date. `python -m cdk.lock`
makes the lock from pyproject.toml's dependencies (`CoreLayerBundling.lock_text`: pip's
resolution for the target, less what the runtime provides); a new lock, a reviewed diff, is
what ships new dependency versions. A lock that no longer satisfies pyproject.toml (a
requirement added or raised since) fails the build, naming the lock.

The `tokex` files the layer ships are an allow-list: the package's modules (`*.py`) and the
package data pyproject.toml declares for setuptools (`py.typed`, the certificates), as the
wheel has them; a `.env`, an editor's backup or a tool's cache beside them is not shipped.

A finished bundle is kept in a cache directory keyed by a hash of everything that goes
into it (the `tokex` files, the dependency list, the lock file's bytes, the target platform
and this module's bundling recipe), so synthesizing again - into any `cdk.out` - copies a
directory instead of running pip. The asset hash is derived from the same inputs, so CDK
also skips the bundler entirely when the asset is already staged in the output directory.

Bytecode: `/opt` is read-only on Lambda, so a layer without `.pyc` files has every cold
start compile its modules again (issue 11: 0.41 s against 0.14 s for the layer's part).
When the deploying machine has a CPython of the runtime's version (`BytecodeCompiler`,
found by `find_bytecode_compiler`), the bundle is compiled with it into
`__pycache__/*.cpython-313.pyc`; pip's own compilation is off because it would use the
local interpreter, whose bytecode the runtime cannot read. Without such an interpreter the
layer ships sources only (slower cold starts, same behaviour) and the synth says so in one
line (docs/deploy.md, "Bytecode in the layer"). Which interpreter compiled, if any, is part
of the inputs hash.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling, Stack
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

try:
    from packaging.requirements import Requirement
except ImportError:  # the `cdk` extra alone: the copy in pip, which the bundler runs anyway
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]

# Bump when the recipe below changes in a way the inputs hash cannot see.
RECIPE_VERSION = "5"
PLATFORM = "manylinux2014_aarch64"
# Provided by every Lambda Python runtime; bundling them would only shadow the runtime's
# copy and add ~25 MB. The functions need botocore >= 1.29.164 (DynamoDB's
# ReturnValuesOnConditionCheckFailure): a feature that needs more must say so in
# docs/deploy.md ("What the stack builds").
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer"})
PACKAGE_NAME = "tokex"
CACHE_ENTRIES_KEPT = 4
# Top-level entries of the `tokex` package that are tooling, not runtime.
TOOLING = frozenset({"cli", "local", "client", "proxy", "extension", "kong.py"})
# The core layer's lock file, relative to the project root (see the module docstring).
CORE_LOCK = Path("layers", "core", "requirements.lock")
# What regenerates the layers' lock files (cdk/lock.py).
LOCK_COMMAND = "python -m cdk.lock"
# A lock file's line: one wheel, hash-pinned (what `pip --require-hashes` needs).
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) --hash=sha256:([0-9a-f]{64})")
# A lock file's header line naming the pip target it was resolved for.
_LOCK_TARGET = "# target: "
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# A cache entry's name once published: its inputs hash (a staging one adds `-<random>`).
_PUBLISHED_BUNDLE = re.compile(r"[0-9a-f]{64}")
# Names the interpreter to compile the layer's bytecode with; it must be the runtime's
# CPython version (a mismatch is an error, never a silent fallback).
COMPILER_ENV = "TOKEX_LAYER_PYTHON"
# Hash-based pycs that the import system never checks against their source: a layer
# version is immutable, and Lambda's unzipped files carry the zip's timestamps, which a
# timestamp pyc would be checked against (PEP 552). unchecked-hash also spares the read
# and hash of every source that checked-hash would cost at each cold start.
INVALIDATION_MODE = "unchecked-hash"
# Where Lambda mounts the layer's `python/`: the path tracebacks show (compileall -p).
LAYER_SITE = "/opt/python"
_PROBE = (
    "import platform, sys; "
    "print(sys.implementation.name, platform.python_version(), sys.implementation.cache_tag)"
)


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


def package_data(pyproject: Path) -> tuple[str, ...]:
    """The `tokex` package's data files as pyproject.toml declares them for setuptools
    (`[tool.setuptools.package-data]`: glob patterns relative to the package)."""
    tool = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
    return tuple(tool.get("setuptools", {}).get("package-data", {}).get(PACKAGE_NAME, ()))


def _glob_match(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """`glob(pattern, recursive=True)`'s verdict on a relative path (what setuptools ships
    as package data): `**` is any number of folders, and a wildcard matches no name that
    starts with a dot."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return _glob_match(parts, rest) or (
            bool(parts) and not parts[0].startswith(".") and _glob_match(parts[1:], pattern)
        )
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _glob_match(parts[1:], rest)


def is_runtime_file(relative: Path, data: Iterable[str] = ()) -> bool:
    """Whether a file of the `tokex` package (path relative to it) goes in the layer: a
    module of one of its packages (a folder named like one, as setuptools finds them) or
    package data (`data`: `package_data`'s patterns), and not tooling. Anything else - a
    `.env`, `x.py.orig`, `.x.py.swp`, a tool's cache - is not shipped."""
    parts = relative.parts
    if parts[0] in TOOLING:
        return False
    if any(_glob_match(parts, tuple(pattern.split("/"))) for pattern in data):
        return True
    folders, name = parts[:-1], parts[-1]
    return (
        all(f.isidentifier() and f != "__pycache__" for f in folders)
        and name.endswith(".py")
        and not name.startswith(".")
    )


def runtime_files(package_dir: Path, data: Iterable[str] = ()) -> list[Path]:
    """The files of the `tokex` package that the layer ships (see `is_runtime_file`)."""
    data = tuple(data)
    return sorted(
        path
        for path in package_dir.rglob("*")
        if path.is_file() and is_runtime_file(path.relative_to(package_dir), data)
    )


# The first words of every BundlingError: CDK hands an error raised in a bundling callback
# back through jsii as its own RuntimeError, with only the text kept (app.py finds it there).
BUNDLING_FAILED = "tokex: cannot build a Lambda layer"


def readable_by_lambda(root: Path) -> None:
    """Directories 755, files 644 (755 when executable): Lambda runs the function as a user
    who owns none of an asset's files, and the asset's zip keeps the modes it was built
    with, so a build under a umask of 077 (a hardened CI runner's) made a layer whose every
    module the function could not read."""
    for directory, _, files in os.walk(root):
        Path(directory).chmod(0o755)
        for name in files:
            path = Path(directory, name)
            path.chmod(0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)


class BundlingError(RuntimeError):
    """A layer cannot be built on this machine (pip, the bytecode compiler, a missing or
    stale lock file): the operator's to fix, so the synth reports it without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{BUNDLING_FAILED}: {message}")


# --- lock files ---------------------------------------------------------------------


NBSP = "\N{NO-BREAK SPACE}"  # keeps the command on one line of a lock's header


def lock_text(*, layer: str, source: str, target: str, pins: Iterable[str]) -> str:
    """A lock file: its header (how it was made), then `name==version --hash=...` lines."""
    command = LOCK_COMMAND.replace(" ", NBSP)
    about = (
        f"The {layer}'s dependencies, hash-pinned. The layer installs exactly these wheels "
        "(pip install --no-deps --require-hashes): a change of this file is what ships new "
        "dependency versions; nothing is resolved when the layer is built. "
        f"Made by `{command}` (from the project root) with pip's resolution, for the "
        f"target below, of {source}. To update (a dependency's fix, a requirement added or "
        "raised in pyproject.toml), run it again and review the diff. Not to be edited by hand."
    )
    lines = textwrap.wrap(about, width=86, break_on_hyphens=False)
    header = "".join(f"# {line.replace(NBSP, ' ')}\n" for line in lines)
    header += f"{_LOCK_TARGET}{target}\n"
    return header + "".join(f"{pin}\n" for pin in pins)


@dataclass(frozen=True)
class Lock:
    """A lock file as read: its bytes (part of the inputs hash), the target its header
    names, and its pins (canonical name -> version)."""

    path: Path
    content: bytes
    target: str | None
    pins: Mapping[str, str]

    @classmethod
    def read(cls, path: Path) -> Lock:
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise BundlingError(
                f"the lock file {path} is missing: make it with `{LOCK_COMMAND}`"
            ) from None
        target, pins = None, {}
        for number, line in enumerate(content.decode("utf-8").splitlines(), 1):
            if line.startswith(_LOCK_TARGET):
                target = line.removeprefix(_LOCK_TARGET).strip()
            if not line.strip() or line.startswith("#"):
                continue
            match = _PIN.fullmatch(line.strip())
            if match is None:
                raise BundlingError(
                    f"{path}:{number} is not `name==version --hash=sha256:<64 hex>`: "
                    f"{line!r}; regenerate the lock with `{LOCK_COMMAND}`"
                )
            pins[canonical_name(match.group(1))] = match.group(2)
        return cls(path, content, target, pins)

    def check(
        self,
        requirements: Iterable[str],
        *,
        target: str,
        excluded: Iterable[str],
        environment: Mapping[str, str],
    ) -> None:
        """BundlingError naming this lock unless it is for `target`, pins each of
        `requirements` (whose marker holds in `environment`) at a version it allows, and
        pins nothing `excluded` (the runtime's): a stale lock, after pyproject.toml
        changed, fails the build instead of shipping what pyproject no longer says."""
        problems = []
        if self.target != target:
            problems.append(f"it was made for {self.target!r}, the layer is for {target!r}")
        for requirement in requirements:
            parsed = Requirement(requirement)
            if parsed.marker is not None and not parsed.marker.evaluate(dict(environment)):
                continue
            version = self.pins.get(canonical_name(parsed.name))
            if version is None:
                problems.append(f"{requirement!r} is not pinned")
            elif not parsed.specifier.contains(version, prereleases=True):
                problems.append(f"{requirement!r} does not allow the pinned {version}")
        shadowing = sorted(self.pins.keys() & {canonical_name(e) for e in excluded})
        if shadowing:
            problems.append(f"it pins {shadowing}, which the Lambda runtime provides")
        if problems:
            raise BundlingError(
                f"the lock file {self.path} does not match pyproject.toml: "
                f"{'; '.join(problems)}. Run `{LOCK_COMMAND}` and review the diff"
            )


def marker_environment(python_version: str, machine: str) -> dict[str, str]:
    """PEP 508 marker values of a Lambda Python runtime (`python_version`, e.g. "3.13")."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
    }


@dataclass(frozen=True)
class BytecodeCompiler:
    """A CPython of the runtime's version on this machine, to compile the layer with."""

    executable: str
    version: str  # e.g. "3.13.0"
    cache_tag: str  # e.g. "cpython-313": the name of the .pyc files it writes

    def identity(self, mounted_at: str) -> dict[str, str]:
        """What decides the bytecode `compile_tree` writes: part of an asset's hash."""
        return {
            "python": self.version,
            "cache_tag": self.cache_tag,
            "invalidation": INVALIDATION_MODE,
            "site": mounted_at,
        }

    def compile_tree(self, site: Path, *, mounted_at: str = LAYER_SITE) -> None:
        """Compile every module under `site` into `__pycache__/*.<cache_tag>.pyc`, naming
        them by where Lambda mounts `site` (`mounted_at`: the paths tracebacks show)."""
        command = [
            self.executable, "-I", "-m", "compileall", "-q", "-j0",
            "--invalidation-mode", INVALIDATION_MODE,
            "-s", str(site), "-p", mounted_at, str(site),
        ]  # fmt: skip
        result = subprocess.run(  # noqa: S603 - fixed argv, an interpreter we probed
            command, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BundlingError(
                f"compiling tokex's bytecode failed ({result.returncode}):\n"
                f"{' '.join(command)}\n{result.stdout}{result.stderr}"
            )


def probe_interpreter(executable: str) -> BytecodeCompiler | None:
    """What `executable` is, or None when it does not run (a pyenv shim without that
    version selected fails this way) or is not CPython."""
    try:
        result = subprocess.run(  # noqa: S603 - probing a named interpreter
            [executable, "-I", "-c", _PROBE],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) != 3 or fields[0] != "cpython":
        return None
    return BytecodeCompiler(executable, fields[1], fields[2])


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _pyenv_candidates(python_version: str) -> list[str]:
    """pyenv's installed versions: their shim on PATH only runs the selected ones."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    pattern = f"{python_version}.*/bin/python{python_version}"
    return [str(p) for p in sorted((root / "versions").glob(pattern), reverse=True)]


def find_bytecode_compiler(python_version: str) -> BytecodeCompiler | None:
    """A CPython `python_version` (e.g. "3.13") on this machine, or None.

    `TOKEX_LAYER_PYTHON` when set (and then it must be that version); else the running
    interpreter if it is that version; else each `pythonX.Y` on PATH; else pyenv's.
    """
    named = os.environ.get(COMPILER_ENV)
    if named:
        compiler = probe_interpreter(named)
        if compiler is None or _minor(compiler.version) != python_version:
            found = "does not run" if compiler is None else f"is Python {compiler.version}"
            raise BundlingError(
                f"{COMPILER_ENV}={named} {found}; the layer needs CPython {python_version}"
            )
        return compiler
    candidates = [sys.executable] if _minor(sys.version) == python_version else []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(directory or ".") / f"python{python_version}"
        if path.is_file() and os.access(path, os.X_OK):
            candidates.append(str(path))
    candidates += _pyenv_candidates(python_version)
    for candidate in dict.fromkeys(candidates):
        compiler = probe_interpreter(candidate)
        if compiler is not None and _minor(compiler.version) == python_version:
            return compiler
    return None


@functools.cache
def runtime_compiler(python_version: str) -> BytecodeCompiler | None:
    """`find_bytecode_compiler`, probed once per synth for the layer and every function;
    without one, the synth's one line says they ship sources."""
    compiler = find_bytecode_compiler(python_version)
    if compiler is None:
        print(
            f"tokex layer: no CPython {python_version} found (PATH, pyenv, {COMPILER_ENV}); "
            "the layer and the functions ship without bytecode, so each cold start compiles "
            "them (docs/deploy.md, Bytecode in the layer)",
            file=sys.stderr,
        )
    return compiler


class CoreLayerBundling:
    """Builds `<out>/python/...` for the layer; see the module docstring."""

    def __init__(
        self,
        *,
        project_root: Path,
        python_version: str,
        cache_dir: Path | None = None,
        find_compiler: Callable[[str], BytecodeCompiler | None] = find_bytecode_compiler,
    ) -> None:
        self.project_root = project_root.resolve()
        self.package_dir = self.project_root / "layers" / "core" / PACKAGE_NAME
        self.pyproject = self.project_root / "pyproject.toml"
        self.lock_path = self.project_root / CORE_LOCK
        self.python_version = python_version
        self.requirements = layer_requirements(self.pyproject)
        self.package_data = package_data(self.pyproject)
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        # Probed once per synth; None: the layer ships sources only.
        self.compiler = find_compiler(python_version)

    def inputs_hash(self) -> str:
        digest = hashlib.sha256()
        header = {
            "recipe": RECIPE_VERSION,
            "platform": PLATFORM,
            "python": self.python_version,
            "requirements": self.requirements,
            "excluded": sorted(RUNTIME_PROVIDED),
            "bytecode": None if self.compiler is None else self.compiler.identity(LAYER_SITE),
        }
        digest.update(json.dumps(header, sort_keys=True).encode())
        # The wheels the layer installs: the lock decides them, not this machine's pip.
        digest.update(b"\0lock\0" + hashlib.sha256(Lock.read(self.lock_path).content).digest())
        for path in runtime_files(self.package_dir, self.package_data):
            relative = path.relative_to(self.package_dir).as_posix()
            digest.update(b"\0" + relative.encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    # --- the lock file ----------------------------------------------------------------

    @property
    def target(self) -> str:
        """What the lock is resolved for: pip's target options (see `_pip`)."""
        return f"platform={PLATFORM} implementation=cp python={self.python_version}"

    def check_lock(self, lock: Lock) -> None:
        lock.check(
            self.requirements,
            target=self.target,
            excluded=RUNTIME_PROVIDED,
            environment=marker_environment(self.python_version, "aarch64"),
        )

    def lock_text(self) -> str:
        """A new lock file's text: pip's resolution of pyproject's dependencies now (the
        network), for `python -m cdk.lock`; the build never resolves."""
        with tempfile.TemporaryDirectory(prefix="tokex-lock-") as scratch:
            pins = self._resolve(Path(scratch) / "report.json")
        return lock_text(
            layer="core Lambda layer",
            source="pyproject.toml's [project].dependencies less what the Lambda runtime "
            f"provides ({', '.join(sorted(RUNTIME_PROVIDED))})",
            target=self.target,
            pins=pins,
        )

    # --- building -------------------------------------------------------------------

    def build_into(self, output_dir: Path, *, key: str | None = None) -> None:
        """Fill `output_dir` (empty or missing) with the layer content, using the cache.

        `key`: the inputs hash when the caller has it already (the asset hash), so the
        sources are not read and hashed a second time.
        """
        key = key or self.inputs_hash()
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
        readable_by_lambda(output_dir)

    def _prune(self, *, keep: str) -> None:
        """Keep the newest few bundles (each edit of the core makes a new one).

        Only published bundles (named by their whole key) are candidates: a staging
        directory is another synth's build in progress. An entry another synth removes
        while this one looks is skipped, not an error."""
        entries = []
        for path in self.cache_dir.iterdir():
            if path.name == keep or not _PUBLISHED_BUNDLE.fullmatch(path.name):
                continue
            try:
                entries.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
        entries.sort(reverse=True)
        for _, stale in entries[CACHE_ENTRIES_KEPT - 1 :]:
            shutil.rmtree(stale, ignore_errors=True)

    def _build(self, root: Path) -> None:
        site = root / "python"
        lock = Lock.read(self.lock_path)
        self.check_lock(lock)
        # The bytes checked are the bytes installed; the copy stays in the cache entry.
        installed = root / "requirements.lock"
        installed.write_bytes(lock.content)
        # Exactly the locked wheels (hash-checked), no resolver, so nothing the runtime
        # provides can sneak back in as a dependency of a dependency.
        self._pip(
            "install", "--no-deps", "--require-hashes", "--target", str(site),
            "-r", str(installed),
        )  # fmt: skip
        for path in runtime_files(self.package_dir, self.package_data):
            target = site / PACKAGE_NAME / path.relative_to(self.package_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        # Console scripts from --target installs are useless in a layer.
        shutil.rmtree(site / "bin", ignore_errors=True)
        leaked = {canonical_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
        leaked &= RUNTIME_PROVIDED
        if leaked:
            raise RuntimeError(f"layer bundle unexpectedly contains {sorted(leaked)}")
        if self.compiler is not None:
            self.compiler.compile_tree(site)

    def _resolve(self, report: Path) -> list[str]:
        """Resolve the full dependency set for the target, then drop what the runtime has.

        Returns `name==version --hash=sha256:...` lines for the wheels to install (for the
        lock file: `lock_text`).
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
            pins.append(f"{name}=={item['metadata']['version']} --hash=sha256:{sha256}")
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
            raise BundlingError(
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

    def __init__(self, bundling: CoreLayerBundling, key: str) -> None:
        self._bundling = bundling
        self._key = key

    def try_bundle(self, output_dir: str, *args: Any, **options: Any) -> bool:
        self._bundling.build_into(Path(output_dir), key=self._key)
        return True


UNBUNDLED = "-unbundled"


def locally_bundled_code(
    scope: Construct, *, placeholder: Path, asset_hash: str, bundler: ILocalBundling
) -> lambda_.Code:
    """Lambda `Code` that `bundler` builds on this machine (no Docker), under `asset_hash`.

    `placeholder` is a directory CDK needs to be given: with a custom hash and local
    bundling it is neither fingerprinted nor copied; the bundler writes the asset. When
    `scope`'s stack is not bundled (`TOKEX_SYNTH_WITHOUT_BUNDLING=1`), the asset is the
    placeholder itself, which must never be uploaded under the built asset's S3 key: a
    deploy from such a synth would leave a broken object there that every later deploy
    of the same sources found and reused.
    """
    if not Stack.of(scope).bundling_required:
        asset_hash += UNBUNDLED
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


def core_layer_code(scope: Construct, *, project_root: Path, python_version: str) -> lambda_.Code:
    """Lambda `Code` for the layer: local bundling only, custom asset hash = inputs hash."""
    bundling = CoreLayerBundling(
        project_root=project_root, python_version=python_version, find_compiler=runtime_compiler
    )
    key = bundling.inputs_hash()
    return locally_bundled_code(
        scope,
        placeholder=bundling.package_dir,
        asset_hash=key,
        bundler=_LocalBundler(bundling, key),
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
                self,
                project_root=Path(__file__).resolve().parent.parent,
                python_version=python_version,
            ),
            compatible_runtimes=[runtime],
            compatible_architectures=[lambda_.Architecture.ARM_64],
            description="tokex core library and dependencies (boto3 from the runtime)",
        )
