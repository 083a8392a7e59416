"""Cluster workloads: replication delay between two nodes, delta merge cost, node-death
leaves, and how a cluster grows (bursts on 2 to 8 nodes).

Two nodes on loopback with short periods (broadcast 50 ms, down 0.5 s), so the figures show
the machinery, not the defaults; each delay is also given as a ratio to the period it waits
on. The merge cost is measured on the pure state, beside the same merge into a small state:
a delta merge must cost what the delta carries, not the size of the state.

Growth (`cluster_burst.Cluster`, 0.2 s / 2 s periods, one shard per node): every node tracks
its share at once; convergence in broadcast periods, with the "down" events and spurious
leaves seen (both must be 0); idle CPU per node; the shard's RSS per presence it holds,
beside a single node holding the same number (all local); one node's death until its
presences left every other node, beside down_period.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import statistics
import time
from collections.abc import Callable

import cluster_burst
import resp
from common import META, Row, Sizes, median_spread, progress, reap, sleepers

import whosthere
from whosthere.tracker.state import State

PERIODS = {
    "broadcast_period": 0.05,
    "max_silent_periods": 2,
    "down_period": 0.5,
    "permdown_period": 5.0,
}
LISTEN = "tcp://127.0.0.1:0"


def _pair() -> tuple[whosthere.Node, whosthere.Node]:
    a = whosthere.Node(name="bench-a", listen=LISTEN, **PERIODS).start()
    b = whosthere.Node(name="bench-b", listen=LISTEN, peers=[a.cluster_address], **PERIODS)
    b.start()
    deadline = time.monotonic() + 10
    while not b.status().get("peers") or not a.status().get("peers"):
        if time.monotonic() > deadline:
            raise RuntimeError("the bench nodes did not see each other")
        time.sleep(0.01)
    return a, b


def _repeat(count: int, reps: int, what: str, measure: Callable[..., float]) -> list[float]:
    """`measure(a, b, entries)` on a fresh pair of nodes, `reps` times."""
    owners = sleepers(max(1, count // 100))
    samples = []
    try:
        for rep in range(reps):
            a, b = _pair()
            try:
                progress(f"{what}, rep {rep + 1}")
                topics = [f"c:{t}" for t in range(100)]
                entries = [(o.pid, t, f"u{o.pid}", META) for o in owners for t in topics]
                samples.append(measure(a, b, entries[:count]))
            finally:
                b.stop()
                a.stop()
    finally:
        reap(owners)
    return samples


def _replicated(a: whosthere.Node, b: whosthere.Node, entries: list) -> float:
    """Seconds from track_many on A to B holding every presence."""
    t0 = time.perf_counter()
    a.presence.track_many(entries)
    while b.status()["presences"] < len(entries):
        time.sleep(0.002)
    return time.perf_counter() - t0


def _node_death(a: whosthere.Node, b: whosthere.Node, entries: list) -> float:
    """Seconds from SIGKILL of A's whole process tree to B's subscribers having every leave."""
    subs = [b.presence.subscribe(t) for t in sorted({e[1] for e in entries})]
    try:
        _replicated(a, b, entries)
        for s in subs:  # drain the joins
            while s.get(timeout=0.05) is not None:
                pass
        t0 = time.perf_counter()
        os.killpg(a.pid, signal.SIGKILL)
        left = 0
        while left < len(entries):
            for s in subs:
                msg = s.get(timeout=0.001)
                if msg is not None:
                    left += sum(len(e["metas"]) for e in msg.payload["leaves"].values())
        return time.perf_counter() - t0
    finally:
        for s in subs:
            s.close()


def _merge_cost(held: int, delta_size: int, reps: int) -> float:
    """Median seconds to merge a delta of `delta_size` joins into a replica holding `held`."""
    a, b = State(("a", 1)), State(("b", 1))
    a.replica_up(b.replica)
    b.replica_up(a.replica)
    for i in range(held):
        b.join(i % 5000 + 1, f"t{i % 1000}", f"k{i}", b"\x80")
    a.merge(b.take_delta())
    times = []
    for r in range(reps):
        for i in range(delta_size):
            b.join(r + 100_000, f"t{i}", f"new{i}", b"\x80")
        delta = b.take_delta()
        t0 = time.perf_counter()
        a.merge(delta)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cluster(sizes: Sizes) -> list[Row]:
    big = 10_000 if sizes.owners >= 1_000 else 1_000
    rows: list[Row] = []
    period = PERIODS["broadcast_period"] * 1e3
    delays = _repeat(big, sizes.reps, f"{big:,} tracked on node A, listed on B", _replicated)
    value, spread = median_spread([s * 1e3 for s in delays], 1)
    rows.append(
        Row(
            "cluster",
            f"{big:,} tracked on A -> listed on B",
            value,
            "ms",
            spread,
            "broadcast_period",
            value / period,
        )
    )
    down = PERIODS["down_period"] * 1e3
    deaths = _repeat(big, sizes.reps, f"node A killed with {big:,} presences", _node_death)
    value, spread = median_spread([s * 1e3 for s in deaths], 1)
    rows.append(
        Row(
            "cluster",
            f"A killed ({big:,}) -> all leaves on B",
            value,
            "ms",
            spread,
            "down_period",
            value / down,
        )
    )
    progress("delta merge cost")
    held = 200_000 if sizes.owners >= 1_000 else 20_000
    small = _merge_cost(1_000, 100, 20) * 1e6
    large = _merge_cost(held, 100, 20) * 1e6
    rows.append(Row("cluster", "merge 100-join delta into 1,000", small, "us"))
    rows.append(
        Row(
            "cluster",
            f"merge 100-join delta into {held:,}",
            large,
            "us",
            "",
            "into 1,000",
            large / small,
        )
    )
    return rows + bench_cluster_growth(sizes) + bench_cluster_engines(sizes)


def bench_cluster_growth(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    period = cluster_burst.BURST_PERIODS["broadcast_period"]
    down = cluster_burst.BURST_PERIODS["down_period"]
    local: dict[int, float] = {}
    for count, total in sizes.cluster_scale:
        if total not in local:
            progress(f"one node holding {total:,} local presences")
            local[total] = _local_bytes(total)
        progress(f"{count} nodes, {total:,} presences in all")
        with cluster_burst.Cluster(count, prefix=f"grow{count}-") as cluster:
            empty = cluster.shard_rss()
            burst = cluster.burst(total // count)
            if burst.converged_s is None:
                raise RuntimeError(f"no convergence: {burst.summary()}")
            cpu = cluster.idle_cpu(5.0)
            held = [(b - a) / total for a, b in zip(empty, cluster.shard_rss(), strict=True)]
            death = cluster.kill(count - 1)
        name = f"{count} nodes, {total:,}"
        rows += [
            Row(
                "cluster",
                f"{name}: burst converged",
                burst.converged_s,
                "s",
                f"down {burst.events.get('down', 0)}, leaves {burst.leaves}",
                "broadcast_period",
                burst.converged_s / period,
            ),
            Row(
                "cluster",
                f"{name}: idle CPU per node",
                max(cpu),
                "%",
                f"{min(cpu):.1f}-{max(cpu):.1f}",
            ),
            Row(
                "cluster",
                f"{name}: shard RSS per presence",
                statistics.median(held),
                "B",
                f"{min(held):,.0f}-{max(held):,.0f}",
                "all local",
                statistics.median(held) / local[total],
            ),
            Row(
                "cluster",
                f"{name}: node death -> leaves",
                death * 1e3,
                "ms",
                "",
                "down_period",
                death / down,
            ),
        ]
    return rows


def bench_cluster_engines(sizes: Sizes) -> list[Row]:
    """The same burst (4 nodes, 25,000 each at once) over the mesh and over a private
    redis-server, one after the other: convergence, downs, and what went through Redis."""
    per_node = 25_000 if sizes.owners >= 1_000 else 2_500
    name = f"4 nodes x {per_node:,}"
    progress(f"{name}, over the mesh")
    with cluster_burst.Cluster(4, prefix="mesh") as cluster:
        mesh = cluster.burst(per_node)
    if mesh.converged_s is None:
        raise RuntimeError(f"no convergence over the mesh: {mesh.summary()}")
    rows = [
        Row(
            "cluster",
            f"{name} over the mesh: converged",
            mesh.converged_s,
            "s",
            f"down {mesh.events.get('down', 0)}, leaves {mesh.leaves}",
        )
    ]
    if resp.available() is None or importlib.util.find_spec("redis") is None:
        skipped = "over Redis: redis-server or whosthere[redis] not installed: skipped"
        return [*rows, Row("cluster", skipped, 0, "")]
    progress(f"{name}, over Redis")
    with (
        resp.redis_server() as path,
        cluster_burst.Cluster(4, prefix="redis", engine=f"unix://{path}") as cluster,
    ):
        before = cluster.engine_traffic()
        redis = cluster.burst(per_node)
        after = cluster.engine_traffic()
    if redis.converged_s is None:
        raise RuntimeError(f"no convergence over Redis: {redis.summary()}")
    publishes, size = after[0] - before[0], after[1] - before[1]
    return [
        *rows,
        Row(
            "cluster",
            f"{name} over Redis: converged",
            redis.converged_s,
            "s",
            f"down {redis.events.get('down', 0)}, leaves {redis.leaves}",
            "the mesh",
            redis.converged_s / mesh.converged_s,
        ),
        Row(
            "cluster",
            f"{name} over Redis: PUBLISH while converging",
            publishes / redis.converged_s,
            "/s",
            f"{publishes:,} of {size / 2**20:.1f} MB in all",
        ),
    ]


def _local_bytes(total: int) -> float:
    """A single node's shard RSS growth per presence, all of them local (one owner)."""
    owner = sleepers(1)
    try:
        with whosthere.Node(name="grow-local", pool_size=1) as node:
            before = cluster_burst.rss(cluster_burst.shards(node))
            topics = [f"room:{t}" for t in range(cluster_burst.TOPICS)]
            node.presence.track_many(
                [
                    (owner[0].pid, topics[k % len(topics)], f"u{k}", cluster_burst.META)
                    for k in range(total)
                ]
            )
            return (cluster_burst.rss(cluster_burst.shards(node)) - before) / total
    finally:
        reap(owner)
