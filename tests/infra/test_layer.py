"""The core layer bundle: arm64 wheels for the runtime's CPython, the tokex package, no
AWS SDK (the runtime provides it)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from cdk.layer_bundling import runtime_compiler
from tests.infra import checks
from tests.infra.conftest import REPO_ROOT, Synthesized

pytestmark = pytest.mark.infra

ELFCLASS64 = 2
ELFDATA2LSB = 1
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
# What the runtime's boto3 brings along (botocore's own dependencies).
AWS_SDK_DEPENDENCIES = frozenset({"jmespath", "dateutil", "six", "urllib3"})
# Left out of the layer (cdk/layer_bundling.py TOOLING), stated here independently.
TOOLING = frozenset({"cli", "local", "client", "proxy", "extension", "kong.py"})
BYTECODE_PROBE_MODULES = (
    "tokex.settings",
    "tokex.token_request",
    "tokex.evidence.sigv4_request",
    "tokex.policy.evaluate",
    "tokex.tokens.claims",
    "asn1crypto.cms",
)


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (ELF spec: e_ident[16], e_type u16, e_machine u16)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not ELF"
    assert header[4] == ELFCLASS64 and header[5] == ELFDATA2LSB, f"{path}: not ELF64 LE"
    return struct.unpack_from("<H", header, 18)[0]


def _layer_inputs_hash() -> str:
    from cdk.layer_bundling import CoreLayerBundling

    python_version = checks.RUNTIME.removeprefix("python")
    return CoreLayerBundling(project_root=REPO_ROOT, python_version=python_version).inputs_hash()


@pytest.fixture(scope="module")
def site(default_synth: Synthesized) -> Path:
    site = default_synth.layer_dir() / "python"
    assert site.is_dir(), "the layer bundle has no python/ directory"
    return site


def test_cryptography_is_built_for_aarch64(site: Path) -> None:
    rust = site / "cryptography" / "hazmat" / "bindings" / "_rust.abi3.so"
    assert elf_machine(rust) == checks.EM_AARCH64


def test_every_native_module_is_aarch64(site: Path) -> None:
    shared = list(site.rglob("*.so"))
    assert shared, "no native modules at all: the platform-specific wheels are missing"
    wrong = [str(p.relative_to(site)) for p in shared if elf_machine(p) != checks.EM_AARCH64]
    assert not wrong, f"not aarch64: {wrong}"


def test_wheel_tags_match_runtime_and_architecture(site: Path) -> None:
    python = checks.RUNTIME.removeprefix("python").replace(".", "")  # "313"
    for wheel in site.glob("*.dist-info/WHEEL"):
        tags = [
            line.split(":", 1)[1].strip()
            for line in wheel.read_text().splitlines()
            if line.startswith("Tag:")
        ]
        platform_specific = [t for t in tags if not t.endswith("-any")]
        for tag in platform_specific:
            interpreter, abi, platform = tag.split("-")
            assert "aarch64" in platform, f"{wheel.parent.name}: {tag}"
            assert abi == "abi3" or interpreter == f"cp{python}", f"{wheel.parent.name}: {tag}"


def test_no_aws_sdk_in_the_layer(site: Path) -> None:
    for name in RUNTIME_PROVIDED:
        assert not (site / name).exists(), f"{name} is bundled"
        assert not list(site.glob(f"{name}-*.dist-info")), f"{name} metadata is bundled"


def test_dependencies_and_tokex_are_there(default_synth: Synthesized, site: Path) -> None:
    packages = ["aws_lambda_powertools", "aws_xray_sdk", "jwt", "cryptography"]
    packages += ["defusedxml", "asn1crypto", "urllib3", "tokex"]
    for package in packages:
        assert (site / package).is_dir(), f"{package} missing from the layer"
    # Bytecode only for the runtime's CPython (test_layer_ships_the_runtimes_bytecode).
    tag = "cpython-" + checks.RUNTIME.removeprefix("python").replace(".", "")
    stray = [p for p in site.rglob("*.pyc") if not p.name.endswith(f".{tag}.pyc")]
    assert not stray, f"bytecode of another interpreter: {stray[:5]}"
    source = REPO_ROOT / "layers" / "core" / "tokex"
    if _layer_inputs_hash() != default_synth.layer_inputs_hash:
        pytest.skip("the core library changed while the tests ran; cannot compare sources")
    for path in source.rglob("*.py"):
        relative = path.relative_to(source)
        if "__pycache__" not in path.parts and relative.parts[0] not in TOOLING:
            bundled = site / "tokex" / relative
            assert bundled.read_bytes() == path.read_bytes(), f"{bundled} differs from source"


def test_the_layer_ships_no_tooling(site: Path) -> None:
    """The CLI, local mode, the Kong generator and the workload client stay out of the
    layer (issue 10); the handlers are in the functions' assets, not here either."""
    assert (site / "tokex" / "__init__.py").is_file()
    shipped = {p.name for p in (site / "tokex").iterdir()}
    assert not shipped & TOOLING, f"tooling in the layer: {sorted(shipped & TOOLING)}"
    assert not (site / "tokex_functions").exists()


