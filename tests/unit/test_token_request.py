"""The form and its media type, parsed as the contract and RFC 9110 say (issue 9, item 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import urlencode

import pytest

from tokex.errors import InvalidRequest, InvalidScope, UnsupportedMediaType
from tokex.forms import MAX_FORM_PARAMETERS, check_content_type, parse_form
from tokex.token_request import TokenRequest, parse_token_request

FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    "content_type",
    [
        FORM,
        "Application/X-WWW-Form-URLEncoded",  # type and subtype are case-insensitive
        f"{FORM}; charset=utf-8",
        f"{FORM};charset=UTF-8",
        f'{FORM}; charset="utf-8"',
        f"{FORM} ;\tcharset=utf-8",  # OWS is SP and HTAB around the semicolon
        f" {FORM}\t",  # and around the field value
        f"{FORM};",  # an empty parameter is allowed by the grammar
        f"{FORM};; charset=utf-8",
    ],
)
def test_accepted_media_types(content_type: str) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize(
    ("content_type", "description"),
    [
        (f"{FORM}; charset = utf-8", "has malformed parameters"),
        (f"{FORM} ;charset= utf-8", "has malformed parameters"),
        (f"{FORM}, {FORM}", "must be sent once"),  # API Gateway joins a repeated header
        (f"{FORM}; charset=utf-8; charset=utf-8", "charset more than once"),
        (f"{FORM}; charset=latin-1", "must be UTF-8 encoded"),
        ("application/json", f"must be {FORM}"),
        (None, f"must be {FORM}"),
    ],
)
def test_refused_media_types_say_what_to_fix(content_type: str | None, description: str) -> None:
    """A client told to send what it already sends cannot find its mistake."""
    with pytest.raises(UnsupportedMediaType) as caught:
        check_content_type(content_type)
    assert description in caught.value.description


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        (None, "content_type"),
        ("", "content_type"),
        ("application/json", "content_type"),
        (f"{FORM}\u00a0", "content_type"),  # a no-break space is not OWS
        (f"\x01{FORM}", "content_type"),  # nor is a control character
        (f"\x0b{FORM}", "content_type"),
        (f"{FORM}\r\n", "content_type"),
        (f"{FORM}\u2003", "content_type"),
        ("application / x-www-form-urlencoded", "content_type"),
        (f"{FORM}; charset = utf-8", "content_type"),  # no whitespace around "="
        (f'{FORM}; charset="utf-8', "content_type"),  # unterminated quoted-string
        (f"{FORM}x", "content_type"),
        (f"{FORM}; charset=latin-1", "charset"),
        (f"{FORM}; charset=utf-8; charset=utf-8", "charset"),
        (f"{FORM}; boundary=x", "content_type_param"),
    ],
)
def test_refused_media_types(content_type: str | None, reason: str) -> None:
    with pytest.raises(UnsupportedMediaType) as refused:
        check_content_type(content_type)
    assert (refused.value.status, refused.value.reason) == (415, reason)


# Whitespace on both sides of each `;` that the parser could split between two parameters
# in every way: 3^n ways for n of them, tried one by one when the match fails.
HOSTILE_MEDIA_TYPES = [
    FORM + " ; " * 2000 + "x",
    FORM + " ;" * 3000 + "\x00",
    FORM + "\t;\t" * 500 + "=",
]
PARSE_HOSTILE = """
import json, sys
from tokex.errors import UnsupportedMediaType
from tokex.forms import check_content_type
for content_type in json.load(sys.stdin):
    try:
        check_content_type(content_type)
    except UnsupportedMediaType as refused:
        print(refused.reason)
