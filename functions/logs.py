r"""The functions' structured log: Powertools' JSON lines, written in ASCII.

A logged field can carry text a caller chose (a JWT header's `kid` is JSON, where
`"\ud800"` decodes to a lone surrogate). Powertools writes non-ASCII as it is, and a lone
surrogate cannot be written as UTF-8: logging then drops the whole line, so a caller could
keep its own requests out of the audit trail. As JSON escapes every line is written, and
it reads back as the same text.
"""

from __future__ import annotations

import functools
import json

from aws_lambda_powertools import Logger

ascii_json = functools.partial(json.dumps, default=str, separators=(",", ":"), ensure_ascii=True)


def function_logger() -> Logger:
    return Logger(json_serializer=ascii_json)
