"""Measures the exchange against the local system: cold start, warm latency, memory.

    python benchmarks/exchange.py [--requests 200]

Cold start = a fresh interpreter importing the exchange handler (settings, adapters,
Powertools) — what Lambda pays before the first request. Warm latency = POST /token
through the HTTP front, the real handler, moto STS/KMS (SigV4 checked) on loopback; it
includes the emulator's own time, so it bounds tokex's share from above. Results are
printed, never asserted: see docs/performance.md for the numbers on the reference machine.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib.util
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokex.client.token_client import request_token
from tokex.local.emulator import SubprocessMotoServer
from tokex.local.functions import FUNCTIONS_PACKAGE
from tokex.local.runner import start_local

# What the exchange function's handler setting names (cdk/functions.py): Lambda's runtime
# imports it by name, so the `tokex_functions` package comes first.
HANDLER_MODULE = f"{FUNCTIONS_PACKAGE}.exchange.handler"
# The variable Lambda's runtime process has (functions/collector.py reads it); the address
# is never used.
LAMBDA_RUNTIME = {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"}

COLD_START = """
import time, resource
started = time.perf_counter()
import importlib, sys
module = importlib.import_module(sys.argv[1])
elapsed = time.perf_counter() - started
print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def compile_tokex_bytecode() -> None:
    """Bytecode for the installed `tokex` and `tokex_functions`, as the layer and the
    function's asset ship it (docs/deploy.md, *Bytecode in the layer*; the dependencies'
    came with their install). An editable install has none until something imports it
    without `-B`, and the cold processes below write none: without this, each would
    compile tokex from source, which Lambda never does."""
    for package in ("tokex", FUNCTIONS_PACKAGE):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations
        for folder in spec.submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def cold_start(env: dict[str, str], runs: int = 5) -> tuple[float, float]:
    compile_tokex_bytecode()
    times, rss = [], []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-B", "-c", COLD_START, HANDLER_MODULE],
            env={**env, **LAMBDA_RUNTIME},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        times.append(float(out[0]))
        rss.append(int(out[1]) / 1024)
    return statistics.median(times), statistics.median(rss)


# The exchange handler loaded as Lambda's runtime loads it (the module named in argv[1]),
# and the context an invocation gets: the start of both scripts below.
LOAD_HANDLER = """
module = importlib.import_module(sys.argv[1])
class Context:
    function_name = "tokex-exchange"; memory_limit_in_mb = 512; aws_request_id = "bench"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:tokex-exchange"
    function_version = "$LATEST"; log_group_name = log_stream_name = "bench"
    def get_remaining_time_in_millis(self): return 10_000
"""
# Cold start as Lambda meets it (issue 11): the handler's import plus its first
# invocation, a real exchange, in a fresh interpreter with Lambda's runtime variable that
# reads tokex's bytecode and writes none (-B); against a fresh interpreter importing
# exactly the handler's dependencies. Timed inside the process: the interpreter's own
# start-up is the same for both.
FIRST_INVOCATION = (
    """
import time
started = time.perf_counter()
import importlib, json, resource, sys
"""
    + LOAD_HANDLER
    + """with open(sys.argv[2]) as event:
    event = json.load(event)
loaded = time.perf_counter()
status = module.lambda_handler(event, Context())["statusCode"]
answered = time.perf_counter()
print(answered - started, answered - loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      status)
"""
)
DEPENDENCY_IMPORTS = (
    "import boto3; from aws_lambda_powertools import Logger, Metrics, Tracer; "
    "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver"
)
DEPENDENCIES = f"""
import time
started = time.perf_counter()
{DEPENDENCY_IMPORTS}
elapsed = time.perf_counter() - started
import resource
print(elapsed, 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 200)
"""
# The same with the collector paused first, as the handler pauses it in Lambda's runtime
# (functions/collector.py): the baseline runs with it on, as Python starts; this
# one shows what the pause alone is worth to the same imports.
DEPENDENCIES_COLLECTOR_PAUSED = "import gc; gc.disable()\n" + DEPENDENCIES


