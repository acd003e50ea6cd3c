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
    # The line JsonLog writes; JsonLog itself is the proxy's, which needs 3.11.
    record = {
        "time": round(time.time(), 3),
        "event": "extension_failed",
        "error_type": UNSUPPORTED_RUNTIME,
        "error": message,
    }
    sys.stderr.write(json.dumps(record) + "\n")
    runtime_api = environ.get("AWS_LAMBDA_RUNTIME_API")
    if runtime_api:
        try:
            api = ExtensionsApi(runtime_api)
            api.register()
            api.init_error(UNSUPPORTED_RUNTIME, message)
        except ExtensionsApiError:
            pass
    return 1
