"""POST /token — RFC 8693 token exchange (docs/contract.md). Thin: HTTP in, core, HTTP out."""

from __future__ import annotations

import time
from collections.abc import Mapping

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from tokex.deadline import request_deadline
from tokex.edge import NotThroughIssuer, OriginGate
from tokex.errors import MethodNotAllowed, TemporarilyUnavailable, TokexError
from tokex.exchange import ExchangeAudit
from tokex.http_api import NOT_FOUND, event_body, event_response, json_text, no_store
from tokex.service import build_token_exchange
from tokex.settings import Settings
from tokex.token_request import parse_token_request

logger = Logger()
metrics = Metrics()
tracer = Tracer()
app = APIGatewayHttpResolver()

# Cold start: settings parsed once; adapters built once and reused while warm.
settings = Settings.from_env()
origin_gate = OriginGate.from_env()
token_exchange = build_token_exchange(settings)


@app.post("/token")
@tracer.capture_method
def token() -> Response:
    started = time.perf_counter()
    audit = ExchangeAudit()
    try:
        # One time budget for every upstream call of this request (TOKEX_DEADLINE_SECONDS).
        with request_deadline(settings.deadline_seconds):
            request = parse_token_request(
                event_body(app.current_event.body, app.current_event.is_base64_encoded),
                app.current_event.headers.get("content-type"),
            )
            issued = token_exchange.exchange(request, audit)
    except TokexError as err:
        outcome = "unavailable" if isinstance(err, TemporarilyUnavailable) else "refused"
        _audit(outcome, audit, started, error=err.error, reason=err.reason)
        return _error_response(err)
    _audit("issued", audit, started)
    return _json(200, issued.response())


@app.route("/token", method=["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def token_wrong_method() -> Response:
    err = MethodNotAllowed("use POST for the token endpoint", reason="method")
    _audit("refused", ExchangeAudit(), time.perf_counter(), error=err.error, reason=err.reason)
    response = _error_response(err)
    response.headers["Allow"] = "POST"
    return response


@app.not_found
def not_found(_: Exception) -> Response:
    return _json(404, NOT_FOUND)


@app.exception_handler(Exception)
def unexpected(err: Exception) -> Response:
    # A bug must not hand out anything nor leak a trace: fail closed, log it whole here.
    logger.exception("unexpected error", extra={"outcome": "error"})
    return _error_response(TemporarilyUnavailable("internal error, retry later", reason="bug"))


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
    # One metric, one dimension: dashboards and alarms split exchanges by outcome.
    metrics.add_dimension(name="outcome", value=outcome)
    metrics.add_metric(name="Exchanges", unit=MetricUnit.Count, value=1)


def _error_response(err: TokexError) -> Response:
    return _json(err.status, err.body(), {**err.headers()})


def _json(
    status: int, body: Mapping[str, object], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(status, "application/json", json_text(body), no_store(headers))


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    started = time.perf_counter()
    try:
        # The one door: refused before anything else is read unless CloudFront sent it.
        origin_gate.check(event.get("headers") or {})
    except NotThroughIssuer as err:
        _audit("refused", ExchangeAudit(), started, error=err.error, reason=err.reason)
        return event_response(err.status, err.body())
    return app.resolve(event, context)
