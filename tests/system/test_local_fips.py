"""A workload whose SDK is set to FIPS endpoints (AWS_USE_FIPS_ENDPOINT) gets its token
from `tokex local` with SigV4 evidence signed for the FIPS STS endpoint, which the
exchange accepts by default (TOKEX_STS_ALLOW_FIPS) and forwards to its STS as signed."""

from __future__ import annotations

import pytest

from tests.system.endpoints import as_the_workload, audit_lines, recorded_signed_requests, verify
from tokex.client.token_client import TokenClient
from tokex.local.provision import DEMO_ROLE_ARN
from tokex.local.runner import LocalSystem


def test_a_fips_workload_signs_for_the_fips_sts_and_gets_a_token(
    local_system: LocalSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_the_workload(local_system, monkeypatch)
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")

    sent = recorded_signed_requests(monkeypatch)
    with audit_lines() as audits:
        token = TokenClient(local_system.issuer).token("demo-api", ["demo:read"])
    assert [request["url"] for request in sent] == ["https://sts-fips.us-east-1.amazonaws.com/"]
    assert verify(local_system, token)["sub"] == DEMO_ROLE_ARN
    assert [(a["outcome"], a["sts_host"]) for a in audits] == [
        ("issued", "sts-fips.us-east-1.amazonaws.com")
    ]
