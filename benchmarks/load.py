"""Load on a `tokex local` of its own: concurrent clients, every answer checked.

    python -m benchmarks.load [--clients 8] [--seconds 30] [--json PATH]

From the repository root. Starts `tokex local` as a subprocess (free port, temporary state
directory), then runs N client threads for T seconds. Each client first sends one request
of every kind, then picks kinds at random by weight (benchmarks/load_requests.py): valid
exchanges as the demo role session and the demo IAM user (every token verified with pyjwt
against the published JWKS: signature, iss, aud, exp, sub, scope), replays, refusals after
STS (invalid_scope, invalid_target) and before it (audience binding), garbage
(`grant_type=nothing-valid&audience=x`, which must get 400 and never a token),
introspection of its own tokens (with and without the demo client) and the issuer
documents. Exchanges that reach STS are paced under each principal's per-minute budget.

Reports requests, wrong answers, 429s (apart), dropped connections, p50/p95/p99 latency
and the resident memory of the `tokex local` process tree before, at its peak during,
and after the load. Exit status 1 on any wrong answer or dropped connection.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jwt
from botocore.credentials import ReadOnlyCredentials

from benchmarks.load_report import SHOWN_WRONG_ANSWERS, ClientResult, print_report, summarise
from benchmarks.load_requests import (
    KINDS,
    BudgetPacer,
    ClientState,
    Dropped,
    LoadTarget,
    Principal,
    RateLimited,
    RequestKind,
    WrongAnswer,
    send,
)
from benchmarks.local_process import LocalProcess, start_tokex_local
from tokex.local.provision import (
    ACCOUNT_ID,
    DEMO_ROLE_ARN,
    DEMO_USER_NAME,
    Credentials,
    LocalDeployment,
)

# Paced this far under the budget, so that a request the server counts in the next
# minute's window (sent at the turn of the minute) cannot push one over.
BUDGET_SHARE = 0.9
# The first request of each budget kind waits this long at most for budget to refill.
BUDGET_WAIT_SECONDS = 60


def local_rate_limit_per_minute() -> int:
    """The per-principal budget `tokex local` gives its handlers (0 = none), read from
    the code that sets it (tokex/local/provision.py) rather than copied here."""
    nobody = Credentials("", "")
    deployment = LocalDeployment("http://127.0.0.1", nobody, nobody, nobody, signing_key_arn="")
    return int(deployment.handler_env("http://127.0.0.1").get("TOKEX_RATE_LIMIT_PER_MINUTE", 0))


def run_client(target: LoadTarget, until: float, seed: int) -> ClientResult:
    state = ClientState(target, random.Random(seed))
    result = ClientResult()

    def send_one(kind: RequestKind, principal: Principal) -> None:
        stats = result.kinds[kind.name]
        stats.sent += 1
        state.round_trip_ms = 0.0
        try:
            kind.send(state, principal)
            stats.ok += 1
        except RateLimited:
            stats.rate_limited += 1
        except WrongAnswer as wrong:
            stats.wrong += 1
            if stats.wrong <= SHOWN_WRONG_ANSWERS:
                result.wrong_answers.append(f"{kind.name}: {wrong}")
        except Dropped as dropped:
            stats.dropped += 1
            result.dropped[str(dropped)] += 1
        stats.latencies_ms.append(state.round_trip_ms)

    # One of each kind first, however short the run: every kind gets checked. In the
    # listed order, so that there is a token to replay and to introspect.
    for kind in KINDS:
        if kind.ready(state):
            send_one(kind, _wait_for_budget(state) if kind.spends_budget else state.any_principal())
    while time.monotonic() < until:
        send_one(*_pick(state, result))
    return result


def _wait_for_budget(state: ClientState) -> Principal:
    """A principal with budget left; after BUDGET_WAIT_SECONDS, any (and maybe a 429)."""
    give_up = time.monotonic() + BUDGET_WAIT_SECONDS
    while time.monotonic() < give_up:
        principal = state.principal_with_budget()
        if principal is not None:
            return principal
        time.sleep(0.05)
    return state.any_principal()


def _pick(state: ClientState, result: ClientResult) -> tuple[RequestKind, Principal]:
    ready = [kind for kind in KINDS if kind.ready(state)]
    kind = state.rng.choices(ready, weights=[k.weight for k in ready])[0]
    if not kind.spends_budget:
        return kind, state.any_principal()
    principal = state.principal_with_budget()
    if principal is not None:
        return kind, principal
    result.deferred += 1
    cheap = [kind for kind in ready if not kind.spends_budget]
    return state.rng.choices(cheap, weights=[k.weight for k in cheap])[0], state.any_principal()


def connect(local: LocalProcess, rate_limit: int) -> LoadTarget:
    """Who the clients are and what they verify against, from what `tokex local` wrote."""

    def principal(name: str, arn: str, env_file: str) -> Principal:
        env = local.env_file(env_file)
        credentials = ReadOnlyCredentials(
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN")
        )
        return Principal(name, arn, credentials)

    principals = [
        principal("role session", DEMO_ROLE_ARN, "workload.env"),
        principal("IAM user", f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER_NAME}", "user.env"),
    ]
    pacers = {}
    if rate_limit:
        per_minute = rate_limit * BUDGET_SHARE
        burst = max(1.0, rate_limit * (1 - BUDGET_SHARE) / 2)
        pacers = {p.name: BudgetPacer(per_minute - burst, burst) for p in principals}
    authorization = local.env_file("introspection-client.env")["TOKEX_INTROSPECTION_AUTHORIZATION"]
    target = LoadTarget(local.issuer, principals, pacers, {}, authorization)
    published = json.loads(send(target, "GET", "/.well-known/jwks.json").raw)
    keys = jwt.PyJWKSet.from_dict(published).keys
    target.keys.update({str(key.key_id): key for key in keys})
    return target


def sample_memory(local: LocalProcess, stop: threading.Event, peak: list[float]) -> None:
    while not stop.wait(1.0):
        rss = local.rss_mib()
        if rss is not None:
            peak[0] = max(peak[0], rss)


def run_load(clients: int, seconds: float) -> dict[str, Any]:
    rate_limit = local_rate_limit_per_minute()
    with tempfile.TemporaryDirectory(prefix="tokex-load-") as state_dir:
        local = start_tokex_local(Path(state_dir))
        try:
            target = connect(local, rate_limit)
            rss_before = local.rss_mib()
            peak = [rss_before or 0.0]
            stop_sampling = threading.Event()
            sampler = threading.Thread(target=sample_memory, args=(local, stop_sampling, peak))
            sampler.start()
            results: list[ClientResult] = []
            until = time.monotonic() + seconds
            started = time.perf_counter()

            def client(seed: int) -> None:
                results.append(run_client(target, until, seed))

            threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            stop_sampling.set()
            sampler.join()
            rss_after = local.rss_mib()
        finally:
            exit_code = local.stop()
    return summarise(
        results,
        clients=clients,
        seconds=elapsed,
        issuer=local.issuer,
        rate_limit=rate_limit,
        budget_share=BUDGET_SHARE,
        memory={"before": rss_before, "peak": peak[0], "after": rss_after},
        server={"exit_code": exit_code, "tracebacks": local.tracebacks},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=30, help="duration (default 30)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients and --seconds must be positive")
    report = run_load(args.clients, args.seconds)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["wrong_answers"] or report["dropped"] else 0


if __name__ == "__main__":
    sys.exit(main())