# A warm environment's full garbage collection: the handler loaded as Lambda loads it,
# invoked with real exchanges (its first invocation freezes what the environment keeps,
# functions/http_endpoint.py), then one full collection timed as it is, and one with
# nothing frozen: what a warm request that triggers a full collection waits for.
WARM_COLLECTION = (
    """
import gc, importlib, json, sys, time
"""
    + LOAD_HANDLER
    + """for path in sys.argv[2:]:
    with open(path) as event:
        assert module.lambda_handler(json.load(event), Context())["statusCode"] == 200
def collection():
    started = time.perf_counter(); gc.collect(); return time.perf_counter() - started
frozen = collection()  # the first: the heap as the exchanges left it, garbage included
gc.unfreeze()
unfrozen = collection()
print(json.dumps({"frozen": frozen, "unfrozen": unfrozen, "objects": len(gc.get_objects())}))
"""
)


def warm_collection(
    env: dict[str, str], make_event: Callable[[], dict[str, Any]], exchanges: int = 3
) -> dict[str, float]:
    """{"frozen", "unfrozen"} seconds of a full collection in a warm exchange handler's
    process, and the objects it holds."""
    with tempfile.TemporaryDirectory() as scratch:
        events = []
        for index in range(exchanges):
            events.append(Path(scratch) / f"event{index}.json")
            events[-1].write_text(json.dumps(make_event()))
        out = subprocess.run(
            [sys.executable, "-B", "-c", WARM_COLLECTION, HANDLER_MODULE, *map(str, events)],
            env={**env, **LAMBDA_RUNTIME},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


@dataclass(frozen=True)
class ColdStart:
    handler_s: float  # median, import + first invocation
    first_invocation_s: float  # median, the first invocation alone
    dependencies_s: float  # median, the dependencies' import alone
    dependencies_paused_s: float  # median, the same with the collector paused
    handler_max_rss_mib: float


def cold_start_with_first_invocation(
    env: dict[str, str], make_event: Callable[[], dict[str, Any]], runs: int
) -> ColdStart:
    """Runs interleaved (dependencies, handler, ...) so machine load hits both alike."""
    compile_tokex_bytecode()
    env = {**env, **LAMBDA_RUNTIME}
    handler_runs, invocations, dependency_runs, paused_runs, rss = [], [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        event_file = Path(scratch) / "event.json"
        for _ in range(runs):
            dependency_runs.append(_fresh_interpreter(env, DEPENDENCIES)[0])
            paused_runs.append(_fresh_interpreter(env, DEPENDENCIES_COLLECTOR_PAUSED)[0])
            event_file.write_text(json.dumps(make_event()))
            elapsed, invocation, max_rss = _fresh_interpreter(
                env, FIRST_INVOCATION, HANDLER_MODULE, str(event_file)
            )
            handler_runs.append(elapsed)
            invocations.append(invocation)
            rss.append(max_rss)
    return ColdStart(
        statistics.median(handler_runs),
        statistics.median(invocations),
        statistics.median(dependency_runs),
        statistics.median(paused_runs),
        statistics.median(rss),
    )


def _fresh_interpreter(env: dict[str, str], script: str, *argv: str) -> tuple[float, float, float]:
    """(seconds in all, seconds of the first invocation, max RSS MiB) printed by `script`,
    whose first invocation must answer 200."""
    out = subprocess.run(
        [sys.executable, "-B", "-c", script, *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    elapsed, invocation, max_rss_kib, status = out[-4:]
    if status != "200":
        raise RuntimeError(f"the cold handler answered {status}")
    return float(elapsed), float(invocation), int(max_rss_kib) / 1024


def handlers_as_deployed() -> None:
    """The handlers log and emit metrics as a deployment's do (INFO, EMF metrics on), so
    the work of writing their lines is measured; the lines themselves go to stdout, which
    the benchmark sends to /dev/null (a cold-start process's stdout is read for its
    result line, printed last). Powertools warnings stay out of stdout."""
    # Set before start_local loads the handlers, whose Logger reads the level at cold
    # start: the stack's LOG_LEVEL default (cdk/config.py) and metrics on.
    os.environ.update(POWERTOOLS_METRICS_DISABLED="false", POWERTOOLS_LOG_LEVEL="INFO")
    # A flush with nothing to publish (an invocation that added no metric) warns.
    warnings.filterwarnings(
        "ignore", message="No application metrics to publish", category=UserWarning
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    handlers_as_deployed()
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
