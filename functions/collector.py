"""The garbage collector over a function's life (docs/performance.md "Results").

Cold start, in Lambda's runtime only: `tokex_functions` is the first module the runtime
imports (the handler setting names `tokex_functions.<function>.handler`), and importing it
pauses the collector until the end of the first invocation. The imports, the clients and
the first request build the ~70,000 objects the environment keeps for its whole life and
almost no garbage (under a thousand unreachable objects), yet with the collector on they
pay some 170 young collections and a full one that scans them all: about a sixth of the
exchange function's cold start (docs/performance.md "Results").

After the first invocation, in every process: `gc.freeze()` takes what exists then out of
every later collection, so a warm request that triggers a full collection no longer scans
the environment. Then the collector resumes if it was paused. The freeze also keeps the
cold start's unreachable objects for good: a few hundred KB at most, once.

Only in the runtime (`AWS_LAMBDA_RUNTIME_API` set), where a process that loads a handler
invokes it: a process that loads handlers without invoking them (the test suite, a
script) would otherwise run with the collector off.
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable, Mapping
from typing import ParamSpec, TypeVar

RUNTIME_API_ENV = "AWS_LAMBDA_RUNTIME_API"

P = ParamSpec("P")
R = TypeVar("R")

_paused = False


def pause_in_lambda_runtime(environ: Mapping[str, str] = os.environ) -> None:
    """Turns the collector off until `freeze_environment`, inside Lambda's runtime only
    (and only if it was on: a collector someone else turned off stays off)."""
    global _paused
    if environ.get(RUNTIME_API_ENV) and gc.isenabled():
        gc.disable()
        _paused = True


@functools.cache
def freeze_environment() -> None:
    """After a process's first invocation: what the environment keeps for its whole life
    exists by then (the modules, botocore's models, the clients, after a token the signing
    key and the policies too). Only once, as the freeze is the process's: a process that
    loads many handlers (the test suite) would otherwise also freeze, for good, the
    garbage of every one before it."""
    global _paused
    gc.freeze()
    if _paused:
        _paused = False
        gc.enable()


def frozen_after_first_invocation(handler: Callable[P, R]) -> Callable[P, R]:
    """A Lambda handler that calls `freeze_environment` after each invocation, whatever
    the invocation's outcome (only the first does anything)."""

    @functools.wraps(handler)
    def invoke(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return handler(*args, **kwargs)
        finally:
            freeze_environment()

    return invoke
