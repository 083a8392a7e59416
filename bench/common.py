"""What every workload shares: result rows, sizes, percentiles, the progress line, owners."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

META = {  # ~100 bytes packed
    "status": "online",
    "device": "desktop",
    "joined_at": 1_764_288_000.123,
    "name": "user-0000",
    "note": "x" * 32,
}


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
    crash: tuple[tuple[int, int], ...]  # mass-crash cases: (owners, presences per owner)
    memory: tuple[int, ...]  # presences tracked for the memory-per-presence figure
    trials: int  # sequential tracks timed for call latency and diff delivery
    durable_track: int = 50_000  # presences tracked with and without the shard journal
    recovery: tuple[int, ...] = (100_000,)  # presences in a shard SIGKILLed and timed back
    chaos_seconds: float = 20.0  # length of the chaos soak
    # cluster growth: (nodes, presences in all) bursts at 0.2 s / 2 s periods
    cluster_scale: tuple[tuple[int, int], ...] = ((2, 10_000), (4, 10_000))


QUICK = Sizes(
    calls=2_000,
    casts=10_000,
    fanout_msgs=2_000,
    links=500,
    kills=50,
    reps=2,
    owners=50,
    topics=10,
    list_sizes=(10, 1_000),
    others=1_000,
    crash=((50, 10), (500, 1)),
    memory=(10_000,),
    trials=100,
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
    crash=((1_000, 10), (10_000, 1)),
    memory=(100_000, 1_000_000),
    trials=2_000,
    durable_track=200_000,
    recovery=(100_000, 1_000_000),
    chaos_seconds=600.0,
    cluster_scale=tuple((n, total) for total in (10_000, 100_000) for n in (2, 4, 8)),
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_spread(values: list[float], digits: int = 0) -> tuple[float, str]:
    return statistics.median(values), f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def progress(text: str) -> None:
    print(f"\r\033[K  ... {text}", end="", file=sys.stderr, flush=True)


def versus_pidfd(
    workload: str, label: str, samples: list[float], base: list[float], extra: str = ""
) -> list[Row]:
    """Rows for a kill -> notice latency beside the raw pidfd baseline (ms)."""
    b50, b99 = pct(base, 0.5) * 1e3, pct(base, 0.99) * 1e3
    p50, p99 = pct(samples, 0.5) * 1e3, pct(samples, 0.99) * 1e3
    return [
        Row(workload, "raw pidfd kill->notice p50", b50, "ms", f"p99 {b99:.3f}"),
        Row(workload, f"{label} p50", p50, "ms", f"p99 {p99:.3f}", "pidfd p50", p50 / b50),
        Row(workload, f"{label} p99", p99, "ms", extra, "pidfd p99", p99 / b99),
    ]


# -- presence owners -------------------------------------------------------------------------


def sleepers(count: int) -> list[subprocess.Popen[bytes]]:
    """`count` fresh `sleep` processes: cheap owners, exec'd (no Python start-up)."""
    procs = []
    for i in range(count):
        procs.append(subprocess.Popen(["sleep", "3600"]))
        if i % 500 == 0:
            progress(f"starting owner processes {i:,}/{count:,}")
    return procs


def reap(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill (if still alive) and wait for every process: no zombie, no orphan."""
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def track_all(
    presence: Any, entries: Iterable[tuple[int, str, str, dict]], what: str, chunk: int = 10_000
) -> None:
    """Track `(pid, topic, key, meta)` entries, in `track_many` chunks when the client has it
    (a `track` each otherwise), with a progress line."""
    many = getattr(presence, "track_many", None)
    batch: list[tuple[int, str, str, dict]] = []
    done = 0
    for entry in entries:
        if many is None:
            presence.track(*entry)
            done += 1
            if done % 1_000 == 0:
                progress(f"{what}: {done:,} tracked")
            continue
        batch.append(entry)
        if len(batch) == chunk:
            many(batch)
            done += len(batch)
            batch = []
            progress(f"{what}: {done:,} tracked")
    if batch:
        many(batch)
