"""POST /introspect — RFC 7662 token introspection. Thin: HTTP in, core, HTTP out.

Order of checks: method (405), media type (415), size (413), client authentication (401
`invalid_client`, before anything about the form is said), then the form (400). Every
token problem is a 200 `{"active": false}`, and so is a token of an audience the client
does not serve; only KMS/DynamoDB trouble is a 503.
"""

from __future__ import annotations

import time

from aws_lambda_powertools.event_handler import Response

from tokex.deadline import request_deadline
from tokex.errors import TokexError
from tokex.introspection import IntrospectionAudit
from tokex.introspection_request import parse_introspection_request
from tokex.settings import Settings
from tokex.wiring import build_introspection
from tokex_functions.http_endpoint import AuditFields, HttpEndpoint


def audit_fields(audit: IntrospectionAudit, caller: str | None) -> AuditFields:
    """Who asked, about which token id, and (for inactive tokens) why. Never the token."""
    return {
        "client_id": caller,
        "subject": audit.subject,
        "audience": audit.audience,
        "jti": audit.jti,
        "kid": audit.kid,
        "inactive_reason": audit.reason,
    }


# Cold start: settings parsed once; adapters built once and reused while warm.
settings = Settings.from_env()
introspector, clients = build_introspection(settings)
endpoint = HttpEndpoint(
    path="/introspect",
    what="introspection",
    audit_message="token introspection",
    metric="Introspections",
    idle_fields=audit_fields(IntrospectionAudit(), None),
    serving_region=settings.serving_region,
)


@endpoint.post
def introspect() -> Response:
    started = time.perf_counter()
    audit = IntrospectionAudit()
    caller: str | None = None
    try:
        # One time budget for every upstream call of this request (TOKEX_DEADLINE_SECONDS).
        with request_deadline(settings.deadline_seconds):
            request = parse_introspection_request(endpoint.body(), endpoint.headers())
            caller = request.audit_client_id
            client = clients.authenticate(request.client_id, request.secret)
            result = introspector.introspect(request.token(), audit, audiences=client.audiences)
    except TokexError as err:
        return endpoint.refused(err, audit_fields(audit, caller), started)
    endpoint.audit(
        "active" if result["active"] else "inactive", audit_fields(audit, caller), started
    )
    return endpoint.json(200, result)


# The origin gate, wrong methods, unknown paths and crashes: tokex_functions.http_endpoint.
# A crash is a 503, never a 500 and never "active".
lambda_handler = endpoint.lambda_handler
