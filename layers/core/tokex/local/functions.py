"""Loads the Lambda handlers of the installed `tokex_functions` package as Lambda would:
by file, once per cold start.

They are the files cdk/functions.py puts in each function's asset, found through the
import system (an editable install maps the package to functions/ of the checkout, a
wheel to site-packages), never through the repository's folder layout.
"""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

FUNCTIONS_PACKAGE = "tokex_functions"

_counter = itertools.count()


def functions_dir() -> Path:
    """The folder of the installed `tokex_functions` package (one subfolder per function)."""
    spec = importlib.util.find_spec(FUNCTIONS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the Lambda handlers ({FUNCTIONS_PACKAGE}) are not installed; reinstall tokex "
            "(`pip install -e .` from the checkout)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def handler_path(name: str) -> Path:
    """`tokex_functions/<name>/handler.py`, the module the function's Lambda handler names."""
    path = functions_dir() / name / "handler.py"
    if not path.is_file():
        raise FileNotFoundError(f"no handler for the function {name!r} at {path}")
    return path


def load_handler(name: str) -> ModuleType:
    """A fresh import of the function's handler module: a cold start. The environment the
    handler reads must be set before this is called. Its shared plumbing
    (`tokex_functions.http_endpoint`) is imported normally: it keeps no state of its own
    but the process's one garbage-collector freeze, after the first invocation."""
    path = handler_path(name)
    spec = importlib.util.spec_from_file_location(
        f"{FUNCTIONS_PACKAGE}.{name}.handler_cold_start_{next(_counter)}", path
    )
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
