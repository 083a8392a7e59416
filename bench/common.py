"""What every workload shares: result rows, sizes, percentiles, the progress line."""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass


@dataclass
class Row:
    """One printed figure."""

    workload: str
    figure: str
    value: float
    unit: str
    spread: str = ""  # "min-max" of repetitions, or p99 for latencies
    baseline: str = ""  # what it is compared with
    ratio: float | None = None  # value / baseline value (for latency: > 1 is slower)


@dataclass
class Sizes:
    calls: int  # sequential calls timed
    casts: int  # broadcasts per repetition
    fanout_msgs: int  # messages fanned out per repetition
    links: int  # linked processes
    kills: int  # kill trials
    reps: int  # repetitions of each throughput
    owners: int  # presence owners (sleep processes) for track throughput
    topics: int  # topics per owner
    list_sizes: tuple[int, ...]  # presences in the listed topic
    others: int  # presences tracked beside the kill-to-leave trials


QUICK = Sizes(
    calls=2_000,
    casts=20_000,
    fanout_msgs=5_000,
    links=500,
    kills=50,
    reps=2,
    owners=100,
    topics=20,
    list_sizes=(10, 1_000),
    others=1_000,
)
FULL = Sizes(
    calls=20_000,
    casts=200_000,
    fanout_msgs=50_000,
    links=10_000,
    kills=1_000,
    reps=3,
    owners=1_000,
    topics=100,
    list_sizes=(10, 1_000, 10_000),
    others=10_000,
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_spread(values: list[float]) -> tuple[float, str]:
    return statistics.median(values), f"{min(values):,.0f}-{max(values):,.0f}"


def progress(text: str) -> None:
    print(f"\r\033[K  ... {text}", end="", file=sys.stderr, flush=True)


def versus_pidfd(workload: str, label: str, samples: list[float], base: list[float],
                 extra: str = "") -> list[Row]:  # fmt: skip
    """Rows for a kill -> notice latency beside the raw pidfd baseline (ms)."""
    b50, b99 = pct(base, 0.5) * 1e3, pct(base, 0.99) * 1e3
    p50, p99 = pct(samples, 0.5) * 1e3, pct(samples, 0.99) * 1e3
    return [
        Row(workload, "raw pidfd kill->notice p50", b50, "ms", f"p99 {b99:.3f}"),
        Row(workload, f"{label} p50", p50, "ms", f"p99 {p99:.3f}", "pidfd p50", p50 / b50),
        Row(workload, f"{label} p99", p99, "ms", extra, "pidfd p99", p99 / b99),
    ]
