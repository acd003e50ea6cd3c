"""Reads the instance identity evidence from IMDSv2 (the workload side).

IMDSv2 only: a session token from `PUT /latest/api/token`, then the document and its
`rsa2048` signature (EC2 User Guide, "Instance identity documents"). The endpoint is the
one botocore reads an instance role's credentials from (imds_endpoint): the
`ec2_metadata_service_endpoint` setting (AWS_EC2_METADATA_SERVICE_ENDPOINT, or the key in
the config file), else the IPv6 address when the `ec2_metadata_service_endpoint_mode`
setting (AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE, or the key) is IPv6, else the IPv4 one.
`AWS_EC2_METADATA_DISABLED=true` turns it off, as it does botocore's.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import botocore.session
from botocore.exceptions import BotoCoreError
from botocore.utils import resolve_imds_endpoint_mode

from tokex import base64url, bounded_http, deadline, identifiers
from tokex.client.endpoint import redacted

DEFAULT_ENDPOINT = "http://169.254.169.254"
IPV6_ENDPOINT = "http://[fd00:ec2::254]"  # EC2 User Guide, "Instance metadata service"
# The whole read (session token, document, signature): off EC2 nothing answers on the
# link-local address, and IMDS answers in well under a millisecond where it does.
TIMEOUT_SECONDS = 1.0
MAX_BYTES = 16 * 1024
TOKEN_TTL_SECONDS = "60"
# What IMDS's statuses mean (EC2 User Guide, "Use the Instance Metadata Service to access
# instance metadata": a 403 when IMDS is turned off, a 401 for a session token missing,
# expired or not IMDS's own).
_STATUS_MEANING = {
    403: "IMDS is turned off on this instance (aws ec2 modify-instance-metadata-options"
    " --http-endpoint enabled) or refused the request",
    401: "it refused the session token",
}
# A connection that found nothing at the address: what off EC2 looks like.
_NOTHING_THERE_ERRNOS = (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH)


class ImdsUnavailable(Exception):
    """No instance identity evidence from IMDS. `status`: the HTTP status IMDS answered
    (it is there, and refused); `unreachable`: nothing answered at its address (connection
    refused, no route, a name that does not resolve, or a timeout: off EC2, most likely);
    `timed_out`: it did not answer in time (as where the instance's hop limit keeps its
    answers from a container)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        unreachable: bool = False,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.unreachable = unreachable or timed_out
        self.timed_out = timed_out


def imds_endpoint(session: Any = None) -> str:
    """The IMDS base URL, as botocore resolves it for an instance role's credentials
    (`create_credential_resolver`, `IMDSFetcher`) from the configuration of `session` (a
    boto3 session; default: a new one), so that the evidence and the credentials come from
    the same IMDS: the `ec2_metadata_service_endpoint` setting, else by the
    `ec2_metadata_service_endpoint_mode` setting (`IPv4` or `IPv6`; botocore's
    `imds_use_ipv6` too). ImdsUnavailable when the configuration cannot be read (a mode
    that is neither, a profile the config file does not have)."""
    config = getattr(session, "_session", None) or botocore.session.Session()
    try:
        endpoint = config.get_config_variable("ec2_metadata_service_endpoint")
        ipv6 = not endpoint and resolve_imds_endpoint_mode(config) == "ipv6"
    except BotoCoreError as err:
        raise ImdsUnavailable(f"cannot tell which IMDS endpoint to use: {err}") from None
    if endpoint:
        return str(endpoint).rstrip("/")
    return IPV6_ENDPOINT if ipv6 else DEFAULT_ENDPOINT


def read_instance_identity(
    endpoint: str | None = None, *, timeout: float = TIMEOUT_SECONDS, session: Any = None
) -> dict[str, str]:
    """`{"document": ..., "rsa2048": ...}` exactly as IMDS returned the texts, all three
    requests within `timeout` seconds in all, however slowly IMDS answers. From `endpoint`,
    else the one the configuration of `session` (a boto3 session; default: a new one)
    names (imds_endpoint)."""
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        raise ImdsUnavailable("IMDS is disabled (AWS_EC2_METADATA_DISABLED=true)")
    base = (endpoint or imds_endpoint(session)).rstrip("/")
    try:
        parts = urllib.parse.urlsplit(base)
        parts.port  # noqa: B018 - raises as urlsplit does: a port that is no port number
    except ValueError as err:  # `http://[::1`, `http://host:99999`
        raise ImdsUnavailable(
            f"the IMDS endpoint {redacted(base)!r} is not a valid URL: {err}"
            " (AWS_EC2_METADATA_SERVICE_ENDPOINT, or ec2_metadata_service_endpoint in the"
            " config file, takes one, e.g. http://169.254.169.254)"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ImdsUnavailable(
            f"the IMDS endpoint {redacted(base)!r} is not an http URL"
            " (AWS_EC2_METADATA_SERVICE_ENDPOINT, or ec2_metadata_service_endpoint in the"
            " config file, takes one, e.g. http://169.254.169.254)"
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


def instance_region(instance_evidence: str) -> str | None:
    """The Region the instance identity document in `instance_evidence` (the parameter,
    as encode_instance_evidence makes it) names, or None: the instance's own Region, which
    EC2 sets in no variable. Not verified here: the exchange verifies the document's
    signature, and a Region it does not name only gets the signed request refused."""
    try:
        evidence = json.loads(base64url.decode(instance_evidence))
        region = json.loads(evidence["document"])["region"]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return None
    return region if isinstance(region, str) and identifiers.is_region(region) else None


def _fetch(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout: float
) -> str:
    url = redacted(request.full_url)
    try:
        with opener.open(request, timeout=timeout) as response:
            data = response.read(MAX_BYTES + 1)
            cut_off = len(data) <= MAX_BYTES and bool(response.length)
    except urllib.error.HTTPError as err:  # IMDS is there, and answered this status
        err.close()
        answered = f"answered {err.code} {err.reason}".rstrip()
        meaning = _STATUS_MEANING.get(err.code)
        raise ImdsUnavailable(
            f"IMDS at {url} {answered}{': ' + meaning if meaning else ''}", status=err.code
        ) from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        timed_out = isinstance(reason, TimeoutError)
        why = "timed out" if timed_out else str(err)
        raise ImdsUnavailable(
            f"IMDS at {url} did not answer: {why}",
            unreachable=_nothing_there(reason),
            timed_out=timed_out,
        ) from None
    if cut_off:  # closed before its Content-Length: http.client hands back what came
        raise ImdsUnavailable(f"IMDS at {url} broke off its answer")
    if len(data) > MAX_BYTES:
        raise ImdsUnavailable("IMDS answer too large")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImdsUnavailable("IMDS answer is not UTF-8") from None


def _nothing_there(reason: object) -> bool:
    """Whether a connection found nothing at IMDS's address (off EC2, most likely): it was
    refused, had no route, or its name does not resolve. Not an answer that is no HTTP, or
    one cut off: something is there."""
    if isinstance(reason, socket.gaierror):
        return True
    return isinstance(reason, OSError) and reason.errno in _NOTHING_THERE_ERRNOS
