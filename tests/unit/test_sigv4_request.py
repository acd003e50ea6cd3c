"""The rules of docs/security.md "The signed STS request": attack groups 1-5 and 8.

Valid requests are signed with botocore's SigV4Auth, as a real workload signs them, and
then mutated. The signature itself is STS's to check (tests/system); these tests
check every rule tokex applies before forwarding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tokex.errors import InvalidGrant, InvalidRequest
from tokex.evidence.sigv4_request import (
    AMZ_DATE_FORMAT,
    MAX_REQUEST_JSON_DEPTH,
    MAX_SUBJECT_TOKEN_CHARS,
    STS_BODY,
    decode_b64url_json,
    decode_subject_token,
    verify_sts_request,
)
from tokex.evidence.sts_endpoints import StsEndpoints

ISSUER = "https://auth.example.com"
HOST = "sts.us-east-1.amazonaws.com"
ENDPOINTS = StsEndpoints(["aws"])
AKID = "ASIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE-session-token"
FORM = "application/x-www-form-urlencoded; charset=utf-8"


def sign(
    *,
    host: str = HOST,
    region: str = "us-east-1",
    service: str = "sts",
    issuer: str | None = ISSUER,
    token: str | None = SESSION_TOKEN,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The signed-request JSON (docs/contract.md "The signed request"), signed now by
    botocore."""
    headers = {"Content-Type": FORM, **(extra or {})}
    if issuer is not None:
        headers["X-Tokex-Issuer"] = issuer
    request = AWSRequest(method="POST", url=f"https://{host}/", data=STS_BODY, headers=headers)
    SigV4Auth(Credentials(AKID, SECRET, token), service, region).add_auth(request)
    return {
        "method": "POST",
        "url": f"https://{host}/",
        "headers": dict(request.headers.items()),
        "body": STS_BODY,
    }


def header(signed: dict[str, Any], name: str) -> str:
    return next((v for k, v in signed["headers"].items() if k.lower() == name.lower()), "")


def signed_at(signed: dict[str, Any]) -> datetime:
    """When botocore signed it (now, for a request whose date was removed)."""
    value = header(signed, "X-Amz-Date")
    if not value:
        return datetime.now(UTC)
    return datetime.strptime(value, AMZ_DATE_FORMAT).replace(tzinfo=UTC)


def verify(signed: dict[str, Any], *, now: datetime | None = None, issuer: str = ISSUER):
    return verify_sts_request(
        signed, issuer=issuer, endpoints=ENDPOINTS, now=now or signed_at(signed)
    )


def refused(signed: dict[str, Any], match: str, **kwargs: Any) -> InvalidGrant:
    with pytest.raises(InvalidGrant, match=match) as caught:
        verify(signed, **kwargs)
    # Descriptions are short and never echo secrets or the caller's request.
    description = caught.value.description
    assert len(description) < 120
    signature = re.search(r"Signature=([0-9a-f]{64})", header(signed, "Authorization"))
    for secret in (SESSION_TOKEN, SECRET, signature[1] if signature else SECRET):
        assert secret not in description
    return caught.value


