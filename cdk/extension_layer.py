"""The tokex proxy as a Lambda extension layer, and the construct that adds it to a function.

What the layer holds (Lambda unzips a layer into /opt):

    extensions/tokex-proxy     the launcher: Lambda starts every executable in
                               /opt/extensions at Init, and the extension registers under
                               this file name (tokex.extension.api.EXTENSION_NAME)
    tokex-proxy/tokex/...      the `tokex` modules the extension imports, and no others
    tokex-proxy/jwt/...        the pure-Python distributions they need beyond the runtime

Its Python lives in /opt/tokex-proxy, not /opt/python: Lambda puts /opt/python on the
*function's* import path, where a second `jwt` or `urllib3` would shadow the function's own
or the runtime SDK's (AWS's Python extension samples keep theirs beside `extensions/` for
the same reason). Only the launcher puts /opt/tokex-proxy on the extension's path.

Runtimes and architectures: the extension is Python, so it runs on the function's own
interpreter, which only the Python runtimes have (`/var/lang/bin/python3`); 3.11 and later,
because tokex needs 3.11 and because from 3.11 on the runtime's AWS SDK is in that
interpreter's own site-packages (before, in /var/runtime, off a bare `python3`'s path).
Everything in the layer is pure Python (wheels resolved with `--platform any --abi none`:
pip refuses a dependency that has only platform wheels), so one build serves x86_64 and
arm64 functions. No Docker: pip and a file copy, cached like the core layer
(cdk/layer_bundling.py), keyed by a hash of everything that goes in.

Its wheels are those of a committed lock file, `layers/core/requirements-extension.lock`,
as for the core layer: `python -m cdk.lock` resolves the requirements for each runtime's
Python (one lock, checked to be the same for all of them), the build installs the lock's
wheels and resolves nothing, and a lock that does not satisfy pyproject.toml (or misses a
module the extension now imports) fails the build. Only the modules of the import closure
are copied (`*.py` files found by import), so no stray file of the package ships here.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import ILocalBundling, RemovalPolicy, Stack, Token
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdk.layer_bundling import (
    INVALIDATION_MODE,
    BundlingError,
    BytecodeCompiler,
    Lock,
    canonical_name,
    default_cache_dir,
    find_bytecode_compiler,
    locally_bundled_code,
    lock_text,
    marker_environment,
    readable_by_lambda,
    requirement_name,
)
from tokex.client.evidence import AWS_OIF, SIGV4, evidence_kind
from tokex.extension.api import EXTENSION_NAME
from tokex.extension.main import (
    DEFAULT_LISTEN,
    ENDPOINT_VARIABLE,
    LISTEN_VARIABLE,
    ROUTES_VARIABLE,
    URL_VARIABLE,
    config_from_variables,
)
from tokex.proxy.config import ProxyConfigError

RECIPE_VERSION = "2"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The layer's lock file, relative to the project root (see the module docstring).
EXTENSION_LOCK = Path("layers", "core", "requirements-extension.lock")
PACKAGE_DIR = PROJECT_ROOT / "layers" / "core" / "tokex"
SITE = "tokex-proxy"  # /opt/tokex-proxy
ENTRY_MODULES = ("tokex.extension.__main__",)
RUNTIMES = (lambda_.Runtime.PYTHON_3_11, lambda_.Runtime.PYTHON_3_12, lambda_.Runtime.PYTHON_3_13)
ARCHITECTURES = (lambda_.Architecture.ARM_64, lambda_.Architecture.X86_64)
# The oldest supported runtime: a wheel pip accepts for it carries no newer requirement.
PIP_PYTHON_VERSION = "3.11"
# Top-level modules each Python runtime (3.11+) has in its site-packages: the AWS SDK and
# its dependencies. The extension uses them from there, at the runtime's versions.
RUNTIME_MODULES = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six"})
# Their distributions: what the layer must never install (`dateutil` is python-dateutil's).
RUNTIME_DISTRIBUTIONS = frozenset(
    {canonical_name(m) for m in RUNTIME_MODULES - {"dateutil"}} | {"python-dateutil"}
)
# Modules the extension imports that it takes from the layer, by distribution
# (pyproject.toml states their versions). pyjwt: not in the runtime (it reads the tokens'
# claims; verifying no signature, it needs no `cryptography`, which pyjwt imports only if
# present). urllib3: the runtime has one, botocore's, at a version tokex does not choose;
# the proxy needs >= 2.2, and in the extension's own process the layer's comes first. A new
# third-party import fails the build until it is listed here or in RUNTIME_MODULES.
BUNDLED = {"jwt": "pyjwt", "urllib3": "urllib3"}
LAYER_ID = "ProxyExtensionLayer"  # the construct's id in a stack (ProxyExtensionLayer.of)
# Checked in place of an endpoint that is a token at synth (another stack's IssuerUrl):
# the extension checks the endpoint on its own, and nothing else against it.
SYNTH_ENDPOINT = "https://tokex.invalid"

LAUNCHER = f"""#!/bin/sh
# The tokex proxy, a Lambda extension (cdk/extension_layer.py). Lambda starts it at Init;
# its name is this file's name. It runs on the function's Python: the Python runtimes put
# python3 in /var/lang/bin, with the AWS SDK in that interpreter's site-packages.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
python=/var/lang/bin/python3
if [ ! -x "$python" ]; then
    python=$(command -v python3 || true)
