"""`python -m benchmarks`: the exchange against the AWS floor, cold start, the client, the
deadline and the deployed size, as a table and as benchmarks/results.json (docs/performance.md).

    python -m benchmarks                                   # full run, a few minutes
    python -m benchmarks --profile small --output /tmp/results.json   # what the suite runs

Targets are ratios or counts measured in the same run; an absolute figure has no target
unless an issue or the contract gives it one. The small profile never writes the committed results.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import sys
import tempfile
import threading
from pathlib import Path

from benchmarks.bundle_size import bundle_figures
from benchmarks.client_figures import client_figures
from benchmarks.deadline_figures import deadline_figures
from benchmarks.exchange import (
    cold_start_with_first_invocation,
    handlers_as_deployed,
    warm_collection,
)
from benchmarks.exchange_figures import (
    Floor,
    Profile,
    calls_per_exchange,
    emulator_calls,
    end_to_end,
    first_exchange_round_trips,
    handler_cpu,
    jwt_calls_per_exchange,
    round_trips,
)
from benchmarks.figures import Figure, at_most, ratio, reported, table, write_json
from benchmarks.proxied_local import BenchSystem, bench_system
from benchmarks.proxy_figures import proxy_figures

RESULTS = Path(__file__).resolve().parent / "results.json"
PROFILES = {
    "full": Profile(
        calls_exchanges=50,
        # Enough that the compared ratios' bootstrap intervals are narrower than the
        # targets' margins on a quiet machine (60 left them straddling).
        latency_samples=200,
        end_to_end_samples=200,
        cpu_samples=300,
        cold_runs=11,
    ),
    "small": Profile(
        calls_exchanges=3,
        latency_samples=3,
        end_to_end_samples=3,
        cpu_samples=3,
        cold_runs=1,
    ),
}
CACHED_CALLS = {"full": 20_000, "small": 200}
DEADLINE_RUNS = {"full": 5, "small": 1}
PROXIED_REQUESTS = {"full": 2_000, "small": 20}
# The handlers' log lines are kept this far back: a run that fails shows the audit line
# of the exchange that failed (it names the upstream), which the error alone does not.
KEPT_LOG_LINES = 40


class RecentLines(io.TextIOBase):
    """A text stream that keeps only the last `maxlen` lines written to it (the front's
    threads write to it at once)."""

    def __init__(self, maxlen: int) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=maxlen)
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            *complete, self._partial = (self._partial + text).split("\n")
            self.lines.extend(complete)
        return len(text)

    def recent(self) -> list[str]:
        with self._lock:
            return [*self.lines, *([self._partial] if self._partial else [])]


def cold_start_figures(system: BenchSystem, runs: int) -> list[Figure]:
    system.proxy.set_delay(0)
    env = {**os.environ, **system.local.handler_env()}
    cold = cold_start_with_first_invocation(env, system.token_event, runs)
    # The stack's `tracing` "sdk": the Powertools tracer loads the X-Ray SDK at cold start.
    sdk_env = {**env, "POWERTOOLS_TRACE_DISABLED": "false"}
    traced = cold_start_with_first_invocation(sdk_env, system.token_event, runs)
    return [
        reported("cold start: handler import + first invocation", cold.handler_s * 1000, "ms"),
        reported("cold start: of which the first invocation", cold.first_invocation_s * 1000, "ms"),
        reported(
            'cold start: the same with tracing "sdk" (X-Ray SDK)', traced.handler_s * 1000, "ms"
        ),
        reported("cold start: its dependencies' import", cold.dependencies_s * 1000, "ms"),
        at_most(
            "cold start / dependencies", ratio(cold.handler_s, cold.dependencies_s), "ratio", 1.15
        ),
        reported(
            "cold start: its dependencies' import with the collector paused, as the handler "
            "pauses it",
            cold.dependencies_paused_s * 1000,
            "ms",
        ),
        reported(
            "cold start / dependencies with the collector paused alike",
            ratio(cold.handler_s, cold.dependencies_paused_s),
            "ratio",
        ),
        reported("cold start: max RSS", cold.handler_max_rss_mib, "MiB"),
    ]


def collection_figures(system: BenchSystem) -> list[Figure]:
    system.proxy.set_delay(0)
    env = {**os.environ, **system.local.handler_env()}
    warm = warm_collection(env, system.token_event)
    return [
        reported("warm handler: a full garbage collection", warm["frozen"] * 1000, "ms"),
        reported("warm handler: the same with nothing frozen", warm["unfrozen"] * 1000, "ms"),
        reported("warm handler: objects it holds", warm["objects"], "objects"),
    ]


def run(profile_name: str, handler_log: RecentLines) -> list[Figure]:
    profile = PROFILES[profile_name]
    handlers_as_deployed()
    figures: list[Figure] = []
    with (
        contextlib.redirect_stdout(handler_log),  # the handlers' log lines
        tempfile.TemporaryDirectory() as state,
        bench_system(Path(state)) as system,
    ):
        floor = Floor(system)
        figures += calls_per_exchange(system, profile.calls_exchanges)
        figures += jwt_calls_per_exchange(system, profile.calls_exchanges)
        figures += round_trips(system, floor, profile)
        figures += end_to_end(system, profile)
        figures += emulator_calls(system, floor, profile)
        figures += handler_cpu(system, floor, profile)
        figures += cold_start_figures(system, profile.cold_runs)
        figures += collection_figures(system)
        figures += client_figures(system, CACHED_CALLS[profile_name])
        figures += proxy_figures(system, PROXIED_REQUESTS[profile_name])
        figures += first_exchange_round_trips(system, profile)
        figures += deadline_figures(system, DEADLINE_RUNS[profile_name])
    figures += bundle_figures()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument(
        "--output", type=Path, help=f"where to write the JSON (default {RESULTS}, full only)"
    )
    args = parser.parse_args()
    output = args.output
    if output is None:
        if args.profile != "full":
            parser.error("--profile small needs --output: it never writes the committed results")
        output = RESULTS
    if args.profile != "full" and output.resolve() == RESULTS:
        parser.error(f"--profile {args.profile} never writes {RESULTS}")
    handler_log = RecentLines(KEPT_LOG_LINES)
    try:
        figures = run(args.profile, handler_log)
    except BaseException:
        print("the handlers' last log lines before the failure:", file=sys.stderr)
        print("\n".join(handler_log.recent()), file=sys.stderr)
        raise
    print(table(figures))
    write_json(figures, output)
    print(f"\nwrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