def with_auth(signed: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    auth = signed["headers"]["Authorization"]
    assert old in auth
    signed["headers"]["Authorization"] = auth.replace(old, new)
    return signed


# --- accepted ------------------------------------------------------------------------


def test_a_botocore_signed_request_is_accepted_and_rebuilt() -> None:
    signed = sign(extra={"User-Agent": "tokex-client/1.0"})
    req = verify(signed)
    assert (req.host, req.region, req.partition) == (HOST, "us-east-1", "aws")
    assert req.body == "Action=GetCallerIdentity&Version=2011-06-15"
    assert req.amz_date == signed_at(signed)
    assert req.access_key_id == AKID
    assert req.signature == signed["headers"]["Authorization"][-64:]
    names = [name for name, _ in req.headers]
    assert names == [
        "Authorization",
        "X-Amz-Date",
        "X-Amz-Security-Token",
        "Content-Type",
        "X-Tokex-Issuer",
        "User-Agent",
    ]
    assert dict(req.headers)["X-Amz-Security-Token"] == SESSION_TOKEN


def test_iam_user_without_session_token_and_lowercase_header_names() -> None:
    signed = sign(token=None)
    signed["headers"] = {k.lower(): v for k, v in signed["headers"].items()}
    req = verify(signed)
    assert "X-Amz-Security-Token" not in dict(req.headers)
    assert "X-Tokex-Issuer" in dict(req.headers)  # sent with canonical casing


def test_global_endpoint_signs_for_us_east_1() -> None:
    assert verify(sign(host="sts.amazonaws.com")).region == "us-east-1"
    refused(sign(host="sts.amazonaws.com", region="us-west-2"), "region must be us-east-1")


def test_round_trip_through_the_subject_token() -> None:
    signed = sign()
    token = base64.urlsafe_b64encode(json.dumps(signed).encode()).rstrip(b"=").decode()
    assert verify(decode_subject_token(token)).host == HOST


def test_correct_content_sha256_is_accepted() -> None:
    digest = hashlib.sha256(STS_BODY.encode()).hexdigest()
    assert verify(sign(extra={"X-Amz-Content-Sha256": digest}))


# --- group 1: the URL ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("https://attacker.example/", "not an STS endpoint"),
        ("https://sts.amazonaws.com.attacker.example/", "not an STS endpoint"),
        ("https://xsts.amazonaws.com/", "not an STS endpoint"),
        ("https://sts.us-east-1.amazonaws.com./", "not an STS endpoint"),
        ("https://sts.us-east-1.amazonaws.com@evil.example/", "user info"),
        ("https://evil.example@sts.us-east-1.amazonaws.com/", "user info"),
        ("http://sts.us-east-1.amazonaws.com/", "https"),
        ("HTTPS://sts.us-east-1.amazonaws.com/", "https"),
        ("https://sts.us-east-1.amazonaws.com:8443/", "port"),
        ("https://sts.us-east-1.amazonaws.com:443/", "port"),
        ("https://sts.us-east-1.amazonaws.com/x", "path"),
        ("https://sts.us-east-1.amazonaws.com//", "path"),
        ("https://sts.us-east-1.amazonaws.com", "path"),
        ("https://sts.us-east-1.amazonaws.com/?Action=AssumeRole", "query"),
        ("https://sts.us-east-1.amazonaws.com?x=1/", "query"),
        ("https://sts.us-east-1.amazonaws.com/#frag", "fragment"),
        ("https://STS.us-east-1.amazonaws.com/", "lower case"),
        ("https://52.94.0.1/", "not an STS endpoint"),
        ("https://[::1]/", "IP literal"),
        ("https://sts%2eus-east-1.amazonaws.com/", "percent"),
        ("https://sts.us-east-1.amazonaws.com/%2F", "percent"),
        ("https://sts.us-east-1.amazonaws.com\\@evil.example/", "backslash"),
        ("https://sts.us-east-1.amazonaws.com /", "whitespace"),
        ("https://sts.us-east-1.amazonaws.com/\r\nX: y", "whitespace"),
        ("https://sts.us-east-1.amazonaws.com/" + "a" * 300, "short"),
    ],
)
def test_group1_url(url: str, match: str) -> None:
    signed = sign()
    signed["url"] = url
    refused(signed, match)


@pytest.mark.parametrize("method", ["GET", "post", "PUT", " POST"])
def test_method_must_be_post(method: str) -> None:
    signed = sign()
    signed["method"] = method
    refused(signed, "method must be POST")


