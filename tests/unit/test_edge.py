"""The one door: `OriginGate` admits only requests carrying CloudFront's origin secret."""

from __future__ import annotations

import pytest

from tokex.edge import ORIGIN_HEADER, ORIGIN_SECRET_ENV, NotThroughIssuer, OriginGate
from tokex.errors import ConfigurationError

SECRET = "A1b2C3d4" * 6


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
    assert gate.is_open
    gate.check({})
