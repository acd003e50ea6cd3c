"""The one door: `OriginGate` admits only requests carrying CloudFront's origin secret."""

from __future__ import annotations

import pytest

from tokex.edge import (
    NEXT_ORIGIN_SECRET_ENV,
    ORIGIN_HEADER,
    ORIGIN_SECRET_ENV,
    NotThroughIssuer,
    OriginGate,
)
from tokex.errors import ConfigurationError

SECRET = "A1b2C3d4" * 6
NEXT = "Z9y8X7w6" * 6


def test_the_secret_admits_and_nothing_else_does() -> None:
    gate = OriginGate.from_env({ORIGIN_SECRET_ENV: SECRET})
    gate.check({ORIGIN_HEADER: SECRET})
    for headers in (
        {},
        {ORIGIN_HEADER: ""},
        {ORIGIN_HEADER: SECRET[:-1]},
        {ORIGIN_HEADER: SECRET + "x"},
        {ORIGIN_HEADER: f"{SECRET},{SECRET}"},  # a repeated header, as API Gateway joins it
        {ORIGIN_HEADER: SECRET.lower()},
        {"x-tokex-origin": SECRET},
        {ORIGIN_HEADER: "\ud800"},  # a lone surrogate: no UTF-8 text, refused all the same
        {ORIGIN_HEADER: SECRET[:-1] + "\udcff"},
        {ORIGIN_HEADER: None},  # not API Gateway's event: refused, never a crash
        {ORIGIN_HEADER: [SECRET]},
    ):
        with pytest.raises(NotThroughIssuer) as refused:
            gate.check(headers)
        assert refused.value.status == 403
        assert refused.value.error == "invalid_request"
        assert SECRET not in refused.value.description
        assert "issuer URL" in refused.value.description


def test_the_audit_tells_a_missing_header_from_another_secret() -> None:
    """The caller hears the same either way; the operator's reason says whether the
    header was missing (a caller going around CloudFront) or held another value
    (CloudFront and the functions disagreeing on the secret)."""
    gate = OriginGate.from_env({ORIGIN_SECRET_ENV: SECRET})
    reasons = {}
    for name, headers in {
        "missing": {},
        "empty": {ORIGIN_HEADER: ""},
        "not text": {ORIGIN_HEADER: None},
        "another": {ORIGIN_HEADER: NEXT},
    }.items():
        with pytest.raises(NotThroughIssuer) as refused:
            gate.check(headers)
        reasons[name] = refused.value.reason
    assert reasons == {
        "missing": "not_through_cloudfront",
        "empty": "not_through_cloudfront",
        "not text": "not_through_cloudfront",
        "another": "origin_secret_mismatch",
    }


def test_inside_lambda_the_secret_is_required() -> None:
    with pytest.raises(ConfigurationError, match=ORIGIN_SECRET_ENV):
        OriginGate.from_env({"AWS_LAMBDA_FUNCTION_NAME": "tokex-exchange"})
    with pytest.raises(ConfigurationError, match=ORIGIN_SECRET_ENV):
        OriginGate.from_env({"AWS_LAMBDA_FUNCTION_NAME": "x", ORIGIN_SECRET_ENV: ""})


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 32"):
        OriginGate.from_env({ORIGIN_SECRET_ENV: "short"})


def test_local_mode_has_no_cloudfront_and_an_open_gate() -> None:
    gate = OriginGate.from_env({})
    # Open: any request passes, with no header, a wrong secret or a strange value.
    for headers in ({}, {ORIGIN_HEADER: SECRET}, {ORIGIN_HEADER: "wrong"}, {ORIGIN_HEADER: ""}):
        gate.check(headers)


def test_the_next_generations_secret_admits_too_so_a_rotation_refuses_no_one() -> None:
    """CloudFront switches to the secret the functions already admit as the next one; the
    functions then get a new next one, and the old secret is refused from then on."""
    before = OriginGate.from_env({ORIGIN_SECRET_ENV: SECRET, NEXT_ORIGIN_SECRET_ENV: NEXT})
    before.check({ORIGIN_HEADER: SECRET})  # edges not yet switched
    before.check({ORIGIN_HEADER: NEXT})  # edges already switched
    after = OriginGate.from_env({ORIGIN_SECRET_ENV: NEXT, NEXT_ORIGIN_SECRET_ENV: "N" * 48})
    after.check({ORIGIN_HEADER: NEXT})
    for presented in (SECRET, f"{SECRET},{NEXT}", NEXT[:-1], ""):
        with pytest.raises(NotThroughIssuer):
            after.check({ORIGIN_HEADER: presented})


def test_the_next_secret_alone_opens_nothing() -> None:
    with pytest.raises(ConfigurationError, match=f"{NEXT_ORIGIN_SECRET_ENV} needs"):
        OriginGate.from_env({NEXT_ORIGIN_SECRET_ENV: NEXT})
    with pytest.raises(ConfigurationError, match=ORIGIN_SECRET_ENV):
        OriginGate.from_env({"AWS_LAMBDA_FUNCTION_NAME": "x", NEXT_ORIGIN_SECRET_ENV: NEXT})
    with pytest.raises(ConfigurationError, match=f"{NEXT_ORIGIN_SECRET_ENV} must be at least"):
        OriginGate.from_env({ORIGIN_SECRET_ENV: SECRET, NEXT_ORIGIN_SECRET_ENV: "short"})
