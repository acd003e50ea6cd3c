"""boto3 clients with the timeouts and retry budget of an authentication hot path.

Adapters take a client as a parameter; this is the one place that builds them, so the
Lambda handlers, the CLI and local mode all talk to AWS the same way. The endpoint comes
from the standard `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables (local mode
points them at the emulator).
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

# A token request waits on STS, KMS and (cold) DynamoDB: fail fast and let the caller
# retry on our 503 rather than hold a Lambda for botocore's default 60 s.
HOT_PATH_CONFIG = Config(
    connect_timeout=2,
    read_timeout=5,
    retries={"max_attempts": 2, "mode": "standard"},
)


def client(service: str, *, session: boto3.session.Session | None = None, **kwargs: Any) -> Any:
    config = kwargs.pop("config", HOT_PATH_CONFIG)
    return (session or boto3.session.Session()).client(service, config=config, **kwargs)
