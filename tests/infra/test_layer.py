"""The core layer bundle: arm64 wheels for the runtime's CPython, the tokex package, no
AWS SDK (the runtime provides it)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.infra import checks
from tests.infra.conftest import REPO_ROOT, Synthesized

pytestmark = pytest.mark.infra

ELFCLASS64 = 2
ELFDATA2LSB = 1
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")


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
    source = REPO_ROOT / "layers" / "core" / "tokex"
    if _layer_inputs_hash() != default_synth.layer_inputs_hash:
        pytest.skip("the core library changed while the tests ran; cannot compare sources")
    for path in source.rglob("*.py"):
        if "__pycache__" not in path.parts:
            bundled = site / "tokex" / path.relative_to(source)
            assert bundled.read_bytes() == path.read_bytes(), f"{bundled} differs from source"
    assert not list((site / "tokex").rglob("__pycache__"))
