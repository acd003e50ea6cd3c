"""A function's handler run in a fresh interpreter, as Lambda loads it at a cold start:
with the settings it needs to load, and no AWS behind them (nothing it does at import or
for a refused request calls AWS). Standard library only, so unit tests may use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
# The start of a probe: `handler`, the module loaded from its file (the probe's argv[1]),
# and `Context`, the context an invocation gets.
LOAD_HANDLER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
handler = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler)
class Context:
    function_name = "tokex"; memory_limit_in_mb = 512; aws_request_id = "probe"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:tokex"
    function_version = "$LATEST"; log_group_name = log_stream_name = "probe"
    def get_remaining_time_in_millis(self): return 10_000
"""
HANDLERS = sorted(FUNCTIONS.glob("*/handler.py"))
SETTINGS = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "POWERTOOLS_METRICS_DISABLED": "true",
    # As deployed (cdk/tokex_stack.py): without a namespace, the 100th metric of one
    # environment fails Powertools' schema check and that request is a 503.
    "POWERTOOLS_METRICS_NAMESPACE": "tokex",
    "TOKEX_ISSUER": "https://issuer.example",
    "TOKEX_SIGNING_KEY_ID": "alias/tokex-signing",
    "TOKEX_POLICY_TABLE": "policies",
    "TOKEX_STATE_TABLE": "state",
    "TOKEX_JWKS_BUCKET": "issuer-documents",
}


def run_probe(script: str, handler: Path, *argv: str, env: Mapping[str, str] | None = None) -> Any:
    """Runs `script` (the handler's path is its argv[1], then `argv`) with `python -B` and
    those settings (and `env`) alone; the JSON its last line prints."""
    return run_probe_lines(script, handler, *argv, env=env)[-1]


def run_probe_lines(
    script: str, handler: Path, *argv: str, env: Mapping[str, str] | None = None
) -> list[Any]:
    """`run_probe`, and every line it prints, each JSON (the function's log lines)."""
    result = subprocess.run(
        [sys.executable, "-B", "-c", script, str(handler), *argv],
        env={"PATH": os.environ.get("PATH", ""), **SETTINGS, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.strip().splitlines()]
