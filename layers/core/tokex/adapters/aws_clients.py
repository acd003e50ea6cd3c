"""AWS clients for an authentication hot path: every call within the request's deadline.

Adapters take a client as a parameter; this is the one place that builds them (and the
one session factory), so the Lambda handlers, the CLI and local mode all talk to
AWS the same way. The endpoint comes
from the standard `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables (local mode
points them at the emulator).

While a request is served (deadline.py), a client sends through the bounded transport
(bounded_http.py) instead of botocore's own: botocore's timeouts bound each socket
operation, so a KMS or DynamoDB endpoint that trickles bytes would hold the call for ever,
and botocore offers no bound on a whole call. The switch uses botocore's documented
`before-send` event, so everything else (signing, parsing, errors) stays botocore's. The
transport verifies TLS against the system's CA store and uses no proxy from the
environment, as the forwarded STS call always has. Outside a request (the CLI, the
publisher) nothing changes. An in-process mock that also answers `before-send` (moto's
`mock_aws`) must not run while a request deadline is open: both handlers would run, and
this one would send for real.

The clients are botocore's, from a botocore session: boto3 adds nothing a low-level
client uses, and importing it (with s3transfer) would cost every cold start ~15 ms. The
session's model loader does two things differently, both for the cold start
(docs/performance.md "Results"): it reads botocore's model files into plain dicts
instead of `OrderedDict`s (dicts keep insertion order, all botocore relies on: the same
data, decoded several times faster), and it knows only the services tokex calls
(`SERVICES`), where botocore lists its 400-odd service directories, twice, before the
first model loads.

Retries are tokex's too: botocore's standard retry conditions decide *whether* to retry,
and a retry happens only when its backoff and one more attempt fit in what is left of
the deadline; otherwise the failure stands (503 from the adapter, Retry-After set).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import random
from collections.abc import Iterator
from typing import Any

import botocore.session
import urllib3
from botocore import exceptions as botocore_errors
from botocore import loaders
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config
from botocore.retries import standard

from tokex import bounded_http, deadline
from tokex.errors import DeadlineExceeded

# Every AWS service the runtime calls (a client of another is refused: UnknownServiceError).
SERVICES = ("dynamodb", "ec2", "kms", "s3", "sts")
CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
# Attempts per call, the first included (botocore's standard mode allows 3).
MAX_ATTEMPTS = 3
# Full jitter: a retry waits rand(0, 1) * min(base * 2 ** (attempt - 1), cap).
RETRY_BACKOFF_BASE_SECONDS = 0.05
RETRY_BACKOFF_CAP_SECONDS = 1.0
# A retry is only worth starting with at least this much of the deadline left for it
# (an in-region KMS or DynamoDB call takes a few to tens of milliseconds).
MIN_ATTEMPT_SECONDS = 0.25
# The largest answer read: DynamoDB's largest, BatchGetItem's, is 16 MB. A larger one is
# no AWS answer, and reading it whole could take the function's memory.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

# botocore's own retries are off (one attempt): `_retry_within_deadline` decides instead.
HOT_PATH_CONFIG = Config(
    connect_timeout=CONNECT_TIMEOUT_SECONDS,
    read_timeout=READ_TIMEOUT_SECONDS,
    retries={"mode": "standard", "total_max_attempts": 1},
)

# One pool for every hot-path client of the process: connections to KMS and DynamoDB are
# kept alive across invocations (a pool per host inside).
_TRANSPORT = bounded_http.pool_manager(
    connect_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=READ_TIMEOUT_SECONDS
)
_RETRY_EVENTS = standard.RetryEventAdapter()
_RETRY_CONDITIONS = standard.StandardRetryConditions(max_attempts=MAX_ATTEMPTS)


class MalformedResponse(botocore_errors.BotoCoreError):
    """An answer no AWS service gives (over MAX_RESPONSE_BYTES; a JSON-protocol success
    that is no JSON object, which botocore would read as an empty result: "no item", "no
    revocation"): a failure of the call, never its result."""

    fmt = "{service} answered what no AWS service answers: {detail}"


class _ReadBody:
    """A response's body, read already: what `AWSResponse.content` streams."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        yield self._body


class PlainJsonFiles:
    """botocore's `file_loader` (`exists`, `load_file`): the same files, in botocore's
    order (`.json`, then `.json.gz`), decoded into plain dicts."""

    OPENERS = ((".json", open), (".json.gz", gzip.open))

    def exists(self, file_path: str) -> bool:
        return any(os.path.isfile(file_path + suffix) for suffix, _ in self.OPENERS)

    def load_file(self, file_path: str) -> Any:
        for suffix, opener in self.OPENERS:
            if os.path.isfile(file_path + suffix):
                with opener(file_path + suffix, "rb") as data:
                    return json.loads(data.read().decode("utf-8"))
        return None


class ServiceModels(loaders.Loader):
    """botocore's loader of models and data, for the services tokex calls only."""

    def list_available_services(self, type_name: str) -> list[str]:
        available = []
        for service in SERVICES:
            try:
                if self.list_api_versions(service, type_name):
                    available.append(service)
            except botocore_errors.DataNotFoundError:
                continue
        return available


def new_session() -> botocore.session.Session:
    """A botocore session for clients of `SERVICES`: share one between the clients of a
    process (each new session loads the models again). `AWS_DATA_PATH` comes first, as in
    botocore's own sessions."""
    session = botocore.session.Session()
    data_path = session.get_config_variable("data_path")
    extra_paths = (
        [os.path.expanduser(os.path.expandvars(path)) for path in data_path.split(os.pathsep)]
        if data_path
        else None
    )
    loader = ServiceModels(extra_search_paths=extra_paths, file_loader=PlainJsonFiles())
    session.register_component("data_loader", loader)
    return session


def client(service: str, *, session: botocore.session.Session | None = None, **kwargs: Any) -> Any:
    config = kwargs.pop("config", HOT_PATH_CONFIG)
    made = (session or new_session()).create_client(service, config=config, **kwargs)
    events = made.meta.events
    name = made.meta.service_model.service_id.hyphenize()
    json_protocol = made.meta.service_model.protocol == "json"
    events.register(
        f"before-send.{name}",
        functools.partial(_send_within_deadline, name, json_protocol),
        unique_id=f"tokex-deadline-send-{name}",
    )
    events.register(
        f"needs-retry.{name}", _retry_within_deadline, unique_id=f"tokex-deadline-retry-{name}"
    )
    return made


def _send_within_deadline(
    service: str, json_protocol: bool, request: AWSPreparedRequest, **_: Any
) -> AWSResponse | None:
    """Send `request` through the bounded transport while a request deadline is open
    (None otherwise: botocore sends it itself). The whole body is read now, within the
    deadline, and refused (MalformedResponse) when no AWS service would answer it."""
    current = deadline.current()
    if current is None:
        return None
    current.check(service)
    try:
        raw = _TRANSPORT.urlopen(
            request.method,
            request.url,
            body=request.body,
            headers=dict(request.headers.items()),
            redirect=False,
            retries=False,
            preload_content=False,
            decode_content=False,
        )
        if request.stream_output:
            return AWSResponse(request.url, raw.status, raw.headers, raw)
        body = _read_whole(raw, service, has_body=_has_body(request.method, raw.status))
        if json_protocol and 200 <= raw.status < 300 and not _is_json_object(body):
            raise MalformedResponse(service=service, detail="a success that is no JSON object")
        return AWSResponse(request.url, raw.status, raw.headers, _ReadBody(body))
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if deadline.expired():
            raise DeadlineExceeded(service) from None
        raise _as_botocore_error(exc, request) from None


def _has_body(method: str, status: int) -> bool:
    """Whether the answer carries the body its Content-Length declares (RFC 9110 §8.6: a
    HEAD's declares the GET's, a 204's and a 304's none of their own)."""
    return method != "HEAD" and status not in (204, 304)


def _read_whole(raw: Any, service: str, *, has_body: bool) -> bytes:
    """The body, at most MAX_RESPONSE_BYTES (the connection is dropped past that)."""
    declared = raw.headers.get("Content-Length", "")
    if has_body and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raw.close()
        raise MalformedResponse(service=service, detail=f"{declared} bytes")
    body: bytes = raw.read(MAX_RESPONSE_BYTES + 1)
    if len(body) > MAX_RESPONSE_BYTES:
        raw.close()
        raise MalformedResponse(service=service, detail=f"over {MAX_RESPONSE_BYTES} bytes")
    return body


def _is_json_object(body: bytes) -> bool:
    """Whether botocore will read `body` as the JSON object it is: as UTF-8, as botocore
    decodes it (json.loads would take UTF-16 too, which botocore reads as no result)."""
    try:
        return isinstance(json.loads(body.decode("utf-8")), dict)
    except ValueError:  # UnicodeDecodeError included
        return False


def _as_botocore_error(
    exc: Exception, request: AWSPreparedRequest
) -> botocore_errors.HTTPClientError:
    """The error botocore's own transport raises for the same failure, so that retries
    and the adapters' error mapping see what they always saw."""
    url = request.url
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # before ConnectTimeoutError
        return botocore_errors.EndpointConnectionError(endpoint_url=url, error=exc)
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return botocore_errors.ConnectTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return botocore_errors.ReadTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return botocore_errors.ConnectionClosedError(endpoint_url=url, request=request, error=exc)
    return botocore_errors.HTTPClientError(error=exc)


def _retry_within_deadline(**kwargs: Any) -> float | None:
    """botocore's `needs-retry`: the seconds to wait before retrying, or None (the
    failure stands). Retries what botocore's standard mode retries (throttling,
    transient and connection errors), when the backoff and one more attempt fit."""
    context = _RETRY_EVENTS.create_retry_context(**kwargs)
    if not _RETRY_CONDITIONS.is_retryable(context):
        return None
    return pause_within_deadline(
        context.attempt_number, base=RETRY_BACKOFF_BASE_SECONDS, cap=RETRY_BACKOFF_CAP_SECONDS
    )


def pause_within_deadline(attempt: int, *, base: float, cap: float) -> float | None:
    """The pause before another attempt after `attempt` failed, full jitter:
    rand(0, 1) * min(base * 2 ** (attempt - 1), cap); None when the pause and one more
    attempt (MIN_ATTEMPT_SECONDS) no longer fit in the request's deadline."""
    pause = random.random() * min(base * 2 ** (attempt - 1), cap)  # noqa: S311 - jitter
    current = deadline.current()
    if current is not None and current.remaining() < pause + MIN_ATTEMPT_SECONDS:
        return None
    return pause
