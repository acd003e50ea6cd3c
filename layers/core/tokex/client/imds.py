"""Reads the instance identity evidence from IMDSv2 (the workload side).

IMDSv2 only: a session token from `PUT /latest/api/token`, then the document and its
`rsa2048` signature (EC2 User Guide, "Instance identity documents"). The endpoint honours
`AWS_EC2_METADATA_SERVICE_ENDPOINT` like the AWS SDKs, and `AWS_EC2_METADATA_DISABLED`.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from tokex import base64url, bounded_http, deadline

DEFAULT_ENDPOINT = "http://169.254.169.254"
# The whole read (session token, document, signature): off EC2 nothing answers on the
# link-local address, and IMDS answers in well under a millisecond where it does.
TIMEOUT_SECONDS = 1.0
MAX_BYTES = 16 * 1024
TOKEN_TTL_SECONDS = "60"


class ImdsUnavailable(Exception):
    """No instance metadata service answered (not on EC2, or IMDS disabled);
    `timed_out`: it did not answer in time (as where the instance's hop limit keeps its
    answers from a container)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def imds_endpoint(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def read_instance_identity(
    endpoint: str | None = None, *, timeout: float = TIMEOUT_SECONDS
) -> dict[str, str]:
    """`{"document": ..., "rsa2048": ...}` exactly as IMDS returned the texts, all three
    requests within `timeout` seconds in all, however slowly IMDS answers."""
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        raise ImdsUnavailable("IMDS is disabled (AWS_EC2_METADATA_DISABLED=true)")
    base = (endpoint or imds_endpoint()).rstrip("/")
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ImdsUnavailable(
            f"the IMDS endpoint {base!r} is not an http URL (AWS_EC2_METADATA_SERVICE_ENDPOINT"
            " takes one, e.g. http://169.254.169.254)"
        )
    with deadline.request_deadline(timeout):
        return _read(base, timeout)


def _read(base: str, timeout: float) -> dict[str, str]:
    # Never through a proxy: the metadata service is on this host's link.
    opener = bounded_http.urllib_opener(environment_proxies=False)
    token = _fetch(
        opener,
        urllib.request.Request(  # noqa: S310 - IMDS endpoint (operator-set or link-local)
            f"{base}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL_SECONDS},
        ),
        timeout,
    )
    evidence = {}
    for name, path in (("document", "document"), ("rsa2048", "rsa2048")):
        request = urllib.request.Request(  # noqa: S310
            f"{base}/latest/dynamic/instance-identity/{path}",
            headers={"X-aws-ec2-metadata-token": token},
        )
        evidence[name] = _fetch(opener, request, timeout)
    return evidence


def encode_instance_evidence(evidence: Mapping[str, str]) -> str:
    """The `aws_instance_identity` parameter: base64url (no padding) of the JSON."""
    return base64url.encode_json(dict(evidence))


def _fetch(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout: float
) -> str:
    try:
        with opener.open(request, timeout=timeout) as response:
            data = response.read(MAX_BYTES + 1)
            cut_off = len(data) <= MAX_BYTES and bool(response.length)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        timed_out = isinstance(getattr(err, "reason", err), TimeoutError)
        why = "timed out" if timed_out else str(err)
        raise ImdsUnavailable(
            f"IMDS at {request.full_url} did not answer: {why}", timed_out=timed_out
        ) from None
    if cut_off:  # closed before its Content-Length: http.client hands back what came
        raise ImdsUnavailable(f"IMDS at {request.full_url} broke off its answer")
    if len(data) > MAX_BYTES:
        raise ImdsUnavailable("IMDS answer too large")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImdsUnavailable("IMDS answer is not UTF-8") from None
