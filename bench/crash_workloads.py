"""Mass crash: every owner SIGKILLed at once; how long until every leave reached a subscriber.

The kernel's floor is the same kill loop over as many fresh processes, each watched by a pidfd
in one epoll, until all are readable: what any crash-driven presence must wait for first.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import baselines
from common import META, Row, Sizes, median_spread, progress, reap, sleepers, track_all

import whosthere
from whosthere.pubsub import Subscription

TOPICS = 10  # an owner with more presences has one in each of these topics


def bench_crash(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    with whosthere.Node(name="bench") as node:
        for owners, each in sizes.crash:
            rows += _case(node, owners, each, sizes.reps)
    return rows


def _case(node: whosthere.Node, owners: int, each: int, reps: int) -> list[Row]:
    label = f"{owners:,} owners x {each}"
    times, floors = [], []
    mechanism = ""
    for rep in range(reps):
        elapsed, mechanism = _crash_once(node, owners, each, f"crash:{owners}x{each}:{rep}")
        times.append(elapsed * 1e3)
        progress(f"pidfd baseline: {owners:,} fresh processes, rep {rep + 1}")
        floors.append(baselines.pidfd_mass_kill(sleepers(owners)) * 1e3)
    total = owners * each
    base, base_spread = median_spread(floors, 1)
    value, spread = median_spread(times, 1)
    return [
        Row("crash", f"raw pidfd: {owners:,} killed, all noticed", base, "ms", base_spread),
        Row(
            "crash",
            f"mass crash {label}: all leaves in",
            value,
            "ms",
            spread,
            "raw pidfd",
            value / base,
        ),
        Row(
            "crash",
            f"  leaves/s ({total:,} leaves)",
            total / value * 1e3,
            "leave/s",
            mechanism,
            "pidfd notices/s",
            base / value * total / owners,
        ),
    ]


def _crash_once(node: whosthere.Node, owners: int, each: int, prefix: str) -> tuple[float, str]:
    """Seconds from the first SIGKILL until the subscriber has every leave; how the node
    watched the owners (pidfd / sweep)."""
    presence = node.presence
    topics = [f"{prefix}:{t}" for t in range(min(TOPICS, owners * each))]
    total = owners * each
    procs = sleepers(owners)
    try:
        sub = presence.subscribe(topics[0])
        try:
            for topic in topics[1:]:
                sub.subscribe(topic)
            entries = (
                (p.pid, topics[(i + j) % len(topics)], f"user-{p.pid}", META)
                for i, p in enumerate(procs)
                for j in range(each)
            )
            track_all(presence, entries, f"{owners:,} owners x {each}")
            _count(sub, "joins", total, f"joins of {owners:,} owners x {each}")
            links = _linked(node, owners)
            t = time.perf_counter()
            for p in procs:
                os.kill(p.pid, signal.SIGKILL)
            _count(sub, "leaves", total, "")
            elapsed = time.perf_counter() - t
        finally:
            sub.close()
    finally:
        reap(procs)
    return elapsed, f"pidfd {links['pidfd']:,}, sweep {links['sweep']:,}"


def _linked(node: whosthere.Node, owners: int) -> dict[str, int]:
    """The node's links once it watches all `owners` (the shard links them asynchronously)."""
    deadline = time.monotonic() + 60
    while (links := node.status()["links"])["processes"] < owners:
        if time.monotonic() > deadline:
            raise RuntimeError(f"mass crash: {links['processes']:,} of {owners:,} linked")
        progress(f"owners linked: {links['processes']:,}/{owners:,}")
        time.sleep(0.05)
    return links


def _count(sub: Subscription, kind: str, total: int, what: str) -> None:
    """Read diffs until `total` keys have come in their `kind` ("joins" or "leaves")."""
    seen = 0
    while seen < total:
        msg: Any = sub.get(timeout=60)
        if msg is None:
            raise RuntimeError(f"mass crash: {seen:,} of {total:,} {kind} after 60 s")
        seen += len(msg.payload[kind])
        if what:
            progress(f"{what}: {seen:,}/{total:,}")
