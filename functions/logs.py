r"""The functions' structured log: Powertools' JSON lines, written in ASCII.

A logged field can carry text a caller chose (a JWT header's `kid` is JSON, where
`"\ud800"` decodes to a lone surrogate). Powertools writes non-ASCII as it is, and a lone
surrogate cannot be written as UTF-8: logging then drops the whole line, so a caller could
keep its own requests out of the audit trail. As JSON escapes every line is written, and
it reads back as the same text.

Each request's audit line is written at INFO (docs/deploy.md "Operating it"), so no log
level may be above it: a function given one (`LOG_LEVEL` or `POWERTOOLS_LOG_LEVEL` set by
hand; the stack's `logLevel` allows only DEBUG and INFO) logs at INFO instead and says
so once, rather than drop the audit trail and every 503's reason with it.
"""

from __future__ import annotations

import functools
import json
import logging

from aws_lambda_powertools import Logger

ascii_json = functools.partial(json.dumps, default=str, separators=(",", ":"), ensure_ascii=True)


def function_logger() -> Logger:
    logger = Logger(json_serializer=ascii_json)
    if logger.log_level > logging.INFO:
        chosen = logging.getLevelName(logger.log_level)
        logger.setLevel(logging.INFO)
        if logger.log_level > logging.INFO:
            # Lambda's advanced logging controls (AWS_LAMBDA_LOG_LEVEL) win over setLevel,
            # and Lambda filters the lines itself: only the function's configuration helps.
            logger.warning(
                f"Lambda's application log level {chosen} (AWS_LAMBDA_LOG_LEVEL) drops the"
                " audit trail, which is written at INFO: set it to INFO or DEBUG"
            )
        else:
            logger.warning(
                f"log level {chosen} would drop the audit trail, which is written at INFO:"
                " logging at INFO"
            )
    return logger