def _host_site_for(site: Path, stage: Path) -> Path:
    """`stage` holding the layer's `tokex` and, for every other top-level name of the
    layer, this machine's installed copy (the layer's native code is for arm64), plus
    the AWS SDK the Lambda runtime provides: the layer's import graph, runnable here."""
    host = Path(sysconfig.get_paths()["purelib"])
    names = {p.name.split(".")[0] for p in site.iterdir() if not p.name.endswith(".dist-info")}
    names.discard("bin")
    names |= set(RUNTIME_PROVIDED) | AWS_SDK_DEPENDENCIES
    for name in sorted(names - {"tokex"}):
        for entry in [host / name, *host.glob(f"{name}.py"), *host.glob(f"{name}.*.so")]:
            if entry.exists():
                (stage / entry.name).symlink_to(entry)
    (stage / "tokex").symlink_to(site / "tokex")
    return stage


def test_every_runtime_module_imports_from_the_layer_alone(site: Path, tmp_path: Path) -> None:
    """Every module of the layer's `tokex` imports with nothing but the layer's packages
    and the runtime's AWS SDK on the path: the runtime needs none of the tooling left out,
    nor anything the layer does not bundle."""
    modules = sorted(
        ".".join(("tokex", *p.relative_to(site / "tokex").with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for p in (site / "tokex").rglob("*.py")
    )
    # The layer's own native code is for arm64: its other packages come from this machine.
    roots = [_host_site_for(site, tmp_path)]
    script = (
        "import importlib, sys\n"
        f"sys.path[:0] = {[str(r) for r in roots]!r}\n"
        "failed = []\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "tokex = importlib.import_module('tokex')\n"
        "assert tokex.__file__.startswith(sys.path[0]), tokex.__file__\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    # -I -S: no site-packages, no .pth files, so no editable install of the checkout.
    # -B: this interpreter's bytecode must not be written into the synthesized layer.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"AWS_DEFAULT_REGION": "us-east-1", "PATH": os.environ.get("PATH", "")},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_layer_ships_the_runtimes_bytecode(site: Path) -> None:
    """With the runtime's CPython on this machine (pyenv's 3.13 on CI), every module of
    the layer has its hash-based, unchecked `.pyc` for that version; without it, none."""
    compiler = runtime_compiler(checks.RUNTIME.removeprefix("python"))
    if compiler is None:
        assert not list(site.rglob("*.pyc")), "bytecode without the runtime's interpreter"
        pytest.skip("no CPython of the runtime's version here: the layer ships sources only")
    sources = checks.check_runtime_bytecode(site, compiler)
    assert any(p.parts[-2] == "tokex" for p in sources)


def test_a_cold_start_uses_the_shipped_bytecode(site: Path, tmp_path: Path) -> None:
    """As Lambda meets the layer (read-only, nothing written): importing its modules with
    the runtime's CPython compiles no source at all - every code object comes from the
    shipped `.pyc` - and leaves the tree as it was."""
    compiler = runtime_compiler(checks.RUNTIME.removeprefix("python"))
    if compiler is None:
        pytest.skip("no CPython of the runtime's version here: the layer ships sources only")
    # Modules that import with the standard library alone (the layer's native code is
    # arm64): the SigV4 path's rules, and a dependency's pure-Python package.
    loaded = checks.cold_import(
        compiler, site, ["tokex", "asn1crypto"], list(BYTECODE_PROBE_MODULES), tmp_path
    )
    assert len(loaded) > len(BYTECODE_PROBE_MODULES)
