"""POST /token — RFC 8693 token exchange (docs/contract.md). Thin: HTTP in, core, HTTP out."""

from __future__ import annotations

import time

from aws_lambda_powertools.event_handler import Response

from tokex.deadline import request_deadline
from tokex.errors import TokexError
from tokex.exchange import ExchangeAudit
from tokex.settings import Settings
from tokex.token_request import parse_token_request
from tokex.wiring import build_token_exchange
from tokex_functions.http_endpoint import AuditFields, HttpEndpoint


def audit_fields(audit: ExchangeAudit) -> AuditFields:
    """Who exchanged what for which audience, for the audit line. Never the token."""
    return {
        "evidence": audit.evidence,
        "principal": audit.principal,
        "account": audit.account,
        "session_name": audit.session_name,
        "audience": audit.audience,
        "policy": audit.policy,
        # Instance evidence as verified, also when binding it to the caller was refused.
        "instance": audit.instance,
        "instance_account": audit.instance_account,
        "instance_region": audit.instance_region,
        "jti": audit.jti,
        "sts_host": audit.sts_host,
        "access_key_id": audit.access_key_id,
        # Only when some are: each one skipped, or a deny in its place, until fixed.
        "invalid_policies": list(audit.invalid_policies) or None,
    }


# Cold start: settings parsed once; adapters built once and reused while warm.
settings = Settings.from_env()
endpoint = HttpEndpoint(
    path="/token",
    what="token",
    audit_message="token exchange",
    metric="Exchanges",
    idle_fields=audit_fields(ExchangeAudit()),
    serving_region=settings.serving_region,
)
# STS's and the issuers' calls go over urllib3: traced by the endpoint's tracer itself.
token_exchange = build_token_exchange(settings, traced=endpoint.tracer.upstream_call)


@endpoint.post
def token() -> Response:
    started = time.perf_counter()
    audit = ExchangeAudit()
    try:
        # One time budget for every upstream call of this request (TOKEX_DEADLINE_SECONDS).
        with request_deadline(settings.deadline_seconds):
            request = parse_token_request(endpoint.body(), endpoint.headers().get("content-type"))
            issued = token_exchange.exchange(request, audit)
    except TokexError as err:
        return endpoint.refused(err, audit_fields(audit), started)
    finally:
        count_invalid_policies(audit)
    endpoint.audit("issued", audit_fields(audit), started)
    return endpoint.json(200, issued.response())


def count_invalid_policies(audit: ExchangeAudit) -> None:
    """The `InvalidPolicies` metric, of each exchange decided while some stored policies
    do not validate: an allow that no longer does stops granting (a deny stands in for
    it), and its callers hear only `invalid_target`."""
    if audit.invalid_policies:
        endpoint.count("InvalidPolicies", len(audit.invalid_policies))


# The origin gate, wrong methods, unknown paths and crashes: tokex_functions.http_endpoint.
lambda_handler = endpoint.lambda_handler
