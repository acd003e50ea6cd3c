"""The size of what a deployment ships for the exchange: its function asset plus the core
layer, built by the same code the CDK app synthesizes with (cdk/functions.py,
cdk/layer_bundling.py; the layer's bundle is cached by its inputs, so only the first run
calls pip)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.figures import Figure, reported

ROOT = Path(__file__).resolve().parent.parent


def _tree_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def bundle_figures() -> list[Figure]:
    # Importing the CDK starts its Node.js runtime, which warns about its version on stderr.
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "1")
    from cdk.functions import RUNTIME, build_function_asset
    from cdk.layer_bundling import CoreLayerBundling

    bundling = CoreLayerBundling(
        project_root=ROOT, python_version=RUNTIME.name.removeprefix("python")
    )
    with tempfile.TemporaryDirectory() as function, tempfile.TemporaryDirectory() as layer:
        build_function_asset("exchange", Path(function))
        function_bytes = _tree_bytes(Path(function))
        bundling.build_into(Path(layer))
        layer_bytes = _tree_bytes(Path(layer))
    mib = 1024 * 1024
    return [
        reported(
            "deployed size: exchange function + layer, unzipped",
            (function_bytes + layer_bytes) / mib,
            "MiB",
        ),
        reported("deployed size: of which the layer", layer_bytes / mib, "MiB"),
    ]