# --- group 2: the body ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("Action=AssumeRole&Version=2011-06-15", "may only hold"),
        ("Action=GetCallerIdentity&Action=X&Version=2011-06-15", "repeat"),
        ("Action=GetCallerIdentity&Version=2011-06-15&Action=GetCallerIdentity", "repeat"),
        ("action=GetCallerIdentity&Action=GetCallerIdentity&Version=2011-06-15", "repeat"),
        ("action=GetCallerIdentity&Version=2011-06-15", "may only hold"),
        ("Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Credential=eve", "may only hold"),
        ("Action=GetCallerIdentity&Version=2011-06-15&RoleArn=x", "may only hold"),
        ("Action=GetCallerIdentity&Version=2011-06-15&", "key=value"),
        ("Action=GetCallerIdentity&&Version=2011-06-15", "key=value"),
        ("Action=GetCallerIdentity&Version=2011-06-15=x", "key=value"),
        ("Action=GetCallerIdentity", "exactly"),
        ("Version=2011-06-15&Action=GetCallerIdentity", "exactly"),
        ("Action=Get+CallerIdentity&Version=2011-06-15", "percent-encoding or"),
        ("Action=GetCallerIdentity&Version=2011-06-15%26Action%3DAssumeRole", "percent"),
        ("Action=GetCallerIdentity&Version=2011-06-14", "may only hold"),
        ("", "key=value"),
        ("Action=GetCallerIdentity&Version=2011-06-15&" + "a=b&" * 100, "exactly"),
    ],
)
def test_group2_body(body: str, match: str) -> None:
    signed = sign()
    signed["body"] = body
    refused(signed, match)


# --- group 3: headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("Host", "iam.amazonaws.com", "must not be sent"),
        ("host", HOST, "must not be sent"),
        ("Accept", "application/json", "must not be sent"),
        ("X-Forwarded-For", "10.0.0.1", "not accepted"),
        ("X-Amz-Target", "AWSSecurityTokenServiceV20110615.AssumeRole", "not accepted"),
        ("Date", "Thu, 26 Nov 2026 12:00:00 GMT", "not accepted"),
        ("x-amz-date", "20261126T120000Z", "more than once"),
        ("CONTENT-TYPE", FORM, "more than once"),
        ("X-Amz-Date\r\nHost", "evil.example", "header names"),
        ("X Amz", "1", "header names"),
        ("", "1", "header names"),
    ],
)
def test_group3_headers(name: str, value: str, match: str) -> None:
    signed = sign()
    signed["headers"][name] = value
    refused(signed, match)


@pytest.mark.parametrize(
    "value",
    [ISSUER + "\r\nHost: evil.example", ISSUER + "\n", "a\x00b", " " + ISSUER, "caf\u00e9", ""],
)
def test_header_values_must_be_printable_ascii(value: str) -> None:
    signed = sign()
    signed["headers"]["X-Tokex-Issuer"] = value
    refused(signed, "printable ASCII")


def test_header_value_length_caps() -> None:
    assert verify(sign(token="T" * 8192))  # AWS fixes no size: session policies, tags
    refused(sign(token="T" * 8193), "X-Amz-Security-Token is too long")
    signed = sign(extra={"User-Agent": "u" * 513})
    refused(signed, "User-Agent is too long")
    signed = with_auth(sign(), "aws4_request", "aws4_request" + " " * 1024)
    refused(signed, "Authorization is too long")


@pytest.mark.parametrize("name", ["Authorization", "X-Amz-Date", "Content-Type"])
def test_required_headers(name: str) -> None:
    signed = sign()
    del signed["headers"][name]
    refused(signed, f"header {name} is required")


@pytest.mark.parametrize("value", ["application/json", "text/xml", "application/x-amz-json-1.1"])
def test_content_type_must_be_form(value: str) -> None:
    refused(sign(extra={"Content-Type": value}), "Content-Type")


@pytest.mark.parametrize("value", ["UNSIGNED-PAYLOAD", hashlib.sha256(b"").hexdigest()])
def test_content_sha256_must_match_the_body(value: str) -> None:
    refused(sign(extra={"X-Amz-Content-Sha256": value}), "SHA-256 of the body")


