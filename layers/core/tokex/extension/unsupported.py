"""An extension started by a Python too old for the layer's code: reported to Lambda as an
init error rather than left to die on an import.

Lambda does not hold a layer to its compatible runtimes: a python3.10 function given the
layer by ARN starts the extension on its own interpreter, where the proxy's first import
(`tomllib`, 3.11) fails before it registers, and the function's Init fails with nothing but
a traceback. This module and `api.py` are the standard library only and import on any
Python 3 the runtimes have had (3.8 on).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from tokex.extension.api import ExtensionsApi, ExtensionsApiError

MINIMUM_PYTHON = (3, 11)
UNSUPPORTED_RUNTIME = "Extension.UnsupportedRuntime"
MISSING_DEPENDENCY = "Extension.MissingDependency"


def is_supported(version: tuple[Any, ...]) -> bool:
    return tuple(version[:2]) >= MINIMUM_PYTHON


def refuse(environ: Mapping[str, str], version: tuple[Any, ...]) -> int:
    """Log why, register and report `init/error` (best effort: without the Extensions API
    the log line is all there is); the extension then exits 1."""
    found = ".".join(str(part) for part in version[:3])
    message = (
        f"the tokex proxy extension needs Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or"
        f" later (python3.11-3.13 runtimes); this function's python3 is {found}"
    )
    return _report(environ, UNSUPPORTED_RUNTIME, message)


def refuse_missing(environ: Mapping[str, str], err: ImportError) -> int:
    """The proxy's code cannot be imported on this Python: a module the layer does not
    ship (botocore: the Lambda runtimes have it, a container image may not)."""
    name = err.name or ""
    message = f"the tokex proxy extension cannot import {name or err}"
    if name.partition(".")[0] in ("botocore", "boto3"):
        message += (
            ": the layer ships no botocore (the Lambda Python runtimes have it); a container"
            " image needs botocore 1.41 or later beside the layer's folders"
        )
    return _report(environ, MISSING_DEPENDENCY, message)


def _report(environ: Mapping[str, str], error_type: str, message: str) -> int:
    # The line JsonLog writes; JsonLog itself is the proxy's, which needs 3.11.
    record = {
        "time": round(time.time(), 3),
        "event": "extension_failed",
        "error_type": error_type,
        "error": message,
    }
    sys.stderr.write(json.dumps(record) + "\n")
    runtime_api = environ.get("AWS_LAMBDA_RUNTIME_API")
    if runtime_api:
        try:
            api = ExtensionsApi(runtime_api)
            api.register()
            api.init_error(error_type, message)
        except ExtensionsApiError:
            pass
    return 1
