"""A workload whose SDK is set to FIPS endpoints (AWS_USE_FIPS_ENDPOINT) gets its token
from `tokex local` with SigV4 evidence signed for the FIPS STS endpoint, which the
exchange accepts by default (TOKEX_STS_ALLOW_FIPS) and forwards to its STS as signed."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request

import pytest

from benchmarks.local_process import load_env_file
from tests.system.endpoints import audit_lines, verify
from tokex import base64url
from tokex.client import token_client
from tokex.client.token_client import TokenClient
from tokex.local.provision import DEMO_ROLE_ARN
from tokex.local.runner import LocalSystem


def test_a_fips_workload_signs_for_the_fips_sts_and_gets_a_token(
    local_system: LocalSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith(("AWS_", "TOKEX_"))]:
        monkeypatch.delenv(name)
    for name, value in load_env_file(local_system.workload_env).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")

    sent: list[dict] = []
    send = token_client._send

    def recording_send(request: urllib.request.Request, timeout: float) -> dict:
        if isinstance(request.data, bytes):  # the POST to /token (discovery is a GET)
            form = dict(urllib.parse.parse_qsl(request.data.decode()))
            sent.append(json.loads(base64url.decode(form["subject_token"])))
        return send(request, timeout)

    monkeypatch.setattr(token_client, "_send", recording_send)
    with audit_lines() as audits:
        token = TokenClient(local_system.issuer).token("demo-api", ["demo:read"])
    assert [request["url"] for request in sent] == ["https://sts-fips.us-east-1.amazonaws.com/"]
    assert verify(local_system, token)["sub"] == DEMO_ROLE_ARN
    assert [(a["outcome"], a["sts_host"]) for a in audits] == [
        ("issued", "sts-fips.us-east-1.amazonaws.com")
    ]