# --- group 4: the issuer header -------------------------------------------------------


def test_group4_issuer_missing() -> None:
    refused(sign(issuer=None), "header X-Tokex-Issuer is required")


def test_group4_issuer_unsigned() -> None:
    signed = sign(issuer=None)
    signed["headers"]["X-Tokex-Issuer"] = ISSUER  # added after signing
    refused(signed, "x-tokex-issuer must be listed in SignedHeaders")


@pytest.mark.parametrize("near_miss", ["x-tokex-issuers", "x-tokex-issue", "x-tokex-issuer-"])
def test_group4_issuer_near_miss_in_signed_headers(near_miss: str) -> None:
    signed = with_auth(sign(), ";x-tokex-issuer,", f";{near_miss},")
    refused(signed, "x-tokex-issuer must be listed")


@pytest.mark.parametrize(
    "other", ["https://auth.other.example", ISSUER + "/", "https://AUTH.example.com"]
)
def test_group4_issuer_of_another_deployment(other: str) -> None:
    refused(sign(issuer=other), "does not name this issuer")


# --- group 5: the date window ---------------------------------------------------------


def test_group5_date_window_boundaries() -> None:
    signed = sign()
    at = signed_at(signed)
    assert verify(signed, now=at + timedelta(minutes=15))
    # A slow clock signs "old" requests: the answer says so, not only "sign again".
    refused(
        signed,
        "more than 15 minutes old: sign again, and if it was signed just now, set the signer's",
        now=at + timedelta(minutes=15, seconds=1),
    )
    assert verify(signed, now=at - timedelta(minutes=5))
    refused(signed, "5 minutes ahead", now=at - timedelta(minutes=5, seconds=1))


@pytest.mark.parametrize("value", ["2026-11-26T12:00:00Z", "20261126T120000", "20261332T120000Z"])
def test_group5_malformed_date(value: str) -> None:
    signed = sign()
    signed["headers"]["X-Amz-Date"] = value
    refused(signed, "YYYYMMDDTHHMMSSZ", now=datetime.fromisoformat("2026-11-26T12:00:00+00:00"))


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        verify(sign(), now=datetime(2026, 11, 26, 12))


# --- the Authorization header ---------------------------------------------------------


def test_credential_scope_must_match_host_region_service_and_date() -> None:
    refused(sign(region="us-west-2"), "region must be us-east-1")
    refused(sign(service="iam"), "service must be sts")
    signed = sign()
    date = signed["headers"]["X-Amz-Date"][:8]
    refused(with_auth(signed, f"/{date}/", "/20000101/"), "date of X-Amz-Date")


def test_regional_hosts_check_their_own_region() -> None:
    assert verify(sign(host="sts.eu-west-1.amazonaws.com", region="eu-west-1"))
    refused(sign(host="sts.eu-west-1.amazonaws.com", region="us-east-1"), "eu-west-1")


@pytest.mark.parametrize(
    "auth",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA1 Credential=x, SignedHeaders=host, Signature=y",
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256 garbage",
        "AWS4-HMAC-SHA256  Credential=a/b/c/sts/aws4_request, SignedHeaders=host, Signature=0",
        "AWS4-HMAC-SHA256 Credential=a/b",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261126/us-east-1/sts/aws4_request",
    ],
)
def test_garbage_authorization(auth: str) -> None:
    signed = sign()
    signed["headers"]["Authorization"] = auth
    refused(signed, "Authorization|Credential")


