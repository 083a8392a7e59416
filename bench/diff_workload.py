"""One caller, sequential tracks: how long each `track` call takes, and how long after it
returns its join diff reaches a subscriber of the topic (in the caller's process)."""

from __future__ import annotations

import time

import baselines
from common import META, Row, Sizes, pct, progress, reap, sleepers

import whosthere

WARMUP = 20  # untimed tracks first


def bench_diff(sizes: Sizes) -> list[Row]:
    owner = sleepers(1)
    calls, deliveries = [], []
    try:
        with whosthere.Node(name="bench") as node:
            presence = node.presence
            with presence.subscribe("diff") as sub:
                for i in range(sizes.trials + WARMUP):
                    if i % 100 == 0:
                        progress(f"sequential tracks -> join at a subscriber: {i}/{sizes.trials}")
                    key = f"user-{i}"
                    t = time.perf_counter()
                    presence.track(owner[0].pid, "diff", key, META)
                    returned = time.perf_counter()
                    msg = sub.get(timeout=10)
                    arrived = time.perf_counter()
                    assert msg is not None and key in msg.payload["joins"], msg
                    if i >= WARMUP:
                        calls.append(returned - t)
                        deliveries.append(arrived - returned)
    finally:
        reap(owner)
    progress("raw round trips")
    raw_calls = baselines.raw_round_trips(sizes.trials)
    progress("raw PUB -> SUB messages")
    raw_pubsub = baselines.raw_pub_sub_latency(sizes.trials)
    return [
        *_latency("track call, sequential", calls, "raw round trip", raw_calls),
        *_latency("track returned -> join at subscriber", deliveries, "raw PUB->SUB", raw_pubsub),
    ]


def _latency(label: str, samples: list[float], base_label: str, base: list[float]) -> list[Row]:
    """A baseline row, then p50 and p99 rows with their ratios to it (microseconds)."""
    b50, b99 = pct(base, 0.5) * 1e6, pct(base, 0.99) * 1e6
    p50, p99 = pct(samples, 0.5) * 1e6, pct(samples, 0.99) * 1e6
    return [
        Row("diff", f"{base_label} p50", b50, "us", f"p99 {b99:.1f}"),
        Row("diff", f"{label} p50", p50, "us", f"p99 {p99:.1f}", f"{base_label} p50", p50 / b50),
        Row("diff", f"{label} p99", p99, "us", "", f"{base_label} p99", p99 / b99),
    ]
