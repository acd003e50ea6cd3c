"""docs/security.md "Known attacks", groups 1-5 and 8, against the running system: each is
refused with the contract's 4xx and never yields a token or a 500."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.system.endpoints import assert_refused, exchange, post, sign
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

Mutation = Callable[[dict[str, Any]], None]


def url(value: str) -> Mutation:
    return lambda signed: signed.__setitem__("url", value)


def body(value: str) -> Mutation:
    return lambda signed: signed.__setitem__("body", value)


def header(name: str, value: str | None) -> Mutation:
    def mutate(signed: dict[str, Any]) -> None:
        if value is None:
            signed["headers"].pop(name, None)
        else:
            signed["headers"][name] = value

    return mutate


def signed_headers(transform: Callable[[str], str]) -> Mutation:
    def mutate(signed: dict[str, Any]) -> None:
        auth = signed["headers"]["Authorization"]
        prefix, _, rest = auth.partition("SignedHeaders=")
        names, _, tail = rest.partition(",")
        signed["headers"]["Authorization"] = f"{prefix}SignedHeaders={transform(names)},{tail}"

    return mutate


def amz_date(delta: timedelta) -> Mutation:
    """Moves X-Amz-Date, and the credential scope's date with it (a shift across midnight
    would otherwise be refused for the scope, not the window under test)."""

    def mutate(signed: dict[str, Any]) -> None:
        when = datetime.now(UTC) + delta
        signed["headers"]["X-Amz-Date"] = when.strftime("%Y%m%dT%H%M%SZ")
        auth = signed["headers"]["Authorization"]
        scope_date = re.compile(r"(Credential=[^/]+/)[0-9]{8}/")
        assert scope_date.search(auth), auth
        signed["headers"]["Authorization"] = scope_date.sub(rf"\g<1>{when:%Y%m%d}/", auth, count=1)

    return mutate


GOOD_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
GROUPS_1_TO_4: dict[str, tuple[Mutation, str]] = {
    # 1: where the request goes
    "host attacker.example": (
        url("https://attacker.example/"),
        "url host is not an STS endpoint this deployment accepts",
    ),
    "host suffix trick": (
        url("https://sts.amazonaws.com.attacker.example/"),
        "url host is not an STS endpoint this deployment accepts",
    ),
    "host prefix trick": (
        url("https://xsts.amazonaws.com/"),
        "url host is not an STS endpoint this deployment accepts",
    ),
    "trailing dot": (
        url("https://sts.us-east-1.amazonaws.com./"),
        "url host is not an STS endpoint this deployment accepts",
    ),
    "userinfo": (url("https://sts.amazonaws.com@evil.example/"), "url must not contain user info"),
    "http scheme": (url("http://sts.us-east-1.amazonaws.com/"), "url must use https"),
    "port 8443": (url("https://sts.us-east-1.amazonaws.com:8443/"), "url must not name a port"),
    "path /x": (url("https://sts.us-east-1.amazonaws.com/x"), "url path must be exactly /"),
    "query string": (
        url("https://sts.us-east-1.amazonaws.com/?Action=GetCallerIdentity"),
        "url must not have a query: the parameters go in the body",
    ),
    "region mismatch": (
        url("https://sts.eu-west-1.amazonaws.com/"),
        "credential scope region must be eu-west-1 for this host",
    ),
    # 2: what the request asks
    "AssumeRole": (
        body("Action=AssumeRole&Version=2011-06-15"),
        "body may only hold Action=GetCallerIdentity, Version=2011-06-15",
    ),
    "two Actions": (
        body(GOOD_BODY + "&Action=X"),
        "body must not repeat a parameter (compared ignoring case)",
    ),
    "case duplicate": (
        body("action=GetCallerIdentity&Action=GetCallerIdentity&Version=2011-06-15"),
        "body must not repeat a parameter (compared ignoring case)",
    ),
    "CVE-2022-2385 credential": (
        body(GOOD_BODY + "&x-amz-credential=eve"),
        "body may only hold Action=GetCallerIdentity, Version=2011-06-15",
    ),
    "unknown key": (
        body(GOOD_BODY + "&Extra=1"),
        "body may only hold Action=GetCallerIdentity, Version=2011-06-15",
    ),
    # 3: headers that redirect or reshape the upstream answer (CVE-2020-16250)
    "caller Host": (
        header("Host", "iam.amazonaws.com"),
        "header Host must not be sent: tokex sets it",
    ),
    "caller Accept json": (
        header("Accept", "application/json"),
        "header Accept must not be sent: tokex sets it",
    ),
    "CRLF in header": (
        header("X-Tokex-Issuer", "http://127.0.0.1\r\nX-Evil: 1"),
        "header X-Tokex-Issuer must be printable ASCII",
    ),
    # 4: the issuer binding
    "issuer header missing": (header("X-Tokex-Issuer", None), "header X-Tokex-Issuer is required"),
    "issuer unsigned": (
        signed_headers(lambda n: n.replace(";x-tokex-issuer", "")),
        "x-tokex-issuer must be listed in SignedHeaders",
    ),
    "issuer near-miss signed": (
        signed_headers(lambda n: n.replace("x-tokex-issuer", "x-tokex-issuers")),
        "x-tokex-issuer must be listed in SignedHeaders",
    ),
    "other issuer value": (
        header("X-Tokex-Issuer", "https://other.example.com"),
        "X-Tokex-Issuer does not name this issuer",
    ),
    # 5: the date window
    "stale date": (
        amz_date(timedelta(minutes=-16)),
        "X-Amz-Date is more than 15 minutes old: sign again, and if it was signed just now,"
        " set the signer's clock right",
    ),
    "future date": (
        amz_date(timedelta(minutes=6)),
        "X-Amz-Date is more than 5 minutes ahead: check the clock",
    ),
}


@pytest.mark.parametrize("mutation,reason", GROUPS_1_TO_4.values(), ids=GROUPS_1_TO_4.keys())
def test_groups_1_to_5_are_invalid_grant(local_system, mutation, reason):
    signed = sign(local_system)
    mutation(signed)
    response = assert_refused(
        lambda: exchange(local_system, signed=signed), 400, "invalid_grant", reason
    )
    assert "Traceback" not in response["error_description"]


def form(**params: str) -> bytes:
    base = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "audience": "demo-api",
    }
    return urllib.parse.urlencode({**base, **params}).encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(text: str) -> str:
    return b64url(text.encode())


GROUP_8: dict[str, tuple[bytes, int, str]] = {
    "oversized form": (form(subject_token="a" * 20000), 413, "body_size"),
    "oversized subject_token": (
        form(subject_token="a" * 15000),
        400,
        "subject_token is larger than 12288 characters",
    ),
    "non-UTF-8 body": (b"grant_type=\xff\xfe&audience=demo-api", 400, "form"),
    "invalid base64": (
        form(subject_token="!!!not-base64!!!"),
        400,
        "subject_token is not valid base64url",
    ),
    "padded base64": (
        form(subject_token=b64url(b'{"a":1}') + "=="),
        400,
        "subject_token must be base64url without padding",
    ),
    "not JSON": (
        form(subject_token=raw_token("not json")),
        400,
        "subject_token is not UTF-8 JSON without duplicate keys",
    ),
    "JSON array": (
        form(subject_token=raw_token("[1,2]")),
        400,
        "subject_token must be a JSON object",
    ),
    "duplicate JSON keys": (
        form(
            subject_token=raw_token(
                '{"method":"POST","method":"GET","url":"","headers":{},"body":""}'
            )
        ),
        400,
        "subject_token is not UTF-8 JSON without duplicate keys",
    ),
    "wrong JSON types": (
        form(subject_token=raw_token('{"method":1,"url":[],"headers":"x","body":null}')),
        400,
        "subject_token JSON method, url and body must be strings",
    ),
    "repeated parameter": (form(subject_token="abc") + b"&audience=demo-api", 400, "repeated"),
    "missing subject_token": (form(), 400, "subject_token_missing"),
    "bad audience": (form(subject_token="abc", audience="a b"), 400, "audience"),
    "unsupported token type": (
        form(subject_token="abc", subject_token_type="urn:ietf:params:oauth:token-type:saml2"),
        400,
        "subject_token_type",
    ),
    "unsupported requested type": (
        form(subject_token="abc", requested_token_type="urn:x"),
        400,
        "requested_token_type",
    ),
}


@pytest.mark.parametrize("payload,status,reason", GROUP_8.values(), ids=GROUP_8.keys())
def test_group_8_malformed_input_is_invalid_request(local_system, payload, status, reason):
    url = local_system.issuer + "/token"
    assert_refused(lambda: post(url, payload), status, "invalid_request", reason)


def test_oversized_signed_headers_are_refused(local_system):
    signed = sign(local_system)
    signed["headers"]["X-Amz-Security-Token"] = "A" * 9000
    assert_refused(
        lambda: exchange(local_system, signed=signed),
        400,
        "invalid_request",
        "subject_token is larger than 12288 characters",
    )


def test_non_object_headers_in_signed_request(local_system):
    signed = sign(local_system)
    signed["headers"] = [["Authorization", "x"]]
    response = assert_refused(
        lambda: exchange(local_system, signed=signed),
        400,
        "invalid_request",
        "subject_token JSON headers must map names to strings",
    )
    assert json.dumps(response).count("Authorization") == 0
