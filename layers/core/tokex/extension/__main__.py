"""`python -m tokex.extension`: what the layer's launcher (`extensions/tokex-proxy`) runs."""

import time

# Before any import: `init_ms` counts the extension's imports too.
STARTED = time.monotonic()

import os  # noqa: E402
import sys  # noqa: E402

from tokex.extension import unsupported  # noqa: E402

if not unsupported.is_supported(sys.version_info):
    sys.exit(unsupported.refuse(os.environ, sys.version_info))

# Only on a Python that can import it (the import stays below the check).
try:
    from tokex.extension.main import main
except ImportError as missing:  # botocore, in a container image that lacks it
    sys.exit(unsupported.refuse_missing(os.environ, missing))

sys.exit(main(started=STARTED))
