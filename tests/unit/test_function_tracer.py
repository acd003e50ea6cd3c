"""The functions' tracer: the X-Ray SDK loads only when the deployment traces in the
function (`tracing` "sdk"), so the default cold start never pays for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from tokex_functions.tracing import FunctionTracer
def handler(event, context):
    return "answered"
tracer = FunctionTracer()
wrapped = tracer.capture_lambda_handler(handler)
method = tracer.capture_method(handler)
print(json.dumps({
    "xray_loaded": "aws_xray_sdk.core" in sys.modules,
    "has_tracer": tracer.tracer is not None,
    "handler_unchanged": wrapped is handler and method is handler,
}))
"""


def probe(trace_disabled: str | None) -> dict[str, bool]:
    """A fresh interpreter (nothing imported yet) builds the functions' tracer."""
    env = {k: v for k, v in os.environ.items() if k != "POWERTOOLS_TRACE_DISABLED"}
    if trace_disabled is not None:
        env["POWERTOOLS_TRACE_DISABLED"] = trace_disabled
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, bool] = json.loads(out)
    return result


@pytest.mark.parametrize("value", ["true", "True", "1"])
def test_disabled_tracing_never_loads_the_xray_sdk(value: str) -> None:
    assert probe(value) == {"xray_loaded": False, "has_tracer": False, "handler_unchanged": True}


@pytest.mark.parametrize("value", ["false", None])
def test_sdk_tracing_wraps_the_handler_with_powertools(value: str | None) -> None:
    assert probe(value) == {"xray_loaded": True, "has_tracer": True, "handler_unchanged": False}
