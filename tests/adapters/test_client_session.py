"""The workload client with a boto3 session the caller made (tokex/client/token_client.py):
what the session says wins over the environment. Offline: the signing needs no AWS, and the
issuer is a loopback fake."""

from __future__ import annotations

import json

import boto3

from tests.support.fake_issuer import fake_issuer, use_static_credentials
from tokex import base64url
from tokex.client.token_client import request_token


def test_a_sessions_own_region_wins_over_the_environments(monkeypatch) -> None:
    """Lambda always sets AWS_REGION: a caller's `Session(region_name=...)` was ignored."""
    use_static_credentials(monkeypatch)  # AWS_REGION=us-east-1
    session = boto3.session.Session(region_name="eu-west-1")
    with fake_issuer() as issuer:
        request_token(issuer.url, "orders-api", session=session)
    [form] = issuer.forms
    signed = json.loads(base64url.decode(form["subject_token"][0]))
    assert signed["url"] == "https://sts.eu-west-1.amazonaws.com/"
