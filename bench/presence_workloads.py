"""Presence workloads: track/update/untrack throughput, list latency, kill-to-leave latency."""

from __future__ import annotations

import multiprocessing
import subprocess
import time
from typing import Any

import baselines
from common import META, Row, Sizes, median_spread, pct, progress, track_all, versus_pidfd
from common import reap as _stop
from common import sleepers as _sleepers

import whosthere

_CTX = multiprocessing.get_context("spawn")
_PER_CALL_TOPICS = 10  # topics per owner updated / untracked one call each


def _client(address: str, pids: list[int], topics: int, conn: Any) -> None:
    """A client process: runs the phases the bench asks for, answers with its count.

    Tracks go with `track_many`, one call per owner (its 100 topics), as a worker tracking
    itself on its topics would; updates and untracks are one call each, on the first
    `_PER_CALL_TOPICS` topics of each owner (the rate, not the total, is the figure).
    """
    presence = whosthere.Presence.connect(address, timeout=60)
    conn.send("ready")
    while True:
        phase, prefix = conn.recv()
        if phase == "exit":
            break
        n = 0
        for pid in pids:
            key = f"user-{pid}"
            if phase == "track":
                n += len(
                    presence.track_many([(pid, f"{prefix}:{t}", key, META) for t in range(topics)])
                )
                continue
            for t in range(min(topics, _PER_CALL_TOPICS)):
                topic = f"{prefix}:{t}"
                if phase == "update":
                    presence.update(pid, topic, key, {**META, "status": "away"})
                else:
                    presence.untrack(pid, topic, key)
                n += 1
        conn.send(n)
    presence.close()


def _run_phase(conns: list[Any], phase: str, prefix: str) -> float:
    """Ops per second of one phase across all client processes."""
    started = time.perf_counter()
    for c in conns:
        c.send((phase, prefix))
    total = sum(c.recv() for c in conns)
    return total / (time.perf_counter() - started)