def test_authorization_fields_once_each_in_any_order() -> None:
    signed = sign()
    auth = signed["headers"]["Authorization"]
    signature = auth[-64:]
    signed["headers"]["Authorization"] = auth + f", Signature={signature}"
    refused(signed, "Signature only once")
    cred = auth.split(" ")[1]
    signed["headers"]["Authorization"] = auth.replace(" Credential", f" {cred} Credential")
    refused(signed, "Credential only once")
    head, rest = auth.split(" ", 1)
    fields = rest.split(", ")
    signed["headers"]["Authorization"] = f"{head} " + ",".join(reversed(fields))
    assert verify(signed).signature == signature  # ',' separator and any order


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("Signature=", "Signature=ABCDEF", "64 lower-case hex"),
        ("/sts/aws4_request", "/sts/aws4_request/x", "Credential must be"),
        ("/sts/aws4_request", "/sts/aws5_request", "Credential must be"),
        (f"Credential={AKID}", "Credential=AK/IA", "Credential must be"),
        (f"Credential={AKID}", "Credential=short", "Credential must be"),
        ("SignedHeaders=content-type;host", "SignedHeaders=host;content-type", "sorted"),
        ("SignedHeaders=content-type;host", "SignedHeaders=content-type;host;host", "sorted"),
        ("SignedHeaders=content-type;host", "SignedHeaders=Content-Type;host", "sorted"),
        ("SignedHeaders=content-type;host", "SignedHeaders=content-type;;host", "sorted"),
        ("content-type;host;", "content-type;", "host must be listed"),
        ("host;x-amz-date;", "host;", "x-amz-date must be listed"),
        ("x-tokex-issuer", "x-tokex-issuer;zz-extra", "except host must be sent"),
    ],
)
def test_authorization_field_rules(old: str, new: str, match: str) -> None:
    refused(with_auth(sign(), old, new), match)


def test_signed_session_token_must_be_sent() -> None:
    signed = sign()
    del signed["headers"]["X-Amz-Security-Token"]
    refused(signed, "every signed header except host must be sent")


