"""Loads the Lambda handlers from `functions/` exactly as Lambda would: by file, once."""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import tokex

_counter = itertools.count()


def functions_dir() -> Path:
    """`functions/` of the source checkout that this `tokex` package was installed from."""
    root = Path(tokex.__file__).resolve().parents[3]
    path = root / "functions"
    if not (path / "exchange" / "handler.py").is_file():
        raise FileNotFoundError(
            "the Lambda handlers were not found next to the tokex package; local mode runs "
            "from a source checkout installed with `pip install -e .`"
        )
    return path


def load_handler(name: str) -> ModuleType:
    """A fresh import of `functions/<name>/handler.py`: a cold start. The environment the
    handler reads must be set before this is called."""
    path = functions_dir() / name / "handler.py"
    spec = importlib.util.spec_from_file_location(f"tokex_fn_{name}_{next(_counter)}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class LambdaContext:
    """The attributes of Lambda's context object that Powertools reads."""

    function_name: str
    memory_limit_in_mb: int = 512
    aws_request_id: str = "local"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:tokex-local"
    function_version: str = "$LATEST"
    log_group_name: str = "local"
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000
