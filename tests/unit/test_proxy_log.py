"""tokex/proxy/log.py: one JSON line per event, whatever the fields hold."""

from __future__ import annotations

import io
import json

from tokex.proxy.log import JsonLog


def test_a_log_line_holding_a_lone_surrogate_is_written_whole() -> None:
    """JSON can carry a lone surrogate (tokex's answer, say), which no UTF-8 stream takes:
    the line is written in ASCII, never dropped."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    JsonLog(stream).write("token_failed", description="tokex said \ud800 caf\u00e9")
    line = json.loads(raw.getvalue())
    assert line["description"] == "tokex said \ud800 café" and raw.getvalue().isascii()
