"""tokex/wiring.py: what it refuses to build, and what it builds on first use, once
however many requests ask at once (`built_once`: the signing key, the instance
certificates, the tag lookup, the issuers' keys)."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tokex.errors import ConfigurationError
from tokex.settings import Settings
from tokex.wiring import build_token_exchange, built_once

DEPLOYMENT = {
    "TOKEX_ISSUER": "https://auth.example.com",
    "TOKEX_SIGNING_KEY_ID": "alias/tokex-signing",
    "TOKEX_POLICY_TABLE": "policies",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.mark.parametrize(
    "changes",
    [{}, {"TOKEX_SINGLE_USE": "false"}, {"TOKEX_RATE_LIMIT_PER_MINUTE": "0"}],
    ids=["both on", "rate limit alone", "single use alone"],
)
def test_single_use_or_the_rate_limit_without_a_state_table_is_refused(changes) -> None:
    """Without the table neither can be kept: refused at cold start, never silently off."""
    with pytest.raises(ConfigurationError, match="TOKEX_STATE_TABLE is required"):
        build_token_exchange(Settings.from_env({**DEPLOYMENT, **changes}))


def test_both_off_needs_no_state_table(monkeypatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    off = {"TOKEX_SINGLE_USE": "false", "TOKEX_RATE_LIMIT_PER_MINUTE": "0"}
    assert build_token_exchange(Settings.from_env({**DEPLOYMENT, **off}))._admission is None
    with_table = {**DEPLOYMENT, "TOKEX_STATE_TABLE": "state"}
    assert build_token_exchange(Settings.from_env(with_table))._admission is not None


def test_the_calls_botocore_does_not_make_are_traced_as_the_function_says(monkeypatch) -> None:
    """STS's call and the issuers' documents go over urllib3: each runs in the `traced`
    the function gives (its X-Ray subsegments), which nothing else would see."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    issuers = (
        '[{"kind": "eks", "issuer": "https://oidc.eks.us-east-1.amazonaws.com/id/0123ABCD",'
        ' "account": "123456789012", "region": "us-east-1", "cluster": "prod"}]'
    )
    settings = Settings.from_env(
        {**DEPLOYMENT, "TOKEX_STATE_TABLE": "state", "TOKEX_TRUSTED_ISSUERS": issuers}
    )

    def traced(name: str, host: str) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    exchange = build_token_exchange(settings, traced=traced)
    assert exchange._sts._traced is traced
    assert exchange._issuer_keys is not None and exchange._issuer_keys()._traced is traced
    untraced = build_token_exchange(settings)
    assert untraced._sts._traced is not traced


def test_built_once_builds_on_first_use_once_for_concurrent_callers() -> None:
    builds: list[object] = []
    callers = threading.Barrier(8)

    def build() -> object:
        time.sleep(0.05)  # long enough for every caller to arrive while it runs
        builds.append(object())
        return builds[-1]

    get = built_once(build)
    assert builds == []  # nothing until asked

    def first_use(_: int) -> object:
        callers.wait()
        return get()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(first_use, range(8)))
    assert len(builds) == 1 and all(each is builds[0] for each in got)
    assert get() is builds[0]


def test_built_once_keeps_no_failure() -> None:
    attempts: list[int] = []

    def build() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise TimeoutError("KMS did not answer")
        return "built"

    get = built_once(build)
    with pytest.raises(TimeoutError):
        get()
    assert (get(), get(), len(attempts)) == ("built", "built", 2)
