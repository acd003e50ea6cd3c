"""`python -m tokex.extension`: what the layer's launcher (`extensions/tokex-proxy`) runs."""

import time

# Before any import: `init_ms` counts the extension's imports too.
STARTED = time.monotonic()

import contextlib  # noqa: E402
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

status = main(started=STARTED)
# Lambda kills the process at the SHUTDOWN event's deadline, and main keeps only
# EXIT_MARGIN_SECONDS of it for the exit. The interpreter's own exit (atexit handlers,
# module teardown, the collector over everything still alive, a thread still blocked on a
# late upstream) has no bound, and runs on the function's small share of a vCPU: on a
# loaded machine it outlasted the margin. So the process ends here, once its log is out.
for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
        stream.flush()
os._exit(status)