def bench_track(sizes: Sizes) -> list[Row]:
    owners = _sleepers(sizes.owners)
    total = sizes.owners * sizes.topics
    rows: list[Row] = []
    try:
        for clients in (1, 2, 4):
            progress(f"raw round trips from {clients} client process(es)")
            raw = baselines.raw_call_rate(clients, 5_000 // clients)
            rows.append(Row("track", f"raw calls/s, {clients} client(s)", raw, "call/s"))
            progress(f"raw batched round trips from {clients} client process(es)")
            batched = baselines.raw_call_rate(clients, 1_000 // clients, sizes.topics)
            rows.append(
                Row(
                    "track",
                    f"raw commands/s, {sizes.topics}/frame, {clients} client(s)",
                    batched,
                    "cmd/s",
                )
            )
            for pool in (1, 2):
                with whosthere.Node(name="bench", pool_size=pool) as node:
                    pids = [p.pid for p in owners]
                    conns, procs = [], []
                    for c in range(clients):
                        mine, theirs = _CTX.Pipe()
                        proc = _CTX.Process(
                            target=_client,
                            args=(node.address, pids[c::clients], sizes.topics, theirs),
                        )
                        proc.start()
                        conns.append(mine)
                        procs.append(proc)
                    for c in conns:
                        c.recv()
                    phases = ("track", "update", "untrack")
                    rates: dict[str, list[float]] = {phase: [] for phase in phases}
                    for rep in range(sizes.reps):
                        for phase in phases:
                            progress(
                                f"{phase} {total:,} presences, pool_size {pool}, "
                                f"{clients} client(s), rep {rep + 1}"
                            )
                            rates[phase].append(_run_phase(conns, phase, f"r{rep}"))
                    for c in conns:
                        c.send(("exit", ""))
                    for p in procs:
                        p.join(30)
                for phase, values in rates.items():
                    value, spread = median_spread(values)
                    how = f"track_many x{sizes.topics}" if phase == "track" else "1 per call"
                    base, name = (
                        (batched, "raw batched") if phase == "track" else (raw, "raw calls")
                    )
                    rows.append(
                        Row(
                            "track",
                            f"{phase}s/s ({how}) pool {pool}, {clients} cl.",
                            value,
                            "op/s",
                            spread,
                            name,
                            value / base,
                        )
                    )
    finally:
        _stop(owners)
    return rows


def bench_list(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    owner = _sleepers(1)
    try:
        with whosthere.Node(name="bench") as node:
            presence = node.presence
            for size in sizes.list_sizes:
                topic = f"list:{size}"
                progress(f"tracking {size:,} presences in one topic")
                for i in range(size):
                    presence.track(owner[0].pid, topic, f"user-{i}", META)
                reps = max(30, min(500, 200_000 // size))
                samples = []
                for i in range(reps + 5):
                    if i % 20 == 0:
                        progress(f"list of {size:,}: {i}/{reps}")
                    t = time.perf_counter()
                    listed = presence.list(topic)
                    if i >= 5:
                        samples.append(time.perf_counter() - t)
                assert len(listed) == size
                progress(f"raw round trip carrying {size:,} entries")
                raw = baselines.raw_list_round_trips(size, META, reps, as_dicts=True)
                raw_bytes = baselines.raw_list_round_trips(size, META, reps, as_dicts=False)
                b50 = pct(raw, 0.5) * 1e3
                p50, p99 = pct(samples, 0.5) * 1e3, pct(samples, 0.99) * 1e3
                rows.append(
                    Row(
                        "list",
                        f"list p50, {size:,} in topic",
                        p50,
                        "ms",
                        f"p99 {p99:.3f}",
                        "raw p50",
                        p50 / b50,
                    )
                )
                rows.append(Row("list", f"  raw reply, same dicts, {size:,} p50", b50, "ms"))
                rows.append(
                    Row(
                        "list",
                        f"  raw reply, metas as bytes, {size:,} p50",
                        pct(raw_bytes, 0.5) * 1e3,
                        "ms",
                    )
                )
    finally:
        _stop(owner)
    return rows


def bench_kill_to_leave(sizes: Sizes) -> list[Row]:
    """Paired: each whosthere trial is followed by a floor trial (a pidfd in an epoll of
    this process, the node idle), so both sample the same moments of a noisy machine."""
    per_owner = 100
    owners = _sleepers(max(1, sizes.others // per_owner))
    kills = max(sizes.kills, 200)
    try:
        with whosthere.Node(name="bench") as node:
            others = (
                (o.pid, f"others:{t}", f"user-{o.pid}", META)
                for o in owners
                for t in range(per_owner)
            )
            track_all(node.presence, others, "other presences")
            samples, base = paired_kills(node.presence, kills)
    finally:
        _stop(owners)
    n = f"{kills:,} kills paired, {sizes.others:,} others"
    return versus_pidfd("leave", f"kill->leave diff ({n})", samples, base)


def paired_kills(presence: whosthere.Presence, kills: int) -> tuple[list[float], list[float]]:
    """(kill -> leave at a subscriber, kill -> pidfd readable) in seconds, trial by trial:
    each whosthere trial followed by a floor trial, the node idle meanwhile."""
    leaves: list[float] = []
    floor: list[float] = []
    for k in range(kills):
        leaves += kill_to_leave_samples(presence, 1, "victims", quiet=True)
        floor += baselines.pidfd_kill_to_notice([subprocess.Popen(["sleep", "3600"])])
        if k % 50 == 0:
            progress(f"kill -> leave diff, paired with the pidfd floor: {k}/{kills}")
    return leaves, floor


def kill_to_leave_samples(
    presence: whosthere.Presence, kills: int, topic: str, *, quiet: bool = False
) -> list[float]:
    """Seconds from SIGKILL of a freshly tracked owner to its leave diff at a subscriber,
    one owner at a time."""
    samples: list[float] = []
    with presence.subscribe(topic) as sub:
        for k in range(kills):
            if k % 50 == 0 and not quiet:
                progress(f"kill -> leave diff: {k}/{kills}")
            victim = subprocess.Popen(["sleep", "3600"])
            try:
                presence.track(victim.pid, topic, "v", META)
                joined = sub.get(timeout=10)
                assert joined is not None and "v" in joined.payload["joins"]
                t = time.perf_counter()
                victim.kill()
                left = sub.get(timeout=10)
                samples.append(time.perf_counter() - t)
                assert left is not None and "v" in left.payload["leaves"], left
            finally:
                victim.kill()
                victim.wait()
    return samples
