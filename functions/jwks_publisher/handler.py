"""Publishes the JWKS and the OpenID discovery document to S3 (docs/contract.md "Issuer").

Runs on a schedule, on every deploy (CloudFormation custom resource through the CDK
Provider framework) and once when `tokex local` starts. Idempotent, and a run never
overwrites a document written with a configuration read after its own (tokex/publish.py):
an hourly run still in flight with the configuration a deploy just replaced yields to the
deploy's run.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from tokex.errors import ConfigurationError, TokexError
from tokex.settings import Settings
from tokex.wiring import build_issuer_publisher
from tokex_functions.collector import frozen_after_first_invocation
from tokex_functions.logs import function_logger
from tokex_functions.tracing import FunctionTracer

logger = function_logger()
tracer = FunctionTracer()

settings = Settings.from_env()
publish_issuer_documents = build_issuer_publisher(settings)


@frozen_after_first_invocation
@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event.get("RequestType") == "Delete":
        # Stack deletion: leave the last published documents; the bucket is retained.
        return {"PhysicalResourceId": event.get("PhysicalResourceId", "tokex-issuer-documents")}
    try:
        written = publish_issuer_documents()
    except (TokexError, ConfigurationError) as err:
        # Which key or document, and AWS's code, are in a TokexError's reason only: Lambda
        # logs the exception's own message ("retry later"), which names neither.
        reason = err.reason if isinstance(err, TokexError) else str(err)
        logger.error("publishing the issuer documents failed", extra={"reason": reason})
        raise
    logger.info("published issuer documents", extra={"written": written})
    if "RequestType" in event:  # CloudFormation custom resource (Provider framework)
        return {"PhysicalResourceId": "tokex-issuer-documents", "Data": {"Written": len(written)}}
    return {"written": written}
