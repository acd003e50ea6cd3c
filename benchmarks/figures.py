"""The figures `python -m benchmarks` reports: a table on stdout, JSON on disk.

A target is a ratio or a count measured in the same run (so it holds on a noisy machine),
or an absolute number only where an issue gives one; every other figure has
`target: null, met: null`.
"""

from __future__ import annotations

import json
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


def at_most(name: str, value: float, unit: str, bound: float) -> Figure:
    return Figure(name, round(value, 3), unit, f"<= {bound:g}", value <= bound)


def exactly(name: str, value: float, unit: str, expected: float) -> Figure:
    return Figure(name, round(value, 3), unit, f"== {expected:g}", value == expected)


def within(name: str, value: float, unit: str, reference: float, tolerance: float) -> Figure:
    target = f"within {tolerance:g} of {reference:.2f}"
    return Figure(name, round(value, 3), unit, target, abs(value - reference) <= tolerance)


def reported(name: str, value: float | None, unit: str) -> Figure:
    return Figure(name, None if value is None else round(value, 3), unit)


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
