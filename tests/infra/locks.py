"""Lock files for the layer tests' own small projects (a `tokex` package and a pyproject.toml
in a temporary folder): both layers build from committed locks (cdk/lock.py), so such a
project needs them too, written here as `python -m cdk.lock` writes them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cdk.extension_layer import EXTENSION_LOCK, ExtensionLayerBundling
from cdk.layer_bundling import CORE_LOCK, CoreLayerBundling, lock_text

# A pin whose wheel is never downloaded: the tests that build stub pip.
PYJWT_PIN = "pyjwt==2.9.0 --hash=sha256:" + "0" * 64


def write_locks(
    project_root: Path, pins: Sequence[str] = (PYJWT_PIN,), *, python_version: str = "3.13"
) -> tuple[Path, Path]:
    """The core and the extension layer's locks of the project at `project_root` (whose
    pyproject.toml exists), both pinning `pins`; their paths."""
    core = CoreLayerBundling(
        project_root=project_root,
        python_version=python_version,
        cache_dir=project_root / "unused-cache",
        find_compiler=lambda version: None,
    )
    written = []
    for path, target in (
        (project_root / CORE_LOCK, core.target),
        (project_root / EXTENSION_LOCK, ExtensionLayerBundling.target),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(lock_text(layer="test", source="a test", target=target, pins=pins))
        written.append(path)
    return written[0], written[1]
