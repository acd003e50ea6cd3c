"""docs/security.md "Known attacks", groups 1-5 and 8, against the running system: each is
refused with the contract's 4xx and never yields a token or a 500."""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.test_exchange import exchange, post, sign
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
    def mutate(signed: dict[str, Any]) -> None:
        when = datetime.now(UTC) + delta
        signed["headers"]["X-Amz-Date"] = when.strftime("%Y%m%dT%H%M%SZ")

    return mutate


GOOD_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
GROUPS_1_TO_4: dict[str, Mutation] = {
    # 1: where the request goes
    "host attacker.example": url("https://attacker.example/"),
    "host suffix trick": url("https://sts.amazonaws.com.attacker.example/"),
    "host prefix trick": url("https://xsts.amazonaws.com/"),
    "trailing dot": url("https://sts.us-east-1.amazonaws.com./"),
    "userinfo": url("https://sts.amazonaws.com@evil.example/"),
    "http scheme": url("http://sts.us-east-1.amazonaws.com/"),
    "port 8443": url("https://sts.us-east-1.amazonaws.com:8443/"),
    "path /x": url("https://sts.us-east-1.amazonaws.com/x"),
    "query string": url("https://sts.us-east-1.amazonaws.com/?Action=GetCallerIdentity"),
    "region mismatch": url("https://sts.eu-west-1.amazonaws.com/"),
    # 2: what the request asks
    "AssumeRole": body("Action=AssumeRole&Version=2011-06-15"),
    "two Actions": body(GOOD_BODY + "&Action=X"),
    "case duplicate": body("action=GetCallerIdentity&Action=GetCallerIdentity&Version=2011-06-15"),
    "CVE-2022-2385 credential": body(GOOD_BODY + "&x-amz-credential=eve"),
    "unknown key": body(GOOD_BODY + "&Extra=1"),
    # 3: headers that redirect or reshape the upstream answer (CVE-2020-16250)
    "caller Host": header("Host", "iam.amazonaws.com"),
    "caller Accept json": header("Accept", "application/json"),
    "CRLF in header": header("X-Tokex-Issuer", "http://127.0.0.1\r\nX-Evil: 1"),
    # 4: the issuer binding
    "issuer header missing": header("X-Tokex-Issuer", None),
    "issuer unsigned": signed_headers(lambda n: n.replace(";x-tokex-issuer", "")),
    "issuer near-miss signed": signed_headers(
        lambda n: n.replace("x-tokex-issuer", "x-tokex-issuers")
    ),
    "other issuer value": header("X-Tokex-Issuer", "https://other.example.com"),
    # 5: the date window
    "stale date": amz_date(timedelta(minutes=-16)),
    "future date": amz_date(timedelta(minutes=6)),
}


@pytest.mark.parametrize("mutation", GROUPS_1_TO_4.values(), ids=GROUPS_1_TO_4.keys())
def test_groups_1_to_5_are_invalid_grant(local_system, mutation):
    signed = sign(local_system)
    mutation(signed)
    status, _, response = exchange(local_system, signed=signed)
    assert (status, response["error"]) == (400, "invalid_grant"), response
    assert "access_token" not in response
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


GROUP_8: dict[str, tuple[bytes, int]] = {
    "oversized form": (form(subject_token="a" * 20000), 413),
    "oversized subject_token": (form(subject_token="a" * 15000), 400),
    "non-UTF-8 body": (b"grant_type=\xff\xfe&audience=demo-api", 400),
    "invalid base64": (form(subject_token="!!!not-base64!!!"), 400),
    "padded base64": (form(subject_token=b64url(b'{"a":1}') + "=="), 400),
    "not JSON": (form(subject_token=raw_token("not json")), 400),
    "JSON array": (form(subject_token=raw_token("[1,2]")), 400),
    "duplicate JSON keys": (
        form(
            subject_token=raw_token(
                '{"method":"POST","method":"GET","url":"","headers":{},"body":""}'
            )
        ),
        400,
    ),
    "wrong JSON types": (
        form(subject_token=raw_token('{"method":1,"url":[],"headers":"x","body":null}')),
        400,
    ),
    "repeated parameter": (form(subject_token="abc") + b"&audience=demo-api", 400),
    "missing subject_token": (form(), 400),
    "bad audience": (form(subject_token="abc", audience="a b"), 400),
    "unsupported token type": (
        form(subject_token="abc", subject_token_type="urn:ietf:params:oauth:token-type:jwt"),
        400,
    ),
    "unsupported requested type": (
        form(subject_token="abc", requested_token_type="urn:x"),
        400,
    ),
}


@pytest.mark.parametrize("payload,status", GROUP_8.values(), ids=GROUP_8.keys())
def test_group_8_malformed_input_is_invalid_request(local_system, payload, status):
    got, _, response = post(local_system.issuer + "/token", payload)
    assert (got, response["error"]) == (status, "invalid_request"), response
    assert "access_token" not in response


def test_oversized_signed_headers_are_refused(local_system):
    signed = sign(local_system)
    signed["headers"]["X-Amz-Security-Token"] = "A" * 9000
    status, _, response = exchange(local_system, signed=signed)
    assert status == 400 and response["error"] in ("invalid_request", "invalid_grant")


def test_non_object_headers_in_signed_request(local_system):
    signed = sign(local_system)
    signed["headers"] = [["Authorization", "x"]]
    status, _, response = exchange(local_system, signed=signed)
    assert status == 400 and response["error"] in ("invalid_request", "invalid_grant")
    assert json.dumps(response).count("Authorization") == 0
