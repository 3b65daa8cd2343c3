"""The benchmark's pure parts: statistics, the A/B alternation order, formatting, the tables.

No timing, no processes: everything here is tested by exact output (tests/unit/test_bench_smoke.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


def median(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("median of no samples")
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> tuple[float, float]:
    """(min, max) of the samples."""
    if not xs:
        raise ValueError("spread of no samples")
    return min(xs), max(xs)


def fmt_time(seconds: float) -> str:
    """Seconds as a person reads them: ms below one second (0.1 ms resolution under 10 ms)."""
    ms = seconds * 1000.0
    if abs(ms) < 10:
        return f"{ms:.1f} ms"
    if abs(ms) < 1000:
        return f"{ms:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_range(xs: Sequence[float]) -> str:
    lo, hi = spread(xs)
    return f"{fmt_time(lo)} – {fmt_time(hi)}"


def ratio(value: float, baseline: float) -> float:
    if baseline <= 0:
        raise ValueError(f"baseline must be positive, got {baseline}")
    return value / baseline


def fmt_ratio(value: float, baseline: float) -> str:
    """'1.23x' (value / baseline), '2.0x', '14x' for large ones."""
    r = ratio(value, baseline)
    if r >= 10:
        return f"{r:.0f}x"
    return f"{r:.2f}x"


def alternation(labels: Sequence[str], runs: int, warmup: int = 1) -> list[tuple[str, bool]]:
    """The order to run compared commands in: A B C, A B C, ... (warm-up rounds first).

    Each item is (label, is_warmup). Interleaving puts every command under the same drift of the
    machine (a background job, a thermal step, a cache warming up) instead of giving one of them
    a quiet minute and the other a busy one.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    order: list[tuple[str, bool]] = []
    for i in range(warmup + runs):
        order.extend((label, i < warmup) for label in labels)
    return order


def per_unit(big: Sequence[float], small: Sequence[float], extra_units: int) -> list[float]:
    """Paired differences (big[i] - small[i]) / extra_units: the cost of one more unit, per round.

    Used for "the same phase 21 times vs once": the connection and start-up cancel out round by
    round, and what is left is 20 phases' worth.
    """
    if len(big) != len(small):
        raise ValueError("paired samples must have the same length")
    if extra_units <= 0:
        raise ValueError("extra_units must be positive")
    return [(b - s) / extra_units for b, s in zip(big, small, strict=True)]


# --- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured thing: its samples (seconds) and, optionally, what it is compared with."""

    label: str
    samples: list[float]
    baseline: str | None = None  # label of another row of the same case
    note: str = ""


@dataclass
class Target:
    """A target from the issue and whether this run met it (None: not measured)."""

    text: str
    value: str
    met: bool | None


@dataclass
class CaseResult:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)


def _vs(case: CaseResult, row: Row) -> str:
    if row.baseline is None:
        return "baseline" if any(r.baseline == row.label for r in case.rows) else ""
    base = case.row(row.baseline)
    return fmt_ratio(median(row.samples), median(base.samples))


def results_table(cases: Sequence[CaseResult]) -> str:
    """One Markdown table: every row of every case with median, min–max and ratio."""
    lines = [
        "| case | what | n | median | min – max | vs baseline |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        if case.skipped:
            lines.append(f"| {case.name} | skipped: {case.skipped} | | | | |")
            continue
        for row in case.rows:
            label = row.label + (f" ({row.note})" if row.note else "")
            lines.append(
                f"| {case.name} | {label} | {len(row.samples)} | {fmt_time(median(row.samples))} "
                f"| {fmt_range(row.samples)} | {_vs(case, row)} |"
            )
    return "\n".join(lines)


def targets_table(cases: Sequence[CaseResult]) -> str:
    lines = ["| case | target | measured | met |", "|---|---|---|---|"]
    for case in cases:
        for t in case.targets:
            met = {True: "yes", False: "**NO**", None: "pending"}[t.met]
            lines.append(f"| {case.name} | {t.text} | {t.value} | {met} |")
    return "\n".join(lines)


def notes_text(cases: Sequence[CaseResult]) -> str:
    out = []
    for case in cases:
        for n in case.notes:
            out.append(f"- {case.name}: {n}")
    return "\n".join(out)
