"""What the shard journal costs, and what it buys.

Cost: track_many and single-call track throughput with `durable=True` beside the same run
with `durable=False` (alternating repetitions, so drift hits both alike). Gain: a shard
holding N presences is SIGKILLed; how long until it serves again with all of them.
"""

from __future__ import annotations

import os
import signal
import time

from common import META, Row, Sizes, median_spread, progress, reap, sleepers

import whosthere
from whosthere.client import lookup
from whosthere.transport.messages import GetStats, Ping
from whosthere.transport.sockets import Dealer

BATCH = 1_000
OWNERS = 100
TOPICS = 1_000


def bench_durability(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    procs = sleepers(OWNERS)
    try:
        pids = [p.pid for p in procs]
        many = {True: [], False: []}
        single = {True: [], False: []}
        for rep in range(sizes.reps):
            for durable in (False, True):
                with whosthere.Node(name="bench", durable=durable) as node:
                    what = f"durable={durable}, rep {rep + 1}"
                    progress(f"track_many {sizes.durable_track:,}, {what}")
                    many[durable].append(_track_many(node, pids, sizes.durable_track, rep))
                    progress(f"track 1 per call, {what}")
                    single[durable].append(_track_single(node, pids, sizes.calls, rep))
        for label, rates, how in (("track_many", many, f"x{BATCH}"), ("track", single, "1/call")):
            base, base_spread = median_spread(rates[False])
            value, spread = median_spread(rates[True])
            rows.append(
                Row("durable", f"{label}/s ({how}) durable=False", base, "op/s", base_spread)
            )
            rows.append(
                Row(
                    "durable",
                    f"{label}/s ({how}) durable=True",
                    value,
                    "op/s",
                    spread,
                    "durable=False",
                    value / base,
                )
            )
        for n in sizes.recovery:
            times = [_recovery(pids, n, rep) for rep in range(sizes.reps)]
            value, spread = median_spread([t * 1e3 for t in times], 1)
            rows.append(
                Row(
                    "durable",
                    f"shard with {n:,} presences: SIGKILL to serving",
                    value,
                    "ms",
                    spread,
                )
            )
    finally:
        reap(procs)
    return rows


def _entries(pids: list[int], n: int, prefix: str):
    return [(pids[i % len(pids)], f"{prefix}:{i % TOPICS}", f"u{i}", META) for i in range(n)]


def _track_many(node: whosthere.Node, pids: list[int], n: int, rep: int) -> float:
    entries = _entries(pids, n, f"many{rep}")
    presence = node.presence
    t = time.perf_counter()
    for i in range(0, n, BATCH):
        presence.track_many(entries[i : i + BATCH])
    return n / (time.perf_counter() - t)


def _track_single(node: whosthere.Node, pids: list[int], n: int, rep: int) -> float:
    entries = _entries(pids, n, f"one{rep}")
    track = node.presence.track
    t = time.perf_counter()
    for pid, topic, key, meta in entries:
        track(pid, topic, key, meta)
    return n / (time.perf_counter() - t)


def _recovery(pids: list[int], n: int, rep: int) -> float:
    """Seconds from the shard's SIGKILL until it answers with all `n` presences."""
    with whosthere.Node(name="bench", durable=True) as node:
        entries = _entries(pids, n, f"rec{rep}")
        for i in range(0, n, 10 * BATCH):
            progress(f"recovery: tracking {i:,}/{n:,}")
            node.presence.track_many(entries[i : i + 10 * BATCH])
        endpoint = lookup(node.address).endpoints["shard.0"]
        old = _stats(endpoint)["pid"]
        t = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            stats = _stats(endpoint)  # a fresh socket each time: no request left with the dead
            if stats.get("pid") not in (None, old) and stats.get("presences") == n:
                return time.perf_counter() - t
            if time.monotonic() > deadline:
                raise RuntimeError(f"recovery of {n:,} presences: not serving after 120 s")


def _stats(endpoint: str) -> dict:
    dealer = Dealer(endpoint, timeout=0.02, what="shard")
    try:
        return {**dealer.call(GetStats()), "pid": dealer.call(Ping())}
    except whosthere.NodeUnavailable:
        return {}
    finally:
        dealer.close()
