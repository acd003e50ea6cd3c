"""Runs the property-based fuzzers with many inputs per target and counts the outcomes.

    python -m benchmarks.fuzz [--examples 10000] [--target NAME ...] [--no-handlers]

From the repository root. The targets are those of tests/unit/test_fuzz.py (form parser,
subject token, signed-request rules, IMDS evidence parsers, introspection), run under the
`fuzz` Hypothesis profile of tests/conftest.py (10,000 inputs each), plus two targets
through the real exchange and introspect handlers on the emulated AWS of `tokex local`
(benchmarks/fuzz_handlers.py). Per target it prints the inputs tried, typed refusals,
accepted inputs (parsed or verified, where the target allows that), 5xx (untyped
exceptions or 5xx statuses) and tokens (a token or an `active: true` answer for input that
has no right to one). Exit status 1 if any target failed: the falsifying input, shrunk
by Hypothesis, is printed (counts then include Hypothesis' replays while shrinking).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from hypothesis import settings

from tests.conftest import FUZZ_EXAMPLES, FUZZ_PROFILE
from tests.unit.test_fuzz import (
    TARGETS,
    FuzzTarget,
    Outcome,
    ServerError,
    TokenIssued,
    run_target,
)

HANDLER_TARGETS = ("handler-token", "handler-introspect")
COLUMNS = ("target", "inputs", "refused", "accepted", "5xx", "tokens", "seconds", "result")


@dataclass
class Tally:
    target: str
    inputs: int = 0
    refused: int = 0
    accepted: int = 0
    server_errors: int = 0
    tokens: int = 0
    seconds: float = 0.0
    failure: str = ""

    def counting(self, target: FuzzTarget) -> FuzzTarget:
        """`target` with every input's fate counted here."""

        def probe(value: Any) -> Outcome:
            self.inputs += 1
            try:
                outcome = target.probe(value)
            except TokenIssued:
                self.tokens += 1
                raise
            except ServerError:
                self.server_errors += 1
                raise
            except AssertionError:  # a broken property of another kind
                raise
            except Exception:  # untyped: the handler would answer it with a 503
                self.server_errors += 1
                raise
            if outcome is Outcome.REFUSED:
                self.refused += 1
            else:
                self.accepted += 1
            return outcome

        return FuzzTarget(target.name, target.strategy, probe)

    def row(self) -> tuple[str, ...]:
        counts = (self.inputs, self.refused, self.accepted, self.server_errors, self.tokens)
        result = "FAILED" if self.failure else "ok"
        return (self.target, *map(str, counts), f"{self.seconds:.0f}", result)


def table_line(cells: tuple[str, ...]) -> str:
    name, *numbers, result = cells
    return f"{name:<24}" + "".join(f"{cell:>9}" for cell in numbers) + f"  {result}"


def run(target: FuzzTarget) -> Tally:
    tally = Tally(target.name)
    started = time.perf_counter()
    try:
        run_target(tally.counting(target))
    except Exception as err:  # the shrunk failure Hypothesis re-raises, with its input
        notes = "\n".join(getattr(err, "__notes__", []))
        tally.failure = f"{type(err).__name__}: {err}\n{notes}".strip()
    tally.seconds = time.perf_counter() - started
    return tally


@contextlib.contextmanager
def quiet_handlers() -> Iterator[TextIO]:
    """The real stdout for the report; the handlers' audit lines and EMF metrics (one
    each per request) go nowhere. The environment is read when the handlers load."""
    report = sys.stdout
    os.environ.update(POWERTOOLS_METRICS_DISABLED="true", POWERTOOLS_LOG_LEVEL="CRITICAL")
    # Disabled metrics still pile up until Powertools' 100-value limit, which prints them
    # and warns at the next flush (see benchmarks/exchange.py).
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    # ...and with metrics disabled the flush never clears the `outcome` dimension either.
    warnings.filterwarnings("ignore", message="Dimension 'outcome' has already been added")
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield report


def main(argv: list[str] | None = None) -> int:
    names = [target.name for target in TARGETS] + list(HANDLER_TARGETS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--examples",
        type=int,
        default=FUZZ_EXAMPLES,
        help=f"inputs per target (default {FUZZ_EXAMPLES}: the `fuzz` profile)",
    )
    parser.add_argument(
        "--target", action="append", choices=names, help="only this target (repeatable)"
    )
    parser.add_argument(
        "--no-handlers", action="store_true", help="skip the targets that need the emulator"
    )
    args = parser.parse_args(argv)
    chosen = set(args.target or names)
    if args.no_handlers:
        chosen -= set(HANDLER_TARGETS)

    settings.register_profile(
        "fuzz-command", settings.get_profile(FUZZ_PROFILE), max_examples=args.examples
    )
    settings.load_profile("fuzz-command")

    tallies: list[Tally] = []
    with quiet_handlers() as report:
        print(f"fuzzing {len(chosen)} targets, {args.examples} inputs each", file=report)
        print(table_line(COLUMNS), file=report, flush=True)

        def record(tally: Tally) -> None:
            tallies.append(tally)
            print(table_line(tally.row()), file=report, flush=True)

        for target in TARGETS:
            if target.name in chosen:
                record(run(target))
        if chosen & set(HANDLER_TARGETS):
            from benchmarks.fuzz_handlers import handler_targets

            with handler_targets() as targets:
                for target in targets:
                    if target.name in chosen:
                        record(run(target))

        failed = [tally for tally in tallies if tally.failure]
        total = sum(tally.inputs for tally in tallies)
        server_errors = sum(tally.server_errors for tally in tallies)
        tokens = sum(tally.tokens for tally in tallies)
        print(
            f"total: {total} inputs, {server_errors} 5xx, {tokens} tokens, "
            f"{len(failed)} failed targets",
            file=report,
        )
        for tally in failed:
            print(f"\n{tally.target} FAILED\n{tally.failure}", file=report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