# --- group 8 / shape: the subject_token and its JSON ----------------------------------


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("", "empty"),
        (b64(b'{"a": 1}') + "=", "without padding"),
        ("eyJhIjogMX0==", "without padding"),
        ("eyJh+IjogMX0", "not valid base64url"),
        ("eyJh/IjogMX0", "not valid base64url"),
        ("eyJh IjogMX0", "not valid base64url"),
        ("eyJhIjogMX0\n", "not valid base64url"),
        ("eyJhIjogMX0.", "not valid base64url"),
        ("e", "not valid base64url"),
        ("eyJhIjogMX1", "canonical"),  # same bytes as ...MX0, non-zero trailing bits
        (b64(b"\xff\xfe{}"), "UTF-8 JSON"),
        (b64('{"a": "caf\u00e9"}'.encode("latin-1")), "UTF-8 JSON"),
        (b64(b"\xef\xbb\xbf{}"), "UTF-8 JSON"),  # byte-order mark
        (b64(b"{not json"), "UTF-8 JSON"),
        (b64(b'{"a": 1, "a": 2}'), "duplicate keys"),
        (b64(b'{"headers": {"Host": "a", "Host": "b"}}'), "duplicate keys"),
        (b64(b'{"a": NaN}'), "UTF-8 JSON"),
        (b64(b"[" * 5000 + b"]" * 5000), "UTF-8 JSON|larger"),
        (b64(b"[]"), "JSON object"),
        (b64(b'"text"'), "JSON object"),
        (b64(b"null"), "JSON object"),
        (b64(b"1"), "JSON object"),
        ("A" * (MAX_SUBJECT_TOKEN_CHARS + 1), "larger than"),
    ],
)
def test_group8_subject_token_decoding(token: str, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        decode_subject_token(token)


def test_decoding_accepts_up_to_the_cap_and_is_reusable() -> None:
    document = {"document": "x" * 100, "rsa2048": "y"}
    assert decode_b64url_json(b64(json.dumps(document).encode()), name="e", max_len=200) == (
        document
    )
    padded = {"k": "v" * (MAX_SUBJECT_TOKEN_CHARS * 3 // 4 - 20)}
    token = b64(json.dumps(padded).encode())
    assert len(token) <= MAX_SUBJECT_TOKEN_CHARS
    assert decode_subject_token(token) == padded
    with pytest.raises(InvalidRequest, match="aws_instance_identity is larger than 10"):
        decode_b64url_json("eyJhIjogMX0", name="aws_instance_identity", max_len=10)


@pytest.mark.parametrize("depth", [MAX_REQUEST_JSON_DEPTH, 900, 3000])
def test_evidence_nested_too_deeply_says_so_on_every_runtime(depth: int) -> None:
    """Past Python 3.11's parser limit (about 1,000 levels; 3.13 parses thousands) the
    reason was "not UTF-8 JSON" there and a later shape error on 3.13. In the evidence
    object the smallest `depth` is one level too deep."""
    nested = "[" * depth + "]" * depth
    evidence = b64(f'{{"document": {nested}, "rsa2048": "x"}}'.encode())
    with pytest.raises(
        InvalidRequest,
        match=f"^aws_instance_identity is nested deeper than {MAX_REQUEST_JSON_DEPTH} levels$",
    ):
        decode_b64url_json(evidence, name="aws_instance_identity", max_len=12 * 1024)
    with pytest.raises(InvalidRequest, match=r"^subject_token is nested deeper than"):
        decode_subject_token(b64(f'{{"headers": {nested}}}'.encode()))


def test_nesting_depth_is_counted_outside_strings() -> None:
    deepest = "[" * (MAX_REQUEST_JSON_DEPTH - 1) + "]" * (MAX_REQUEST_JSON_DEPTH - 1)
    assert decode_b64url_json(b64(f'{{"a": {deepest}}}'.encode()), name="e", max_len=200) == {
        "a": json.loads(deepest)
    }
    # Brackets in strings (escaped quotes too) are no nesting: invalid JSON stays so.
    quoted = json.dumps('\\" [' + "[" * 3000)
    with pytest.raises(InvalidRequest, match="not UTF-8 JSON"):
        decode_b64url_json(b64(f'{{"a": {quoted}, }}'.encode()), name="e", max_len=12 * 1024)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.pop("body"),
        lambda s: s.update(extra="x"),
        lambda s: s.update(method=1),
        lambda s: s.update(url=None),
        lambda s: s.update(body=["Action=GetCallerIdentity"]),
        lambda s: s.update(headers=[["Authorization", "x"]]),
        lambda s: s.update(headers={"X-Amz-Date": 20261126}),
        lambda s: s.update(headers="Authorization: x"),
    ],
)
def test_wrong_json_shapes_are_invalid_request(mutate: Any) -> None:
    signed = sign()
    mutate(signed)
    with pytest.raises(InvalidRequest, match="subject_token JSON"):
        verify_sts_request(
            signed,
            issuer=ISSUER,
            endpoints=ENDPOINTS,
            now=datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
        )


def test_a_deployment_may_require_the_audience_to_be_signed() -> None:
    """Without X-Tokex-Audience a leaked request buys a token for any audience its
    principal may have: TOKEX_REQUIRE_SIGNED_AUDIENCE refuses such a request."""
    bare, bound = sign(), sign(extra={"X-Tokex-Audience": "orders-api"})

    def verified(signed: dict[str, Any], *, required: bool) -> str:
        return verify_sts_request(
            signed,
            issuer=ISSUER,
            endpoints=ENDPOINTS,
            now=signed_at(signed),
            audience="orders-api",
            require_audience=required,
        ).host

    assert verified(bound, required=False) == verified(bound, required=True) == HOST
    assert verified(bare, required=False) == HOST
    with pytest.raises(InvalidGrant, match="requires a signed X-Tokex-Audience"):
        verified(bare, required=True)
    # Added to a captured request after signing, the header binds nothing (STS ignores an
    # unsigned header): refused, whether or not the deployment requires it.
    added = {**bare, "headers": {**bare["headers"], "X-Tokex-Audience": "orders-api"}}
    for required in (False, True):
        with pytest.raises(InvalidGrant, match="X-Tokex-Audience must be signed"):
            verified(added, required=required)
