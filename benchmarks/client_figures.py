"""The workload client (`tokex.client.TokenClient`): what a cached `token()` costs and when,
in the token's lifetime, it goes back for a new one."""

from __future__ import annotations

import time

import jwt

from benchmarks.figures import Figure, at_most, reported
from benchmarks.proxied_local import BenchSystem
from tokex.client import TokenClient
from tokex.local.provision import DEMO_AUDIENCE

REFRESH_BY = 0.80  # of the token's lifetime (issue 11)
STEPS = 200  # the refresh point is found to 0.5 % of the lifetime


def client_figures(system: BenchSystem, cached_calls: int) -> list[Figure]:
    issuer = system.local.issuer
    client = TokenClient(issuer, issuer=issuer, session=system.workload)
    client.token(DEMO_AUDIENCE)
    samples = []
    for _ in range(cached_calls):
        started = time.perf_counter_ns()
        client.token(DEMO_AUDIENCE)
        samples.append(time.perf_counter_ns() - started)
    samples.sort()
    cached_us = samples[len(samples) // 2] / 1000

    # A second client on a clock the benchmark moves: its first token, then the clock
    # stepped through the token's lifetime until the client exchanges again.
    offset = [0.0]
    shifted = TokenClient(
        issuer, clock=lambda: time.monotonic() + offset[0], issuer=issuer, session=system.workload
    )
    first = shifted.token(DEMO_AUDIENCE)
    lifetime = _lifetime(first)
    refreshed_at = STEPS
    for step in range(1, STEPS + 1):
        offset[0] = step / STEPS * lifetime
        if shifted.token(DEMO_AUDIENCE) != first:
            refreshed_at = step
            break
    refresh_percent = 100.0 * refreshed_at / STEPS
    return [
        at_most("client: cached token() p50", cached_us, "µs", 50),
        reported("client: token lifetime", lifetime, "s"),
        at_most("client: refresh happens at", refresh_percent, "% of lifetime", REFRESH_BY * 100),
    ]


def _lifetime(token: str) -> float:
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"] - claims["iat"])
