"""Every function logs in ASCII JSON (functions/logs.py): a field holding text a caller
chose, even a lone surrogate that no UTF-8 stream can write, never drops its line (an
audit line a caller could suppress). Each handler loaded in a fresh interpreter, as
Lambda loads it, writing to a pipe as Lambda's runtime does."""

from __future__ import annotations

import pytest

from tests.support.fresh_handler import HANDLERS, LOAD_HANDLER, run_probe

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