"""


def test_a_hostile_media_type_is_refused_without_backtracking() -> None:
    """A 25-byte prefix and ` ; ` 17 times once kept the parser (C code: no deadline
    stops it) busy for 10 s, each repeat tripling it; these would take longer than the
    universe has existed. In a child, so that a regression fails here instead of hanging
    the suite; the limit only tells "finished" from "never finishes"."""
    parsed = subprocess.run(
        [sys.executable, "-c", PARSE_HOSTILE],
        input=json.dumps(HOSTILE_MEDIA_TYPES),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert parsed.stdout.split() == ["content_type"] * len(HOSTILE_MEDIA_TYPES)


def test_unrecognised_parameters_are_ignored_up_to_the_limit() -> None:
    fields = {f"extra{i}": "x" for i in range(MAX_FORM_PARAMETERS - 1)}
    form = parse_form(urlencode({"grant_type": "g", **fields}).encode())
    assert len(form) == MAX_FORM_PARAMETERS and form["grant_type"] == "g"
    assert len(parse_form(urlencode({f"p{i}": "x" for i in range(17)}).encode())) == 17


def test_more_parameters_than_the_limit_have_their_own_error() -> None:
    body = urlencode({f"p{i}": "x" for i in range(MAX_FORM_PARAMETERS + 1)}).encode()
    with pytest.raises(InvalidRequest) as refused:
        parse_form(body)
    assert refused.value.reason == "form_parameters"
    assert refused.value.description == f"the form has more than {MAX_FORM_PARAMETERS} parameters"


@pytest.mark.parametrize(
    "body",
    [
        "grant_type=g" + "&" * 64,  # one parameter, 64 separators
        "&".join(f"p{i}=x" for i in range(MAX_FORM_PARAMETERS)) + "&",  # a trailing `&`
        "&&".join(f"p{i}=x" for i in range(MAX_FORM_PARAMETERS)),  # an empty field each
        "&" * 16_000,  # none at all
    ],
    ids=["one", "limit-trailing", "limit-doubled", "none"],
)
def test_empty_fields_do_not_count_towards_the_limit(body: str) -> None:
    """An empty field (`&&`, a leading or trailing `&`) is no parameter: docs/contract.md
    "`POST {iss}/token` — RFC 8693 token exchange"."""
    assert len(parse_form(body.encode())) == len([field for field in body.split("&") if field])


@pytest.mark.parametrize("body", [b"\xff=1", b"a=%ff"])
def test_malformed_forms_are_still_malformed(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_form(body)
    assert refused.value.reason == "form"


@pytest.mark.parametrize(
    ("body", "form"),
    [
        (b"a=1&&b=2", {"a": "1", "b": "2"}),  # an empty field is no parameter
        (b"&a=1&", {"a": "1"}),  # nor is a leading or trailing '&'
        (b"a=1&b", {"a": "1", "b": ""}),  # a name without '=' has an empty value
        (b"&", {}),
    ],
)
def test_a_form_is_read_as_the_url_standard_reads_it(body: bytes, form: dict[str, str]) -> None:
    """A client that builds its body by concatenation and leaves a stray '&' is no less
    clear than one that does not (RFC 6749 §3.2 asks nothing more of the form)."""
    assert parse_form(body) == form


def test_a_trailing_ampersand_or_a_bare_name_changes_nothing_at_the_token_endpoint() -> None:
    body = urlencode(JWT_FORM).encode()
    expected = parse_token_request(body, FORM)
    assert parse_token_request(body + b"&", FORM) == expected
    assert parse_token_request(body + b"&&scope", FORM) == expected  # empty: omitted


@pytest.mark.parametrize("body", [b"scope=&scope=a", b"scope&scope=a", b"scope=a&scope="])
def test_a_parameter_sent_twice_is_refused_even_with_one_value_empty(body: bytes) -> None:
    """§3.2: "MUST NOT be included more than once"; which of the two was meant is not
    for tokex to guess."""
    with pytest.raises(InvalidRequest) as refused:
        parse_form(body)
    assert refused.value.reason == "repeated"
    assert refused.value.description == "parameter 'scope' is repeated"


# --- a JWT as the subject token (docs/contract.md "JWT evidence") ------------------------

JWT_FORM = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "subject_token": "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln",
    "audience": "orders-api",
}


def parse(fields: dict[str, str]) -> TokenRequest:
    return parse_token_request(urlencode(fields).encode(), FORM)


def test_a_jwt_subject_token_is_kept_as_sent_for_the_verifier() -> None:
    request = parse({**JWT_FORM, "scope": "orders:read"})
    assert request.subject_jwt == JWT_FORM["subject_token"]
    assert request.signed_request is None and request.scopes == ("orders:read",)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aws_instance_identity": "e30"}, "instance_identity_with_jwt"),
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "subject_token_type"),
    ],
)
def test_jwt_requests_with_the_wrong_companions_are_invalid_request(
    changes: dict[str, str], reason: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse({**JWT_FORM, **changes})
    assert (refused.value.status, refused.value.reason) == (400, reason)


def test_an_oversized_jwt_request_is_413() -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse({**JWT_FORM, "subject_token": "a." * 9000 + "b"})
    assert (refused.value.status, refused.value.reason) == (413, "body_size")


def test_scope_count_and_shape_have_their_own_errors() -> None:
    """A malformed scope is `invalid_scope` (RFC 6749 section 5.2: "invalid, unknown,
    malformed"); scopes are counted once each, however often they are repeated."""
    assert parse({**JWT_FORM, "scope": " ".join(f"s{n}" for n in range(32))}).scopes
    assert parse({**JWT_FORM, "scope": " ".join(["s"] * 40)}).scopes == ("s",)
    for scope, description in [
        (" ".join(f"s{n}" for n in range(33)), "scope names more than 32 scopes"),
        ('a"b', "scope must be space-delimited scope tokens (RFC 6749 §3.3)"),
        ("a  b", "scope must be space-delimited scope tokens (RFC 6749 §3.3)"),
    ]:
        with pytest.raises(InvalidScope) as refused:
            parse({**JWT_FORM, "scope": scope})
        assert (refused.value.status, refused.value.error) == (400, "invalid_scope")
        assert (refused.value.reason, refused.value.description) == ("scope", description)
