"""Make the Lambda layers' lock files: `python -m cdk.lock` (from the project root).

The layers install exactly the wheels of their committed lock files (hash-pinned; nothing
is resolved when a layer is built): `layers/core/requirements.lock` for the core layer
(arm64, the functions' runtime Python) and `layers/core/requirements-extension.lock` for the
proxy extension's (pure Python, every runtime it supports). This resolves pyproject.toml's
dependencies for each target with pip, as the bundlers' `_resolve` always did, and writes
both files: a reviewed diff of them is what ships new dependency versions (a dependency's
security fix, a requirement added or raised in pyproject.toml).

`--check` writes nothing: it exits 1, with the difference, when a lock is not what a
resolution now gives (a newer release of a dependency, a pyproject.toml edit).
pip's configuration (index, mirror, certificates) is the machine's, as for a synth.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

from cdk.extension_layer import ExtensionLayerBundling
from cdk.functions import RUNTIME
from cdk.layer_bundling import BUNDLING_FAILED, BundlingError, CoreLayerBundling

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def bundlings(
    project_root: Path = PROJECT_ROOT,
) -> list[CoreLayerBundling | ExtensionLayerBundling]:
    """The bundlers of both layers, whose `lock_text` and `lock_path` are the locks'."""
    return [
        CoreLayerBundling(
            project_root=project_root,
            python_version=RUNTIME.name.removeprefix("python"),
            find_compiler=lambda version: None,  # the lock is not about bytecode
        ),
        ExtensionLayerBundling(project_root=project_root),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdk.lock", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed locks, write nothing"
    )
    args = parser.parse_args(argv)
    stale = False
    try:
        for bundling in bundlings():
            text = bundling.lock_text()
            path = bundling.lock_path
            old = path.read_text(encoding="utf-8") if path.is_file() else ""
            relative = path.relative_to(PROJECT_ROOT)
            if args.check:
                if text != old:
                    stale = True
                    sys.stdout.writelines(
                        difflib.unified_diff(
                            old.splitlines(keepends=True),
                            text.splitlines(keepends=True),
                            f"{relative} (committed)",
                            f"{relative} (resolved now)",
                        )
                    )
                continue
            path.write_text(text, encoding="utf-8")
            print(f"{'unchanged' if text == old else 'wrote'} {relative}", file=sys.stderr)
    except BundlingError as exc:
        text = str(exc)
        print(text[text.index(BUNDLING_FAILED) :], file=sys.stderr)
        return 1
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
