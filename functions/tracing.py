"""X-Ray tracing inside a function, only when the deployment asks for it.

The stack's `tracing` context (docs/deploy.md) is "lambda" by default: Lambda records
each invocation's segments itself and the function runs no tracer, because loading the
X-Ray SDK (its recorder builds two botocore clients for sampling) adds about 100 ms to
every cold start (docs/performance.md). With "sdk" the stack leaves
POWERTOOLS_TRACE_DISABLED false and the Powertools tracer adds a subsegment for the
handler and each AWS call: botocore's calls through Powertools' patching, the calls tokex
makes over urllib3 (STS's GetCallerIdentity, a trusted issuer's discovery document and
JWKS) through `upstream_call` (tokex/adapters/tracing.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice

Function = TypeVar("Function", bound=Callable[..., Any])


class FunctionTracer:
    """Powertools' `Tracer` decorators, or no-ops when tracing in the function is off."""

    def __init__(self) -> None:
        disabled = resolve_truthy_env_var_choice(
            env=os.getenv("POWERTOOLS_TRACE_DISABLED", "false")
        )
        # Built only when used: constructing a Tracer loads the X-Ray SDK.
        self.tracer = None if disabled else Tracer()

    def capture_lambda_handler(self, handler: Function) -> Function:
        if self.tracer is None:
            return handler
        traced: Function = self.tracer.capture_lambda_handler(handler)
        return traced

    def capture_method(self, method: Function) -> Function:
        if self.tracer is None:
            return method
        traced: Function = self.tracer.capture_method(method)
        return traced

    def upstream_call(self, name: str, host: str) -> AbstractContextManager[object]:
        """The `Traced` of tokex/adapters/tracing.py: a call botocore does not make, as a
        subsegment of its own (namespace `remote`) annotated with the host it went to and
        nothing else (never the request, its headers or its body)."""
        if self.tracer is None:
            return nullcontext()
        return _subsegment(self.tracer, name, host)


@contextmanager
def _subsegment(tracer: Tracer, name: str, host: str) -> Iterator[object]:
    with tracer.provider.in_subsegment(name, namespace="remote") as subsegment:
        subsegment.put_annotation(key="host", value=host)
        yield subsegment
