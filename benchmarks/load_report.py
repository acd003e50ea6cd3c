"""The load command's report: per request kind and in total, as text and as JSON."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

from benchmarks.load_requests import KINDS

# Most wrong answers of one kind are alike; a few of each kind show every way it broke.
SHOWN_WRONG_ANSWERS = 3
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


@dataclass
class KindStats:
    sent: int = 0
    ok: int = 0
    wrong: int = 0
    rate_limited: int = 0
    dropped: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, other: KindStats) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.wrong += other.wrong
        self.rate_limited += other.rate_limited
        self.dropped += other.dropped
        self.latencies_ms += other.latencies_ms


@dataclass
class ClientResult:
    kinds: dict[str, KindStats] = field(default_factory=lambda: collections.defaultdict(KindStats))
    wrong_answers: list[str] = field(default_factory=list)
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    # Budget kinds drawn while no principal had budget left: sent as another kind.
    deferred: int = 0


def percentile(sorted_values: list[float], share: float) -> float | None:
    """Nearest-rank percentile, rounded to 0.1 ms (None for no values)."""
    if not sorted_values:
        return None
    return round(sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)], 1)


def summarise(results: list[ClientResult], **about: Any) -> dict[str, Any]:
    kinds: dict[str, KindStats] = {kind.name: KindStats() for kind in KINDS}
    dropped: collections.Counter[str] = collections.Counter()
    wrong_answers: list[str] = []
    for result in results:
        for name, stats in result.kinds.items():
            kinds[name].add(stats)
        dropped.update(result.dropped)
        wrong_answers += result.wrong_answers
    every = sorted(latency for stats in kinds.values() for latency in stats.latencies_ms)
    requests = sum(stats.sent for stats in kinds.values())
    rate_limited = sum(stats.rate_limited for stats in kinds.values())

    def latency(values: list[float]) -> dict[str, float | None]:
        ordered = sorted(values)
        shares = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99, "max_ms": 1.0}
        return {name: percentile(ordered, share) for name, share in shares.items()}

    return {
        **about,
        "requests": requests,
        "requests_per_second": round(requests / about["seconds"], 1),
        "wrong_answers": sum(stats.wrong for stats in kinds.values()),
        "rate_limited": rate_limited,
        "rate_limited_share": round(rate_limited / requests, 4) if requests else 0.0,
        "dropped": sum(dropped.values()),
        "dropped_by_error": dict(dropped),
        "deferred_for_budget": sum(result.deferred for result in results),
        "latency": latency(every),
        "kinds": {
            name: {
                "sent": stats.sent,
                "ok": stats.ok,
                "wrong": stats.wrong,
                "rate_limited": stats.rate_limited,
                "dropped": stats.dropped,
                **latency(stats.latencies_ms),
            }
            for name, stats in kinds.items()
        },
        "wrong_answer_examples": _first_per_kind(wrong_answers),
        "seconds": round(about["seconds"], 1),
    }


def _first_per_kind(examples: list[str]) -> list[str]:
    """At most SHOWN_WRONG_ANSWERS per request kind: one broken kind must not hide
    another."""
    shown: collections.Counter[str] = collections.Counter()
    kept = []
    for example in examples:
        kind = example.split(":", 1)[0]
        shown[kind] += 1
        if shown[kind] <= SHOWN_WRONG_ANSWERS:
            kept.append(example)
    return kept


def print_report(report: dict[str, Any]) -> None:
    memory, server, total = report["memory"], report["server"], report["latency"]
    budget = f"{report['rate_limit']}/min each" if report["rate_limit"] else "no limit"
    mib = {k: "n/a" if v is None else f"{v:.0f}" for k, v in memory.items()}
    lines = [
        f"tokex load: {report['clients']} clients for {report['seconds']} s against "
        f"tokex local at {report['issuer']}",
        f"  principals: demo role session and demo IAM user (budget {budget}, paced to "
        f"{report['budget_share']:.0%}); {report['deferred_for_budget']} budget requests deferred",
        f"requests        {report['requests']} ({report['requests_per_second']}/s)",
        f"tokens          {report['kinds']['exchange']['ok']} issued and verified",
        f"wrong answers   {report['wrong_answers']}",
        f"429s            {report['rate_limited']} ({report['rate_limited_share']:.2%})",
        f"dropped         {report['dropped']} {report['dropped_by_error'] or ''}".rstrip(),
        f"latency ms      p50 {total['p50_ms']}  p95 {total['p95_ms']}  p99 {total['p99_ms']}"
        f"  max {total['max_ms']}",
        f"server RSS MiB  before {mib['before']}  peak {mib['peak']}  after {mib['after']}"
        " (tokex local process tree)",
        f"server          exit code {server['exit_code']}, {server['tracebacks']} tracebacks"
        " on its console",
        "",
        f"{'kind':<22}{'sent':>7}{'ok':>7}{'wrong':>7}{'429':>6}{'dropped':>8}"
        f"{'p50':>8}{'p95':>8}{'p99':>8}",
    ]
    for name, kind in report["kinds"].items():
        lines.append(
            f"{name:<22}{kind['sent']:>7}{kind['ok']:>7}{kind['wrong']:>7}"
            f"{kind['rate_limited']:>6}{kind['dropped']:>8}"
            + "".join(f"{kind[p] if kind[p] is not None else '-':>8}" for p in PERCENTILES)
        )
    if report["wrong_answer_examples"]:
        lines += ["", f"wrong answers (at most {SHOWN_WRONG_ANSWERS} of each kind):"]
        lines += [f"  {example}" for example in report["wrong_answer_examples"]]
    if report["rate_limited_share"] >= 0.01:
        lines += ["", "note: 429s are 1 % of requests or more: the pacing missed the budget"]
    print("\n".join(lines), flush=True)
