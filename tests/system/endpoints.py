"""The system's endpoints as a workload and a relying party call them, the audit lines the
handlers write, and the one assertion every refusal test makes: the HTTP status, the
contract's `error` code and the reason in the request's audit line (docs/contract.md)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest

from tokex import base64url
from tokex.client import token_client
from tokex.client.signing import encode_subject_token, signed_get_caller_identity
from tokex.local.runner import LocalSystem
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

Answer = tuple[int, dict[str, str], dict[str, Any]]
AUDIT_MESSAGES = ("token exchange", "token introspection")


def post(url: str, body: bytes, content_type: str = "application/x-www-form-urlencoded"):
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def exchange(system: LocalSystem, *, signed: dict[str, Any] | None = None, **params: str):
    if signed is None:
        signed = sign(system)
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": encode_subject_token(signed),
        "audience": "demo-api",
        **params,
    }
    form = {k: v for k, v in form.items() if v is not None}
    return post(system.issuer + "/token", urllib.parse.urlencode(form).encode())


def sign(system: LocalSystem, *, credentials=None, issuer: str | None = None, region="us-east-1"):
    creds = credentials or system.deployment.workload
    frozen = creds.session().get_credentials().get_frozen_credentials()
    return signed_get_caller_identity(frozen, region=region, issuer=issuer or system.issuer)


def verify(system: LocalSystem, token: str, audience: str = "demo-api") -> dict[str, Any]:
    """Verify as a relying party would: only the published JWKS, fetched over HTTP."""
    keys = jwt.PyJWKClient(system.issuer + "/.well-known/jwks.json", cache_keys=False)
    signing_key = keys.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        signing_key.key,
        algorithms=["RS256", "ES256"],
        audience=audience,
        issuer=system.issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )


class Captured(logging.Handler):
    """Collects the handlers' formatted log lines (Powertools JSON)."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@contextlib.contextmanager
def audit_lines(*messages: str) -> Iterator[list[dict[str, Any]]]:
    """The audit lines (`token exchange` unless `messages` name others) written by the
    in-process handlers inside the block."""
    wanted = messages or ("token exchange",)
    service_logger = logging.getLogger("tokex")
    captured = Captured(service_logger.handlers[0].formatter)
    service_logger.addHandler(captured)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        service_logger.removeHandler(captured)
        lines.extend(line for line in captured.lines if line.get("message") in wanted)


def assert_refused(
    request: Callable[[], Answer],
    status: int,
    error: str,
    reason: str,
    *,
    outcome: str | None = None,
) -> dict[str, Any]:
    """Makes `request` (to /token or /introspect, over HTTP or into a handler) and asserts
    it was refused for this rule: the status, the `error` code, no token, not cached, and
    exactly one audit line with this `error` and `reason`, whose outcome is `outcome` if
    given (`misconfigured`), else `unavailable` for `temporarily_unavailable` (429, 503)
    and `refused` otherwise. Returns the body.

    The audit lines are read from the `tokex` logger, which every handler loaded in this
    process writes to: those behind the local front and those a test invokes directly."""
    if outcome is None:
        outcome = "unavailable" if error == "temporarily_unavailable" else "refused"
    with audit_lines(*AUDIT_MESSAGES) as audits:
        got_status, headers, body = request()
    assert (got_status, body.get("error")) == (status, error), body
    assert "access_token" not in body and "active" not in body
    assert body["error_description"]
    assert headers["Cache-Control"] == "no-store"
    refusals = [(a["outcome"], a.get("error"), a.get("reason")) for a in audits]
    assert refusals == [(outcome, error, reason)], f"audit: {refusals}; answer: {body}"
    return body


@contextlib.contextmanager
def emitted_metrics() -> Iterator[list[dict[str, Any]]]:
    """The metrics the in-process handlers emitted inside the block, as Powertools prints
    them (CloudWatch EMF, one JSON object per line): e.g. `{"outcome": "issued",
    "Exchanges": [1.0], ...}`."""
    printed = io.StringIO()
    metrics: list[dict[str, Any]] = []
    try:
        with contextlib.redirect_stdout(printed):
            yield metrics
    finally:
        lines = printed.getvalue().splitlines()
        metrics.extend(json.loads(line) for line in lines if line.startswith('{"_aws"'))


def outcomes(metrics: list[dict[str, Any]]) -> list[str]:
    """The outcomes counted (`Exchanges`, `Introspections`) among `metrics`."""
    return [metric["outcome"] for metric in metrics if "outcome" in metric]


class Recorded:
    """A request for `assert_refused` that keeps its answer's headers, for the tests that
    check more of them (`Allow`, `Retry-After`, `WWW-Authenticate`)."""

    def __init__(self, request: Callable[[], Answer]) -> None:
        self.request = request
        self.headers: dict[str, str] = {}

    def __call__(self) -> Answer:
        status, headers, body = self.request()
        self.headers = dict(headers)
        return status, headers, body


def get(url: str) -> Answer:
    """GET `url`: (status, headers, JSON body), whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def as_the_workload(system: LocalSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment as a shell that sourced the system's workload.env has
    it: none of this machine's AWS_ or TOKEX_ settings."""
    from benchmarks.local_process import load_env_file

    for name in [n for n in os.environ if n.startswith(("AWS_", "TOKEX_"))]:
        monkeypatch.delenv(name)
    for name, value in load_env_file(system.workload_env).items():
        monkeypatch.setenv(name, value)


def recorded_signed_requests(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The signed requests (decoded subject tokens) tokex.client sends from now on, as it
    sends them, in a list that fills as it does."""
    sent: list[dict[str, Any]] = []
    send = token_client._send

    def recording_send(request: urllib.request.Request, timeout: float) -> dict[str, Any]:
        if isinstance(request.data, bytes):  # the POST to /token (discovery is a GET)
            form = dict(urllib.parse.parse_qsl(request.data.decode()))
            sent.append(json.loads(base64url.decode(form["subject_token"])))
        answer: dict[str, Any] = send(request, timeout)
        return answer

    monkeypatch.setattr(token_client, "_send", recording_send)
    return sent
