"""POST /token — RFC 8693 token exchange (contract.md). Thin: HTTP in, core, HTTP out."""

from __future__ import annotations

import base64
import binascii
import json
import time

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from tokex.errors import InvalidRequest, MethodNotAllowed, TemporarilyUnavailable, TokexError
from tokex.exchange import ExchangeAudit
from tokex.service import build_token_exchange
from tokex.settings import Settings
from tokex.token_request import parse_token_request

logger = Logger()
metrics = Metrics()
tracer = Tracer()
app = APIGatewayHttpResolver()

# Cold start: settings parsed once; adapters built once and reused while warm.
settings = Settings.from_env()
token_exchange = build_token_exchange(settings)

# RFC 6749 §5.1 / §5.2: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@app.post("/token")
@tracer.capture_method
def token() -> Response:
    started = time.perf_counter()
    audit = ExchangeAudit()
    try:
        request = parse_token_request(_body_bytes(), app.current_event.headers.get("content-type"))
        issued = token_exchange.exchange(request, audit)
    except TokexError as err:
        _audit("refused", audit, started, error=err.error, reason=err.reason)
        return _error_response(err)
    _audit("issued", audit, started)
    return _json(200, issued.response())


@app.route("/token", method=["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def token_wrong_method() -> Response:
    response = _error_response(MethodNotAllowed("use POST for the token endpoint"))
    response.headers["Allow"] = "POST"
    return response


@app.not_found
def not_found(_: Exception) -> Response:
    return _json(404, {"error": "invalid_request", "error_description": "no such endpoint"})


@app.exception_handler(Exception)
def unexpected(err: Exception) -> Response:
    # A bug must not hand out anything nor leak a trace: fail closed, log it whole here.
    logger.exception("unexpected error", extra={"outcome": "error"})
    return _error_response(TemporarilyUnavailable("internal error, retry later", reason="bug"))


def _body_bytes() -> bytes:
    event = app.current_event
    raw = event.body or ""
    if not event.is_base64_encoded:
        return raw.encode("utf-8", errors="surrogateescape")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the request body could not be decoded", reason="body") from None


def _audit(outcome: str, audit: ExchangeAudit, started: float, **extra: str) -> None:
    """One structured audit line per exchange, and the exchanges-by-outcome metric."""
    logger.info(
        "token exchange",
        extra={
            "outcome": outcome,
            "principal": audit.principal,
            "account": audit.account,
            "audience": audit.audience,
            "policy": audit.policy,
            "instance": audit.instance,
            "jti": audit.jti,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            **extra,
        },
    )
    metrics.add_metric(name=f"Exchange_{outcome}", unit=MetricUnit.Count, value=1)


def _error_response(err: TokexError) -> Response:
    return _json(err.status, err.body(), {**err.headers()})


def _json(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type="application/json",
        body=json.dumps(body, separators=(",", ":")),
        headers={**NO_STORE, **(headers or {})},
    )


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
