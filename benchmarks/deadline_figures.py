"""The deadline (docs/contract.md, *Deadline*): how long after TOKEX_DEADLINE_SECONDS a
request whose upstream stopped answering gets its 503. The contract allows 0.5 s, for the
write that gives a signed request back when KMS was the slow one.

Each upstream of a warm exchange in turn is held unanswered by the benchmark's proxy
(`stall`); the exchange function, loaded with a 1 s deadline, answers each request with
a fresh signed request. The figure is the slowest answer's time past the deadline.
"""

from __future__ import annotations

import json
import time

from benchmarks.figures import Figure, at_most
from benchmarks.proxied_local import CONTEXT, BenchSystem

DEADLINE_SECONDS = 1.0
ALLOWED_PAST_DEADLINE_MS = 500  # docs/contract.md, *Deadline*
IN_TIME = "the request could not be completed in time; retry later"
# A warm exchange's upstreams on its critical path: STS, then the Sign and the admission
# write at once (the Sign stalled: the write is given back after the deadline).
STALLED = ("sts:GetCallerIdentity", "kms:Sign", "dynamodb:TransactWriteItems")


def deadline_figures(system: BenchSystem, runs: int) -> list[Figure]:
    system.proxy.set_delay(0)
    figures = []
    with system.token_function(TOKEX_DEADLINE_SECONDS=f"{DEADLINE_SECONDS:g}"):
        system.exchange(system.token_event())  # warm: its key and policies loaded
        for operation in STALLED:
            system.proxy.stall(operation)
            try:
                past = [_past_deadline(system) for _ in range(runs)]
            finally:
                system.proxy.stall("")
            figures.append(
                at_most(
                    f"deadline: its 503 this long after it, {operation} not answering (slowest)",
                    max(past) * 1000,
                    "ms",
                    ALLOWED_PAST_DEADLINE_MS,
                )
            )
    return figures


def _past_deadline(system: BenchSystem) -> float:
    """Seconds past the deadline at which one exchange answered its 503."""
    event = system.token_event()
    started = time.perf_counter()
    answer = system.token_handler()(event, CONTEXT)
    took = time.perf_counter() - started
    body = json.loads(answer["body"])
    if answer["statusCode"] != 503 or body.get("error_description") != IN_TIME:
        raise RuntimeError(f"a stalled upstream was answered {answer['statusCode']}: {body}")
    return took - DEADLINE_SECONDS
