"""Every function logs in ASCII JSON (functions/logs.py): a field holding text a caller
chose, even a lone surrogate that no UTF-8 stream can write, never drops its line (an
audit line a caller could suppress). Each handler loaded in a fresh interpreter, as
Lambda loads it, writing to a pipe as Lambda's runtime does."""

from __future__ import annotations

import pytest

from tests.support.fresh_handler import (
    FUNCTIONS,
    HANDLERS,
    LOAD_HANDLER,
    run_probe,
    run_probe_lines,
)

PROBE = (
    LOAD_HANDLER
    + """
logger = handler.endpoint.logger if hasattr(handler, "endpoint") else handler.logger
logger.info("probe", extra={"kid": "\\ud800", "audience": "caf\\u00e9"})
"""
)


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda path: path.parent.name)
def test_a_line_with_a_lone_surrogate_is_written_whole(handler) -> None:
    line = run_probe(PROBE, handler)
    assert (line["message"], line["kid"], line["audience"]) == ("probe", "\ud800", "café")


# A request refused before anything is asked of AWS: its audit line.
REFUSED_REQUEST = (
    LOAD_HANDLER
    + """
event = {"version": "2.0", "routeKey": "$default", "rawPath": "/token", "rawQueryString": "",
         "headers": {"content-type": "text/plain"}, "body": "x", "isBase64Encoded": False,
         "requestContext": {"http": {"method": "POST", "path": "/token", "sourceIp": "192.0.2.1"},
                            "requestId": "r", "stage": "$default"}}
handler.lambda_handler(event, Context())
"""
)


@pytest.mark.parametrize("variable", ["LOG_LEVEL", "POWERTOOLS_LOG_LEVEL"])
@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
def test_a_log_level_above_info_still_writes_the_audit_line(variable: str, level: str) -> None:
    handler = FUNCTIONS / "exchange" / "handler.py"
    lines = run_probe_lines(REFUSED_REQUEST, handler, env={variable: level})
    assert lines[0]["level"] == "WARNING" and level in lines[0]["message"]
    audit = lines[-1]
    assert (audit["level"], audit["message"], audit["outcome"]) == (
        "INFO",
        "token exchange",
        "refused",
    )


def test_lambdas_own_log_level_above_info_is_named_not_said_to_be_overridden() -> None:
    """Lambda's advanced logging controls (AWS_LAMBDA_LOG_LEVEL) win over the function's
    own level: the warning said "logging at INFO" while Lambda kept dropping the audit
    line. It now says which setting drops it."""
    handler = FUNCTIONS / "exchange" / "handler.py"
    lines = run_probe_lines(
        REFUSED_REQUEST, handler, env={"AWS_LAMBDA_LOG_LEVEL": "WARN", "LOG_LEVEL": "INFO"}
    )
    warnings = [line for line in lines if line["level"] == "WARNING"]
    assert any("AWS_LAMBDA_LOG_LEVEL" in w["message"] for w in warnings), lines
    assert not any("logging at INFO" in w["message"] for w in warnings)
