"""An error response's `error_description` holds only what RFC 6749 §5.2 allows:
%x20-21 / %x23-5B / %x5D-7E. A strict OAuth client library refuses anything else. A
failure shared with another request is the same answer."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokex.errors import (
    DeadlineExceeded,
    InvalidGrant,
    InvalidRequest,
    Misconfigured,
    RateLimited,
    TemporarilyUnavailable,
    oauth_text,
)
from tokex.forms import parse_form

ALLOWED = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


@given(st.text())
def test_any_description_is_sent_in_the_allowed_characters(text: str) -> None:
    body = InvalidRequest(text).body()
    assert ALLOWED.fullmatch(body["error_description"])
    assert body["error"] == "invalid_request"


def test_what_tokex_writes_reads_the_same_or_spelled_out() -> None:
    assert oauth_text("scope tokens (RFC 6749 §3.3)") == "scope tokens (RFC 6749 section 3.3)"
    assert oauth_text('the token\'s alg "none" is not accepted') == (
        "the token's alg 'none' is not accepted"
    )
    assert InvalidGrant("X-Amz-Date is more than 15 minutes old").body() == {
        "error": "invalid_grant",
        "error_description": "X-Amz-Date is more than 15 minutes old",
    }


def test_an_echoed_parameter_name_is_made_safe() -> None:
    with pytest.raises(InvalidRequest) as refused:  # a repeated parameter, named é"\
        parse_form(b"%C3%A9%22%5C=1&%C3%A9%22%5C=2")
    description = refused.value.body()["error_description"]
    assert ALLOWED.fullmatch(description) and "?'/" in description


@pytest.mark.parametrize(
    "failure",
    [
        TemporarilyUnavailable("kms down", reason="kms Sign: KMSInternalException", retry_after=7),
        Misconfigured("no key", reason="kms Sign: AccessDeniedException"),
        DeadlineExceeded("dynamodb"),
        RateLimited("slow down", reason="rate_limited", retry_after=30),
    ],
    ids=lambda failure: type(failure).__name__,
)
def test_a_failure_again_is_the_same_answer_as_a_new_exception(
    failure: TemporarilyUnavailable,
) -> None:
    """What a request that shares another's failed load raises: the same class, answer,
    reason and Retry-After, and none of the first one's traceback."""
    try:
        raise failure
    except TemporarilyUnavailable as raised:
        again = raised.again()
    assert again is not failure and type(again) is type(failure)
    assert (again.status, again.body(), again.headers(), again.reason) == (
        failure.status,
        failure.body(),
        failure.headers(),
        failure.reason,
    )
    assert failure.__traceback__ is not None and again.__traceback__ is None