fi
if [ -z "$python" ]; then
    echo "{EXTENSION_NAME}: no python3: the extension needs a Python runtime (3.11+)" >&2
    exit 1
fi
PYTHONPATH="$root/{SITE}${{PYTHONPATH:+:$PYTHONPATH}}"
# `-m` would put the working directory (the function's /var/task) first on the path, where
# the function's own `tokex` or `urllib3` would replace the layer's (Python 3.11+ honours
# this; an older one is refused by the extension itself, with an init error).
PYTHONSAFEPATH=1
export PYTHONPATH PYTHONSAFEPATH
exec "$python" -m tokex.extension
"""


def _module_index(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the `tokex` package."""
    index = {}
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        index[".".join(parts)] = path
    return index


def _imports(path: Path, module: str) -> Iterable[str]:
    """Dotted names imported anywhere in `path` except under `if TYPE_CHECKING:` (never
    run); `from x import y` gives `x.y`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield from (f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def import_closure(
    package_dir: Path = PACKAGE_DIR, entries: Sequence[str] = ENTRY_MODULES
) -> tuple[dict[str, Path], set[str]]:
    """The `tokex` modules `entries` import, directly or not (with the packages that hold
    them), and the top-level names of the other, non-standard modules they import."""
    index = _module_index(package_dir)
    root = package_dir.name
    found: dict[str, Path] = {}
    third_party: set[str] = set()
    pending = list(entries)
    while pending:
        name = pending.pop()
        while name and name not in index:  # `from m import name`: the module m
            name = name.rpartition(".")[0]
        if not name or name in found:
            continue
        found[name] = index[name]
        parts = name.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        for imported in _imports(index[name], name):
            top = imported.split(".")[0]
            if top == root:
                pending.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return found, third_party


def bundled_requirements(third_party: Iterable[str], pyproject: Path) -> list[str]:
    """pyproject's requirement for each module to bundle (not the runtime's)."""
    unknown = sorted(set(third_party) - RUNTIME_MODULES - BUNDLED.keys())
    if unknown:
        raise RuntimeError(
            f"the extension imports {unknown}: list each in cdk/extension_layer.py BUNDLED"
            " (pure Python only) or RUNTIME_MODULES"
        )
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    by_name = {requirement_name(r): r for r in declared}
    wanted = sorted({canonical_name(BUNDLED[m]) for m in third_party if m in BUNDLED})
    return [by_name.get(name, name) for name in wanted]


class ExtensionLayerBundling:
    """Builds the layer's directory tree; see the module docstring."""

    def __init__(self, *, project_root: Path = PROJECT_ROOT, cache_dir: Path | None = None):
        self.package_dir = project_root / "layers" / "core" / "tokex"
        self.lock_path = project_root / EXTENSION_LOCK
        self.modules, self.third_party = import_closure(self.package_dir)
        self.requirements = bundled_requirements(self.third_party, project_root / "pyproject.toml")
        default = default_cache_dir()
        self.cache_dir = cache_dir or default.with_name(default.name + "-extension")
        self.compilers = [c for r in RUNTIMES if (c := _compiler(r.name)) is not None]

    def inputs_hash(self) -> str:
        digest = hashlib.sha256()
        header = {
            "recipe": RECIPE_VERSION,
            "python": PIP_PYTHON_VERSION,
            "requirements": self.requirements,
            "launcher": LAUNCHER,
            "bytecode": [[c.version, c.cache_tag, INVALIDATION_MODE] for c in self.compilers],
        }
        digest.update(json.dumps(header, sort_keys=True).encode())
        # The wheels the layer installs: the lock decides them, not this machine's pip.
        digest.update(b"\0lock\0" + hashlib.sha256(Lock.read(self.lock_path).content).digest())
        for name in sorted(self.modules):
            digest.update(b"\0" + name.encode() + b"\0")
            digest.update(hashlib.sha256(self.modules[name].read_bytes()).digest())
        return digest.hexdigest()

    def build_into(self, output_dir: Path, *, key: str) -> None:
        cached = self.cache_dir / key
        if not (cached / "extensions").is_dir():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=self.cache_dir))
            try:
                self._build(staging / "layer")
                try:
                    (staging / "layer").rename(cached)
                except OSError:  # another synth finished the same bundle first
                    if not (cached / "extensions").is_dir():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(cached, output_dir, dirs_exist_ok=True)
        readable_by_lambda(output_dir)

    def _build(self, root: Path) -> None:
        site = root / SITE
        lock = Lock.read(self.lock_path)
        self.check_lock(lock)
        if lock.pins:
            # The bytes checked are the bytes installed (beside the layer, not in it).
            installed = root.parent / "requirements.lock"
            installed.write_bytes(lock.content)
            self._pip("install", "--no-deps", "--require-hashes", "--target", str(site),
                      "-r", str(installed))  # fmt: skip
        shutil.rmtree(site / "bin", ignore_errors=True)
        for path in self.modules.values():
            target = site / path.relative_to(self.package_dir.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        launcher = root / "extensions" / EXTENSION_NAME
        launcher.parent.mkdir(parents=True)
        launcher.write_text(LAUNCHER, encoding="utf-8")
        launcher.chmod(0o755)
        for compiler in self.compilers:
            _compile(compiler, site)

    # --- the lock file ----------------------------------------------------------------

    # Every runtime's Python: a runtime added is resolved (and checked alike) anew.
    target = "platform=any implementation=py abi=none python=" + ",".join(
        r.name.removeprefix("python") for r in RUNTIMES
    )

    def check_lock(self, lock: Lock) -> None:
        """The core layer's check (Lock.check), for the modules the extension imports."""
        lock.check(
            self.requirements,
            target=self.target,
            excluded=RUNTIME_DISTRIBUTIONS,
            # Pure Python for every runtime: the oldest one's markers (the lock command
            # checks that the others resolve alike).
            environment=marker_environment(PIP_PYTHON_VERSION, "x86_64"),
        )

    def lock_text(self) -> str:
        """A new lock file's text, for `python -m cdk.lock`: pip's resolution for the
        oldest runtime's Python, which must be the same for each of the others (one lock
        serves them all, as one layer does)."""
        resolved = {r.name: self._resolve(r.name.removeprefix("python")) for r in RUNTIMES}
        pins = resolved[f"python{PIP_PYTHON_VERSION}"]
        differing = sorted(runtime for runtime, other in resolved.items() if other != pins)
        if differing:
            raise BundlingError(
                f"the extension's dependencies resolve differently for {differing} than for "
                f"Python {PIP_PYTHON_VERSION}: one lock cannot serve every runtime"
            )
        return lock_text(
            layer="proxy extension layer",
            source="the pyproject.toml requirements of the third-party modules the extension "
            f"imports ({', '.join(self.requirements)}), the same for each runtime's Python",
            target=self.target,
            pins=pins,
        )

    def _resolve(self, python_version: str) -> list[str]:
        """The wheels to install for `python_version`, hash-pinned from a dry run; none
        the runtime provides."""
        if not self.requirements:
            return []
        with tempfile.TemporaryDirectory(prefix="tokex-lock-") as scratch:
            report = Path(scratch, "report.json")
            self._pip("install", "--dry-run", "--ignore-installed", "--report", str(report),
                      "--target", str(Path(scratch, "dry-run")), *self.requirements,
                      python_version=python_version)  # fmt: skip
            installs = json.loads(report.read_text(encoding="utf-8"))["install"]
        pins = []
        for item in installs:
            name, version = canonical_name(item["metadata"]["name"]), item["metadata"]["version"]
            if name in RUNTIME_DISTRIBUTIONS:
                raise BundlingError(f"{name} would shadow the runtime's copy in the extension")
            sha256 = item["download_info"]["archive_info"]["hashes"]["sha256"]
            pins.append(f"{name}=={version} --hash=sha256:{sha256}")
        return sorted(pins)

    def _pip(self, *args: str, python_version: str = PIP_PYTHON_VERSION) -> None:
        command = [
            sys.executable, "-m", "pip", args[0],
            "--disable-pip-version-check", "--no-input", "--quiet", "--no-compile",
            "--platform", "any", "--implementation", "py", "--abi", "none",
            "--python-version", python_version, "--only-binary=:all:", *args[1:],
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise BundlingError(
                f"pip failed ({result.returncode}) bundling the tokex extension layer:\n"
                f"{' '.join(command)}\n{result.stdout}{result.stderr}"
            )


def _compiler(runtime: str) -> BytecodeCompiler | None:
    """A local CPython of the runtime's version, if any (none: that runtime compiles the
    extension's modules at each cold start, as without the layer's bytecode)."""
    try:
        return find_bytecode_compiler(runtime.removeprefix("python"))
    except BundlingError:  # TOKEX_LAYER_PYTHON names another version: the core layer's
        return None


def _compile(compiler: BytecodeCompiler, site: Path) -> None:
    """`__pycache__/*.<cache_tag>.pyc` beside each module: the runtimes' tags differ, so
    one layer carries the bytecode of each (unchecked-hash: cdk/layer_bundling.py)."""
    command = [compiler.executable, "-I", "-m", "compileall", "-q", "-j0",
               "--invalidation-mode", INVALIDATION_MODE,
               "-s", str(site), "-p", f"/opt/{SITE}", str(site)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise BundlingError(
            f"compiling the extension layer failed:\n{result.stdout}{result.stderr}"
        )


@jsii.implements(ILocalBundling)
class _LocalBundler:
    def __init__(self, bundling: ExtensionLayerBundling, key: str) -> None:
        self._bundling = bundling
        self._key = key

    def try_bundle(self, output_dir: str, *args: Any, **options: Any) -> bool:
        self._bundling.build_into(Path(output_dir), key=self._key)
        return True


class ProxyExtensionLayer(Construct):
    """The extension layer (see the module docstring)."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        bundling = ExtensionLayerBundling()
        key = bundling.inputs_hash()
        self.layer = lambda_.LayerVersion(
            self,
            "Layer",
            code=locally_bundled_code(
                self,
                placeholder=bundling.package_dir / "extension",
                asset_hash=key,
                bundler=_LocalBundler(bundling, key),
            ),
            compatible_runtimes=list(RUNTIMES),
            compatible_architectures=list(ARCHITECTURES),
            description="tokex proxy Lambda extension (pure Python: Python 3.11+ runtimes)",
            # Other stacks' functions pin a version (ProxyExtensionLayerArn): a new one
            # must not delete it, or their next deploy fails on a missing layer version.
            removal_policy=RemovalPolicy.RETAIN,
        )

    @staticmethod
    def of(stack: Stack) -> lambda_.ILayerVersion:
        """One layer per stack, made on first use."""
        found = stack.node.try_find_child(LAYER_ID) or ProxyExtensionLayer(stack, LAYER_ID)
        assert isinstance(found, ProxyExtensionLayer)
        return found.layer


class TokexProxyExtension(Construct):
    """Adds the tokex proxy extension to a Python function of yours, and its settings.

    `endpoint`: the tokex issuer URL; `routes`: the proxy's routes, a list of tables as
    its configuration file has them (`prefix` or `listen`, `upstream`, `audience`,
    `scopes`, ...). `layer`: the extension layer (e.g. `LayerVersion.from_layer_version_arn`
    with the tokex stack's ProxyExtensionLayerArn output); by default one is built in your
    stack. `listen`: HOST:PORT of the proxy, default 127.0.0.1:2780; the function gets
    its URL in `TOKEX_PROXY_URL` (and this construct in `url`), for its code to call.
    The settings are checked here, at synth, by the extension's own code (a ValueError
    with its message): what would fail every Init with `Extension.ConfigInvalid` fails
    `cdk synth` instead. Left to the extension at Init: whether the files a route names
    (`ca_file`, `token_file`: the function's package, not there at synth) exist; an
    `endpoint` that is a token (e.g. an imported IssuerUrl; the rest is checked here);
    everything when `routes` or `listen` hold a token.
    Nothing else changes: the function's own role is what signs its evidence (a route
    with `aws-oif` evidence adds the one statement that role needs to ask STS for it).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        function: lambda_.Function,
        endpoint: str,
        routes: Sequence[Mapping[str, Any]],
        layer: lambda_.ILayerVersion | None = None,
        listen: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        supported = [r.name for r in RUNTIMES]
        if function.runtime.name not in supported:
            raise ValueError(
                f"the tokex proxy extension runs on the function's Python: {function.runtime.name}"
                f" is not one of {supported}"
            )
        if not Token.is_unresolved(endpoint) and not endpoint.startswith(("https://", "http://")):
            raise ValueError(f"endpoint must be the tokex issuer URL, not {endpoint!r}")
        environment = {
            ENDPOINT_VARIABLE: endpoint,
            ROUTES_VARIABLE: json.dumps(routes, separators=(",", ":")),
            **({LISTEN_VARIABLE: listen} if listen is not None else {}),
        }
        _check_as_the_extension_will(environment)
        self.layer = layer or ProxyExtensionLayer.of(Stack.of(function))
        function.add_layers(self.layer)
        # For the function's code (the extension does not read it): the port in one place.
        self.url = f"http://{listen or DEFAULT_LISTEN}"
        for name, value in {**environment, URL_VARIABLE: self.url}.items():
            function.add_environment(name, value)
        if any(_evidence_of(route) == AWS_OIF for route in routes):
            # `aws-oif` evidence is a token the function's role asks STS for: allowed for
            # the tokex issuer alone and short lives (docs/deploy.md, the statement each
            # workload's role needs).
            issuer = endpoint if Token.is_unresolved(endpoint) else endpoint.rstrip("/")
            function.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["sts:GetWebIdentityToken"],
                    resources=["*"],
                    conditions={
                        "ForAllValues:StringEquals": {"sts:IdentityTokenAudience": issuer},
                        "Null": {"sts:IdentityTokenAudience": "false"},
                        "NumericLessThanEquals": {"sts:DurationSeconds": 300},
                    },
                )
            )


def _check_as_the_extension_will(environment: Mapping[str, str]) -> None:
    """The extension's checks at Init (config_from_variables) on the function's variables,
    but for the files the routes name; ValueError with its message. A value that is a
    token is known at deploy only: see TokexProxyExtension."""
    if any(Token.is_unresolved(environment.get(n, "")) for n in (ROUTES_VARIABLE, LISTEN_VARIABLE)):
        return  # known at deploy only: the extension checks them at Init
    if Token.is_unresolved(environment[ENDPOINT_VARIABLE]):
        environment = {**environment, ENDPOINT_VARIABLE: SYNTH_ENDPOINT}
    try:
        config_from_variables(environment, check_files=False)
    except ProxyConfigError as err:
        raise ValueError(str(err)) from None


def _evidence_of(route: Mapping[str, Any]) -> str | None:
    """A route's evidence kind (`oif` is `aws-oif`); None for a value the extension
    refuses (at Init if the routes hold a token, else at synth), which asks for no
    permission."""
    try:
        return evidence_kind(str(route.get("evidence", SIGV4)))
    except ValueError:
        return None
