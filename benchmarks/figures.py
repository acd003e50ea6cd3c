"""The figures `python -m benchmarks` reports: a table on stdout, JSON on disk.

A target is a ratio or a count measured in the same run (so it holds on a noisy machine),
or an absolute number only where an issue gives one; every other figure has
`target: null, met: null`.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    name: str
    value: float | None
    unit: str
    target: str | None = None  # "<= 1.15", "== 1", "within 0.25 of 2.31"
    met: bool | None = None


# Every figure is printed and stored with this many decimals, and judged as printed: a
# value that reads 1.15 against "<= 1.15" is met.
DECIMALS = 3


def at_most(name: str, value: float, unit: str, bound: float) -> Figure:
    shown = round(value, DECIMALS)
    return Figure(name, shown, unit, f"<= {bound:g}", shown <= bound)


def exactly(name: str, value: float, unit: str, expected: float) -> Figure:
    shown = round(value, DECIMALS)
    return Figure(name, shown, unit, f"== {expected:g}", shown == expected)


def within(name: str, value: float, unit: str, reference: float, tolerance: float) -> Figure:
    shown, reference = round(value, DECIMALS), round(reference, DECIMALS)
    target = f"within {tolerance:g} of {reference:.{DECIMALS}f}"
    return Figure(name, shown, unit, target, round(abs(shown - reference), DECIMALS) <= tolerance)


def reported(name: str, value: float | None, unit: str) -> Figure:
    return Figure(name, None if value is None else round(value, DECIMALS), unit)


def interval(
    name: str,
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., float],
    unit: str,
    *,
    resamples: int = 2000,
) -> list[Figure]:
    """The 95 % bootstrap interval of `statistic` over `samples` (each set resampled with
    replacement, percentile method), as two reported rows: whether a figure next to its
    target says more than the run's noise."""
    rng = random.Random(0)  # the same interval for the same samples
    estimates = sorted(
        statistic(*(rng.choices(group, k=len(group)) for group in samples))
        for _ in range(resamples)
    )
    low, high = estimates[int(0.025 * resamples)], estimates[int(0.975 * resamples) - 1]
    return [
        reported(f"{name}, 95% interval low", low, unit),
        reported(f"{name}, 95% interval high", high, unit),
    ]


def p50(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("inf")


def table(figures: Sequence[Figure]) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "NO"
        return f"{value:g}" if isinstance(value, float) else str(value)

    rows = [("figure", "value", "unit", "target", "met")]
    rows += [(f.name, cell(f.value), f.unit, cell(f.target), cell(f.met)) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    align: list[Callable[[str, int], str]] = [str.ljust, str.rjust, str.ljust, str.ljust, str.ljust]
    return "\n".join(
        "  ".join(align[i](row[i], widths[i]) for i in range(5)).rstrip() for row in rows
    )


def write_json(figures: Sequence[Figure], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"figures": [asdict(f) for f in figures]}
    path.write_text(json.dumps(document, indent=2) + "\n")
