"""The HTTP plumbing that /token and /introspect share: the Powertools resolver, logger,
metrics and tracer (tracing.py), the origin gate, the audit line, JSON responses, and the
answers that do not depend on the endpoint (wrong method, no such path, a crash).

A handler builds one `HttpEndpoint` at cold start, registers its POST route with
`endpoint.post`, and exports `endpoint.lambda_handler`; its route reads the request
(`endpoint.body()`, `endpoint.headers()`), calls the core, and answers with
`endpoint.json(...)` or `endpoint.refused(err, ...)`. Every answer, the origin gate's
refusals and a crash's 503 included, writes one audit line and counts one metric by
outcome (docs/deploy.md "Operating it").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from tokex.edge import NotThroughIssuer, OriginGate
from tokex.errors import MethodNotAllowed, Misconfigured, TemporarilyUnavailable, TokexError
from tokex.http_api import NOT_FOUND, event_body, event_response, json_text, no_store
from tokex.regions import regional_path
from tokex_functions.collector import frozen_after_first_invocation
from tokex_functions.logs import function_logger
from tokex_functions.tracing import FunctionTracer

# Every method API Gateway forwards besides POST: answered 405 with `Allow: POST`.
WRONG_METHODS = ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

# The deployment's stack name (cdk/tokex_stack.py), every metric's `stack` dimension: two
# stacks in one account and Region write to the same namespace, and their alarms must not
# count each other's requests. Unset (`tokex local`'s functions, tests): "local".
STACK_NAME_ENV = "TOKEX_STACK_NAME"
LOCAL_STACK = "local"

# What a bug answers (fail closed, nothing leaked).
UNEXPECTED = TemporarilyUnavailable("internal error, retry later", reason="bug")

# The endpoint's own audit fields (who, which token...), logged after `outcome`.
AuditFields = Mapping[str, object]
LambdaHandler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


class HttpEndpoint:
    """One POST endpoint of the HTTP API and everything around its route.

    `idle_fields` are the audit fields of a request refused before the core saw it (the
    origin gate, a wrong method): the endpoint's fields, all empty. `serving_region`: the
    settings' (TOKEX_SERVING_REGION), whose `/regions/<region>` path it also answers.
    """

    def __init__(
        self,
        *,
        path: str,
        what: str,
        audit_message: str,
        metric: str,
        idle_fields: AuditFields,
        serving_region: str = "",
    ) -> None:
        self.path = path
        self.what = what
        self.audit_message = audit_message
        self.metric = metric
        self.idle_fields = dict(idle_fields)
        self.logger = function_logger()
        self.metrics = Metrics()
        self.metrics.set_default_dimensions(stack=os.environ.get(STACK_NAME_ENV) or LOCAL_STACK)
        self.tracer = FunctionTracer()
        self.app = APIGatewayHttpResolver()
        self.origin_gate = OriginGate.from_env()
        # A Regional function also answers at its own Region's path (docs/multi-region.md):
        # CloudFront forwards `/regions/<region>/token` to that Region's API whole.
        self.paths = [path, *([regional_path(serving_region, path)] if serving_region else [])]
        for served in self.paths:
            self.app.route(served, method=WRONG_METHODS)(self._wrong_method)
        self.app.not_found(self._not_found)
        self.app.exception_handler(Exception)(self._unexpected)
        self.lambda_handler = self._lambda_handler()

    # --- what a route uses ------------------------------------------------------------

    def post(self, route: Callable[[], Response]) -> Callable[[], Response]:
        """Decorator: `route` answers POST on the endpoint's path, traced."""
        traced = self.tracer.capture_method(route)
        for served in self.paths:
            self.app.post(served)(traced)
        return route

    def body(self) -> bytes:
        """The request body as sent (API Gateway may have base64-encoded it)."""
        event = self.app.current_event
        return event_body(event.body, event.is_base64_encoded)

    def headers(self) -> Mapping[str, str]:
        """The request headers (names in lower case, as HTTP API events carry them)."""
        return self.app.current_event.headers

    def json(
        self, status: int, body: Mapping[str, object], headers: Mapping[str, str] | None = None
    ) -> Response:
        """A JSON answer that no cache keeps (RFC 6749 §5.1)."""
        return Response(status, "application/json", json_text(body), no_store(headers))

    def refused(
        self,
        err: TokexError,
        fields: AuditFields,
        started: float,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """The audit line and the error answer of a request the contract refuses."""
        self.audit(outcome_of(err), fields, started, error=err.error, reason=err.reason)
        return self.error_response(err, headers)

    def error_response(self, err: TokexError, headers: Mapping[str, str] | None = None) -> Response:
        return self.json(err.status, err.body(), {**err.headers(), **(headers or {})})

    def audit(self, outcome: str, fields: AuditFields, started: float, **extra: str) -> None:
        """One structured audit line per request, and the requests-by-outcome metric."""
        self.logger.info(
            self.audit_message,
            extra={
                "outcome": outcome,
                **fields,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                **extra,
            },
        )
        # One metric, one dimension of its own (besides `service` and `stack`): dashboards
        # and alarms split requests by outcome.
        self.metrics.add_dimension(name="outcome", value=outcome)
        self.metrics.add_metric(name=self.metric, unit=MetricUnit.Count, value=1)

    def count(self, metric: str, value: int) -> None:
        """A metric of its own, beside the requests by outcome: without their `outcome`
        dimension, so that one alarm watches it (docs/deploy.md "Operating it"); with the
        stack's, as every metric."""
        own = EphemeralMetrics(namespace=self.metrics.namespace, service=self.metrics.service)
        own.set_default_dimensions(**self.metrics.default_dimensions)
        own.add_metric(name=metric, unit=MetricUnit.Count, value=value)
        own.flush_metrics()

    # --- the answers that do not depend on the endpoint -------------------------------

    def _wrong_method(self) -> Response:
        err = MethodNotAllowed(f"use POST for the {self.what} endpoint", reason="method")
        return self.refused(err, self.idle_fields, time.perf_counter(), {"Allow": "POST"})

    def _not_found(self, _: Exception) -> Response:
        # Audited like any refusal: a path no route serves (another Region's, say) is
        # worth seeing, and the metric keeps every request counted.
        self.audit(
            "refused",
            self.idle_fields,
            time.perf_counter(),
            error=NOT_FOUND["error"],
            reason="no_such_endpoint",
        )
        return self.json(404, NOT_FOUND)

    def _unexpected(self, err: Exception) -> Response:
        # A bug must not hand out anything (no token, never "active") nor leak a trace:
        # fail closed with a 503, and log the exception whole here.
        self._crashed(self.app.context.get("started", time.perf_counter()))
        return self.error_response(UNEXPECTED)

    def _crashed(self, started: float) -> None:
        """The log of a bug, whole, and its audit line and metric (outcome `error`): a bug
        is counted like any other answer, never missing from the metric."""
        self.logger.exception("unexpected error", extra={"outcome": "error"})
        self.audit(
            "error", self.idle_fields, started, error=UNEXPECTED.error, reason=UNEXPECTED.reason
        )

    def _lambda_handler(self) -> LambdaHandler:
        @frozen_after_first_invocation
        @self.logger.inject_lambda_context(clear_state=True)
        @self.metrics.log_metrics
        @self.tracer.capture_lambda_handler
        def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            return self._answer(event, context)

        return lambda_handler

    def _answer(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        started = time.perf_counter()
        headers = event.get("headers") if isinstance(event, dict) else None
        try:
            # The one door: refused before anything else is read unless CloudFront sent it.
            self.origin_gate.check(headers if isinstance(headers, Mapping) else {})
        except NotThroughIssuer as err:
            self.audit("refused", self.idle_fields, started, error=err.error, reason=err.reason)
            return event_response(err.status, err.body())
        try:
            self.app.append_context(started=started)  # for `_unexpected`'s audit line
            return self.app.resolve(event, context)
        except Exception:
            # An event API Gateway never sends (a direct invocation without
            # `requestContext`, say) fails in the resolver before its route's handler: the
            # same 503, not a failed invocation that API Gateway would answer 500.
            self._crashed(started)
            return event_response(UNEXPECTED.status, UNEXPECTED.body(), UNEXPECTED.headers())


def outcome_of(err: TokexError) -> str:
    """The audit line's and the metric's outcome of a refusal: `misconfigured` (tokex's
    deployment must be fixed), `unavailable` (an outage, throttling, the deadline, 429) or
    `refused` (the request)."""
    if isinstance(err, Misconfigured):
        return "misconfigured"
    return "unavailable" if isinstance(err, TemporarilyUnavailable) else "refused"
