"""POST /introspect — RFC 7662 token introspection. Thin: HTTP in, core, HTTP out.

Order of checks: method (405), media type (415), size (413), client authentication (401
`invalid_client`, before anything about the form is said), then the form (400). Every
token problem is a 200 `{"active": false}`, and so is a token of an audience the client
does not serve; only KMS/DynamoDB trouble is a 503.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from tokex.clients import CLIENT_ID, parse_basic_authorization
from tokex.deadline import request_deadline
from tokex.edge import NotThroughIssuer, OriginGate
from tokex.errors import (
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    TemporarilyUnavailable,
    TokexError,
)
from tokex.http_api import NOT_FOUND, event_body, event_response, json_text, no_store
from tokex.introspection import IntrospectionAudit
from tokex.service import build_introspection
from tokex.settings import Settings
from tokex.token_request import MAX_BODY_BYTES, check_content_type, parse_form

logger = Logger()
metrics = Metrics()
tracer = Tracer()
app = APIGatewayHttpResolver()

# Cold start: settings parsed once; adapters built once and reused while warm.
settings = Settings.from_env()
origin_gate = OriginGate.from_env()
introspector, clients = build_introspection(settings)


@app.post("/introspect")
@tracer.capture_method
def introspect() -> Response:
    started = time.perf_counter()
    audit = IntrospectionAudit()
    caller: str | None = None
    try:
        # One time budget for every upstream call of this request (TOKEX_DEADLINE_SECONDS).
        with request_deadline(settings.deadline_seconds):
            headers = app.current_event.headers
            check_content_type(headers.get("content-type"))
            body = event_body(app.current_event.body, app.current_event.is_base64_encoded)
            if len(body) > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes", reason="size")
            client_id, secret = parse_basic_authorization(headers.get("authorization"))
            # Logged only when it looks like one of ours: the rest is caller-controlled text.
            caller = client_id if CLIENT_ID.fullmatch(client_id) else None
            client = clients.authenticate(client_id, secret)
            form = parse_form(body)
            if "token" not in form:
                raise InvalidRequest("token is required", reason="token_missing")
            # `token_type_hint` may be ignored (RFC 7662 §2.1): there is one token type.
            result = introspector.introspect(form["token"], audit, audiences=client.audiences)
    except TokexError as err:
        outcome = "unavailable" if isinstance(err, TemporarilyUnavailable) else "refused"
        _audit(outcome, audit, started, caller, error=err.error, reason=err.reason)
        return _json(err.status, err.body(), err.headers())
    _audit("active" if result["active"] else "inactive", audit, started, caller)
    return _json(200, result)


@app.route("/introspect", method=["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def introspect_wrong_method() -> Response:
    err = MethodNotAllowed("use POST for the introspection endpoint", reason="method")
    _audit(
        "refused",
        IntrospectionAudit(),
        time.perf_counter(),
        None,
        error=err.error,
        reason=err.reason,
    )
    return _json(err.status, err.body(), {"Allow": "POST"})


@app.not_found
def not_found(_: Exception) -> Response:
    return _json(404, NOT_FOUND)


@app.exception_handler(Exception)
def unexpected(err: Exception) -> Response:
    # Never a 500 and never a trace; never "active" either: fail closed, log it whole.
    logger.exception("unexpected error", extra={"outcome": "error"})
    err_ = TemporarilyUnavailable("internal error, retry later", reason="bug")
    return _json(err_.status, err_.body(), err_.headers())


def _audit(
    outcome: str, audit: IntrospectionAudit, started: float, caller: str | None, **extra: str
) -> None:
    """One structured audit line per call: who asked, about which token id, the answer
    and (for inactive tokens) why. Never the token."""
    logger.info(
        "token introspection",
        extra={
            "outcome": outcome,
            "client_id": caller,
            "subject": audit.subject,
            "audience": audit.audience,
            "jti": audit.jti,
            "kid": audit.kid,
            "inactive_reason": audit.reason,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            **extra,
        },
    )
    metrics.add_dimension(name="outcome", value=outcome)
    metrics.add_metric(name="Introspections", unit=MetricUnit.Count, value=1)


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
        _audit("refused", IntrospectionAudit(), started, None, error=err.error, reason=err.reason)
        return event_response(err.status, err.body())
    return app.resolve(event, context)
