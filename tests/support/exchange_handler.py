"""Driving a freshly loaded exchange handler directly, as API Gateway would.

Tests that need a handler with other settings than the running system's (another signing
key, an upstream pointed at a closed port, a small rate limit) cold-start their own copy
of `functions/exchange/handler.py` against the same emulator and invoke it with API
Gateway HTTP API v2 events.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from types import ModuleType
from typing import Any

from tokex.client.signing import encode_subject_token
from tokex.local.front import http_api_event
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.runner import LocalSystem, handler_environment
from tokex.ratelimit import WINDOW_SECONDS
from tokex.token_request import JWT_TOKEN_TYPE, SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT


def wait_for_room_in_the_rate_window(seconds: float = 10.0) -> None:
    """Sleep into the next one-minute rate window if this one ends within `seconds`: a test
    that spends a budget and expects the next request refused must not see it renewed."""
    left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left < seconds:
        time.sleep(left + 0.05)


def cold_exchange_handler(system: LocalSystem, **overrides: str) -> ModuleType:
    """A cold start of the exchange handler with the system's settings plus `overrides`."""
    with handler_environment(system.handler_env(**overrides)):
        return load_handler("exchange")


def invoke_jwt_exchange(
    handler: ModuleType, token: str, audience: str = "demo-api"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST /token with a JWT as the subject token into `handler`."""
    return _invoke(
        handler,
        {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token_type": JWT_TOKEN_TYPE,
            "subject_token": token,
            "audience": audience,
        },
    )


def invoke_exchange(
    handler: ModuleType,
    signed: dict[str, Any],
    audience: str = "demo-api",
    *,
    path: str = "/token",
    **params: str,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST `path` (/token) into `handler`: (status, headers, JSON body)."""
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": encode_subject_token(signed),
        "audience": audience,
        **params,
    }
    return _invoke(handler, form, path)


def _invoke(
    handler: ModuleType, form: dict[str, str], path: str = "/token"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    event = http_api_event(
        "POST",
        path,
        "",
        {"content-type": "application/x-www-form-urlencoded"},
        urllib.parse.urlencode(form).encode(),
        "127.0.0.1",
    )
    result = handler.lambda_handler(event, LambdaContext("tokex-exchange"))
    return result["statusCode"], result["headers"], json.loads(result["body"])
