"""Measures the exchange against the local system: cold start, warm latency, memory.

    python benchmarks/exchange.py [--requests 200]

Cold start = a fresh interpreter importing the exchange handler (settings, adapters,
Powertools) — what Lambda pays before the first request. Warm latency = POST /token
through the HTTP front, the real handler, moto STS/KMS (SigV4 checked) on loopback; it
includes the emulator's own time, so it bounds tokex's share from above. Results are
printed, never asserted: see docs/benchmarks.md for the numbers on the reference machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from tokex.client.token_client import request_token
from tokex.local.emulator import SubprocessMotoServer
from tokex.local.functions import functions_dir
from tokex.local.runner import start_local

COLD_START = """
import time, resource
started = time.perf_counter()
import importlib.util, sys
spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
elapsed = time.perf_counter() - started
print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def cold_start(env: dict[str, str], runs: int = 5) -> tuple[float, float]:
    handler = functions_dir() / "exchange" / "handler.py"
    times, rss = [], []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", COLD_START, str(handler)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        times.append(float(out[0]))
        rss.append(int(out[1]) / 1024)
    return statistics.median(times), statistics.median(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    # Quiet: the audit lines and EMF metrics would be most of the output. Set before
    # start_local loads the handlers, whose Logger reads the level at cold start.
    os.environ.update(POWERTOOLS_METRICS_DISABLED="true", POWERTOOLS_LOG_LEVEL="WARNING")
    # Disabled metrics are not enough: Powertools' flush then neither prints nor clears the
    # metric set, so values pile up until its 100-value limit, where `add_metric` prints
    # the EMF blob anyway (whatever POWERTOOLS_METRICS_DISABLED says) and clears it; the
    # flush right after warns that there is nothing to publish. Swallow both: stdout
    # carries only the result.
    warnings.filterwarnings(
        "ignore", message="No application metrics to publish", category=UserWarning
    )
    with (
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
        tempfile.TemporaryDirectory() as state,
    ):
        system = start_local(port=0, state_dir=Path(state), moto=SubprocessMotoServer())
        threading.Thread(target=system.serve_forever, daemon=True).start()
        try:
            env = {**os.environ, **system.deployment.handler_env(system.issuer)}
            cold, cold_rss = cold_start(env)
            session = system.deployment.workload.session()
            request_token(system.issuer, "demo-api", session=session, issuer=system.issuer)
            latencies = []
            for _ in range(args.requests):
                started = time.perf_counter()
                request_token(system.issuer, "demo-api", session=session, issuer=system.issuer)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            system.stop()
    latencies.sort()
    result = {
        "cold_start_import_s": round(cold, 3),
        "cold_start_max_rss_mib": round(cold_rss, 1),
        "warm_requests": args.requests,
        "warm_p50_ms": round(statistics.median(latencies), 1),
        "warm_p95_ms": round(latencies[int(len(latencies) * 0.95) - 1], 1),
        "warm_max_ms": round(latencies[-1], 1),
        "process_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
