"""The /introspect request parser: the contract's order, 415, 413, 401, and the form's
400s only when the token is read (after client authentication)."""

from __future__ import annotations

import pytest

from tokex.errors import InvalidRequest, PayloadTooLarge, TokexError, UnsupportedMediaType
from tokex.forms import MAX_BODY_BYTES
from tokex.introspection_clients import InvalidClient, basic_authorization
from tokex.introspection_request import parse_introspection_request

FORM = {"content-type": "application/x-www-form-urlencoded"}
CLIENT_ID = "tc_0123456789abcdef0123"
AUTHORIZATION = {"authorization": basic_authorization(CLIENT_ID, "s3cret")}


def refusal(body: bytes, headers: dict[str, str]) -> TokexError:
    with pytest.raises(TokexError) as caught:
        parse_introspection_request(body, headers)
    return caught.value


def test_media_type_comes_first() -> None:
    err = refusal(b"x" * (MAX_BODY_BYTES + 1), {"content-type": "application/json"})
    assert isinstance(err, UnsupportedMediaType)
    assert (err.status, err.error, err.reason) == (415, "invalid_request", "content_type")


def test_size_comes_before_credentials() -> None:
    err = refusal(b"x" * (MAX_BODY_BYTES + 1), FORM)
    assert isinstance(err, PayloadTooLarge)
    assert (err.status, err.reason) == (413, "body_size")


def test_credentials_come_before_the_form() -> None:
    err = refusal(b"\xff not a form", FORM)
    assert isinstance(err, InvalidClient)
    assert (err.status, err.error, err.reason) == (401, "invalid_client", "no_credentials")


def test_the_form_is_read_only_for_the_token() -> None:
    request = parse_introspection_request(b"\xff not a form", {**FORM, **AUTHORIZATION})
    assert (request.client_id, request.secret) == (CLIENT_ID, "s3cret")
    assert request.audit_client_id == CLIENT_ID
    with pytest.raises(InvalidRequest) as caught:
        request.token()
    assert (caught.value.status, caught.value.reason) == (400, "form")


def test_token_missing_and_present() -> None:
    missing = parse_introspection_request(
        b"token_type_hint=access_token", {**FORM, **AUTHORIZATION}
    )
    with pytest.raises(InvalidRequest) as caught:
        missing.token()
    assert (caught.value.status, caught.value.reason) == (400, "token_missing")
    present = parse_introspection_request(b"token=abc", {**FORM, **AUTHORIZATION})
    assert present.token() == "abc"


def test_a_client_id_not_of_ours_is_not_audited() -> None:
    headers = {**FORM, "authorization": basic_authorization("robert'); drop", "x")}
    assert parse_introspection_request(b"token=abc", headers).audit_client_id is None


@pytest.mark.parametrize(
    "body",
    [
        b"token=abc&client_secret=s3cret",  # the same secret, a second method all the same
        b"token=abc&client_id=tc_ffffffffffffffffffff&client_secret=zzz",
        b"token=abc&client_id=tc_ffffffffffffffffffff",
    ],
)
def test_credentials_in_the_body_beside_basic_are_refused(body: bytes) -> None:
    """One client authentication method per request (RFC 6749 section 2.3)."""
    request = parse_introspection_request(body, {**FORM, **AUTHORIZATION})
    with pytest.raises(InvalidRequest) as caught:
        request.token()
    assert (caught.value.status, caught.value.reason) == (400, "two_client_authentications")


def test_the_basic_clients_own_id_in_the_body_is_accepted() -> None:
    """RFC 6749 section 3.2.1 lets a client name itself with `client_id`."""
    body = f"token=abc&client_id={CLIENT_ID}".encode()
    assert parse_introspection_request(body, {**FORM, **AUTHORIZATION}).token() == "abc"


@pytest.mark.parametrize(
    "body", [b"token=abc&client_secret=", b"token=abc&client_id=", b"token=abc&token_type_hint="]
)
def test_an_empty_parameter_counts_as_omitted(body: bytes) -> None:
    """RFC 6749 section 3.1, as at /token: an empty client_secret or client_id is no
    second authentication method."""
    assert parse_introspection_request(body, {**FORM, **AUTHORIZATION}).token() == "abc"


def test_an_empty_token_is_still_read() -> None:
    """No such token is active (RFC 7662 section 2.2): the introspector answers inactive."""
    request = parse_introspection_request(b"token=", {**FORM, **AUTHORIZATION})
    assert request.token() == ""
