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


def test_a_sessions_region_from_the_environment_does_not_beat_aws_region(
    monkeypatch, tmp_path
) -> None:
    """botocore fills `region_name` from AWS_DEFAULT_REGION or the profile too: those come
    after AWS_REGION, as the CLI resolves it, session or not."""
    use_static_credentials(monkeypatch)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    with fake_issuer() as issuer:
        request_token(issuer.url, "orders-api", session=boto3.session.Session())
    [form] = issuer.forms
    signed = json.loads(base64url.decode(form["subject_token"][0]))
    assert signed["url"] == "https://sts.eu-west-1.amazonaws.com/"
