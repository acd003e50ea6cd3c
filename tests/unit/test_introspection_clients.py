"""Introspection client credentials: HTTP Basic parsing (RFC 6749 §2.3.1) and the hash a
secret is stored as. The store itself: tests/adapters/test_introspection_clients.py."""

from __future__ import annotations

import base64

import pytest

from tokex.introspection_clients import (
    InvalidClient,
    basic_authorization,
    parse_basic_authorization,
    secret_hash,
)


def basic(raw: str) -> str:
    return "Basic " + base64.b64encode(raw.encode()).decode()


def test_basic_authorization_round_trip():
    header = basic_authorization("tc_0123456789abcdef0123", "s3cr-et_x")
    assert parse_basic_authorization(header) == ("tc_0123456789abcdef0123", "s3cr-et_x")


def test_basic_credentials_are_form_urlencoded_before_base64():
    # RFC 6749 §2.3.1: "client%3Aid" is the id "client:id"; "+" is a space.
    assert parse_basic_authorization(basic("client%3Aid:p%40ss+word")) == ("client:id", "p@ss word")
    assert parse_basic_authorization("basic " + basic("a:b:c")[6:]) == ("a", "b:c")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no_credentials"),
        ("", "no_credentials"),
        ("Bearer abc", "not_basic"),
        ("Basic", "not_basic"),
        ("Basic !!!", "malformed_basic"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "malformed_basic"),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "malformed_basic"),
        ("Basic " + "A" * 600, "credentials_too_large"),
    ],
)
def test_malformed_basic_credentials_are_invalid_client(header, reason):
    with pytest.raises(InvalidClient) as err:
        parse_basic_authorization(header)
    assert err.value.reason == reason
    assert err.value.status == 401
    assert err.value.body() == {
        "error": "invalid_client",
        "error_description": "client authentication failed",
    }
    assert err.value.headers() == {"WWW-Authenticate": 'Basic realm="tokex"'}


def test_secret_hash_is_bound_to_the_client_and_names_its_scheme():
    digest = secret_hash("tc_aaaaaaaaaaaaaaaaaaaa", "secret")
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert "secret" not in digest.removeprefix("sha256:")
    assert digest != secret_hash("tc_bbbbbbbbbbbbbbbbbbbb", "secret")
    assert digest == secret_hash("tc_aaaaaaaaaaaaaaaaaaaa", "secret")
