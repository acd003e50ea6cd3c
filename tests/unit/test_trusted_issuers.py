"""Trusted JWT issuers: configuration only, every entry bound and validated, errors name
the entry and field (docs/contract.md "JWT evidence")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokex.errors import ConfigurationError
from tokex.evidence.trusted_issuers import (
    TrustedIssuer,
    TrustedIssuerError,
    parse_trusted_issuers,
)
from tokex.settings import Settings

OIF = {
    "kind": "aws-oif",
    "issuer": "https://abc123.tokens.sts.global.api.aws",
    "account": "123456789012",
}
EKS = {
    "kind": "eks",
    "issuer": "https://oidc.eks.us-east-1.amazonaws.com/id/0123456789ABCDEF",
    "account": "123456789012",
    "region": "us-east-1",
    "cluster": "prod",
}


def test_both_kinds_parse_and_round_trip_through_json() -> None:
    issuers = parse_trusted_issuers(json.dumps([OIF, EKS]))
    assert issuers.issuers == (
        TrustedIssuer("aws-oif", OIF["issuer"], "123456789012"),
        TrustedIssuer("eks", EKS["issuer"], "123456789012", "us-east-1", "prod"),
    )
    assert parse_trusted_issuers(issuers.to_json()) == issuers
    assert issuers.get(OIF["issuer"]) == issuers.issuers[0]
    assert issuers.get(OIF["issuer"] + "/") is None  # exact match only
    assert issuers.get(None) is None


@pytest.mark.parametrize("value", ["", "  ", "[]"])
def test_empty_means_none(value: str) -> None:
    assert not parse_trusted_issuers(value)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("not json", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),  # a RecursionError at a cold start, not a message
        ('[{"kind": "eks", "kind": "aws-oif"}]', "not valid JSON"),  # which kind?
        ({"kind": "aws-oif"}, "must be a list"),
        (["x"], r"trustedIssuers\[0\] must be an object"),
        ([{**OIF, "kind": "gcp"}], r"trustedIssuers\[0\]\.kind must be one of aws-oif, eks"),
        ([{**OIF, "kind": ["aws-oif"]}], r"trustedIssuers\[0\]\.kind must be one of"),
        ([{**OIF, "kind": {}}], r"trustedIssuers\[0\]\.kind must be one of"),
        ([{**OIF, "region": "us-east-1"}], r"trustedIssuers\[0\]\.region: unknown key"),
        ([{**OIF, "issuer": "http://abc.example"}], r"\.issuer must be an https URL"),
        ([{**OIF, "issuer": "https://abc.example/"}], "trailing slash"),
        ([{**OIF, "issuer": "https://abc.example?x=1"}], "bare URL"),
        ([{**OIF, "issuer": "https://u@abc.example"}], "bare URL"),
        ([{**OIF, "issuer": "https://abc.example/a b"}], "is not a URL"),
        ([{**OIF, "issuer": "https://[::1"}], "is not a URL"),  # urlsplit raised ValueError
        ([{**OIF, "account": "12345"}], r"\.account must be a 12-digit account id"),
        ([{k: v for k, v in OIF.items() if k != "account"}], r"\.account is required"),
        ([{**EKS, "region": "moon-1"}], r"\.region 'moon-1' is not a region name"),
        ([{**EKS, "cluster": "-bad"}], r"\.cluster '-bad' is not an EKS cluster name"),
        ([{k: v for k, v in EKS.items() if k != "cluster"}], r"\.cluster is required"),
        ([OIF, OIF], r"trustedIssuers\[1\]\.issuer: listed twice"),
        ([OIF] * 51, "at most 50"),
    ],
)
def test_invalid_entries_are_refused_naming_the_field(entries: Any, message: str) -> None:
    raw = entries if isinstance(entries, str) else json.dumps(entries)
    with pytest.raises(TrustedIssuerError, match=message):
        parse_trusted_issuers(raw)


def test_tokex_own_issuer_is_never_trusted() -> None:
    own = {**OIF, "issuer": "https://auth.example.com"}
    with pytest.raises(TrustedIssuerError, match="tokex's own issuer"):
        parse_trusted_issuers([own], own_issuer="https://auth.example.com")


def test_loopback_http_only_when_allowed() -> None:
    local = {**OIF, "issuer": "http://127.0.0.1:8000/_local/oif/123456789012"}
    with pytest.raises(TrustedIssuerError, match="https"):
        parse_trusted_issuers([local])
    assert parse_trusted_issuers([local], allow_http_loopback=True)
    with pytest.raises(TrustedIssuerError, match="https"):
        parse_trusted_issuers([{**local, "issuer": "http://10.0.0.1/x"}], allow_http_loopback=True)


def test_settings_read_them_and_refuse_local_issuers_for_a_deployed_issuer() -> None:
    env = {"TOKEX_ISSUER": "https://auth.example.com", "TOKEX_TRUSTED_ISSUERS": json.dumps([EKS])}
    assert Settings.from_env(env).trusted_issuers.get(EKS["issuer"]) is not None
    local = {**OIF, "issuer": "http://127.0.0.1:8000/_local/oif/123456789012"}
    with pytest.raises(ConfigurationError, match="local mode only"):
        Settings.from_env({**env, "TOKEX_TRUSTED_ISSUERS": json.dumps([local])})
    shouting = {**local, "issuer": "HTTP://127.0.0.1:8000/_local/oif/123456789012"}
    with pytest.raises(ConfigurationError, match="local mode only"):  # the scheme's case
        Settings.from_env({**env, "TOKEX_TRUSTED_ISSUERS": json.dumps([shouting])})
    with pytest.raises(ConfigurationError, match="TOKEX_TRUSTED_ISSUERS"):
        Settings.from_env({**env, "TOKEX_TRUSTED_ISSUERS": "[{"})
    mine = {**OIF, "issuer": "https://auth.example.com"}
    with pytest.raises(ConfigurationError, match="own issuer"):
        Settings.from_env({**env, "TOKEX_TRUSTED_ISSUERS": json.dumps([mine])})
