"""Runtime workloads: actor calls, casts, PubSub fan-out, links."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import time
from typing import Any

import baselines
from common import Row, Sizes, median_spread, pct, progress, versus_pidfd

import whosthere
from whosthere.client import lookup
from whosthere.transport.messages import Ping
from whosthere.transport.sockets import Dealer


def with_node(workload: Any) -> Any:
    """Run `workload(node, sizes)` on a node of its own: `workload(sizes)`."""

    def run(sizes: Sizes) -> list[Row]:
        with whosthere.Node(name="bench") as node:
            return workload(node, sizes)

    run.__name__ = workload.__name__
    return run


@with_node
def bench_call(node: whosthere.Node, sizes: Sizes) -> list[Row]:
    progress("raw DEALER/ROUTER round trips")
    raw = baselines.raw_round_trips(sizes.calls)
    progress("actor call round trips")
    dealer = Dealer(lookup(node.address).endpoints["pubsub"])
    samples = []
    try:
        for _ in range(200):
            dealer.call(Ping())
        for _ in range(sizes.calls):
            t = time.perf_counter()
            dealer.call(Ping())
            samples.append(time.perf_counter() - t)
    finally:
        dealer.close()
    raw50, raw99 = pct(raw, 0.5) * 1e6, pct(raw, 0.99) * 1e6
    p50, p99 = pct(samples, 0.5) * 1e6, pct(samples, 0.99) * 1e6
    return [
        Row("call", "raw pyzmq+msgpack round trip p50", raw50, "us", f"p99 {raw99:.1f}"),
        Row("call", "actor call (Ping) p50", p50, "us", f"p99 {p99:.1f}", "raw p50", p50 / raw50),
        Row("call", "actor call (Ping) p99", p99, "us", "", "raw p99", p99 / raw99),
    ]


@with_node
def bench_cast(node: whosthere.Node, sizes: Sizes) -> list[Row]:
    raw_rates, rates = [], []
    for rep in range(sizes.reps):
        progress(f"raw pipelined sends, rep {rep + 1}")
        raw_rates.append(baselines.raw_pipelined(sizes.casts))
        progress(f"broadcast casts, rep {rep + 1}")
        with whosthere.PubSub.connect(node.address) as pubsub:
            dealer = pubsub._conn.dealer()
            t = time.perf_counter()
            for i in range(sizes.casts):
                pubsub.broadcast("bench:nobody", "n", i)
            dealer.flush(60)
            rates.append(sizes.casts / (time.perf_counter() - t))
    raw, raw_spread = median_spread(raw_rates)
    value, spread = median_spread(rates)
    return [
        Row("cast", "raw pipelined DEALER->ROUTER", raw, "msg/s", raw_spread),
        Row("cast", "broadcast cast throughput", value, "msg/s", spread, "raw", value / raw),
    ]


def _subscriber_proc(address: str, topic: str, count: int, subs: int, events: Any) -> None:
    ready, done = events
    pubsub = whosthere.PubSub.connect(address)
    subscriptions = [pubsub.subscribe(topic) for _ in range(subs)]
    ready.set()
    for sub in subscriptions:  # each queued by the process's feed as messages come
        for _ in range(count):
            if sub.get(timeout=60) is None:
                raise TimeoutError("a fan-out message did not arrive within 60 s")
    done.set()
    for s in subscriptions:
        s.close()
    pubsub.close()


@with_node
def bench_fanout(node: whosthere.Node, sizes: Sizes) -> list[Row]:
    ctx = multiprocessing.get_context("spawn")
    raw_rates, rates = [], []
    n = sizes.fanout_msgs
    for rep in range(sizes.reps):
        progress(f"raw PUB->10 SUB fan-out, rep {rep + 1}")
        raw_rates.append(baselines.raw_fanout(n, 10))
        progress(f"PubSub fan-out to 10 subscribers, rep {rep + 1}")
        topic = f"bench:fan:{rep}"
        procs, dones = [], []
        for _ in range(2):  # 2 processes x 5 subscriptions: both cores read
            ready, done = ctx.Event(), ctx.Event()
            p = ctx.Process(
                target=_subscriber_proc, args=(node.address, topic, n, 5, (ready, done))
            )
            p.start()
            ready.wait(30)
            procs.append(p)
            dones.append(done)
        with whosthere.PubSub.connect(node.address) as pubsub:
            t = time.perf_counter()
            for i in range(n):
                pubsub.broadcast(topic, "n", i)
            for d in dones:
                d.wait(120)
            rates.append(n / (time.perf_counter() - t))
        for p in procs:
            p.join(10)
    raw, raw_spread = median_spread(raw_rates)
    value, spread = median_spread(rates)
    return [
        Row("fanout", "raw PUB->10 SUB", raw, "msg/s", raw_spread),
        Row("fanout", "PubSub to 10 subscribers", value, "msg/s", spread, "raw", value / raw),
        Row("fanout", "  deliveries", value * 10, "msg/s"),
    ]


@with_node
def bench_links(node: whosthere.Node, sizes: Sizes) -> list[Row]:
    total = sizes.links + sizes.kills  # the first `kills` are the pidfd baseline's
    progress(f"starting {total:,} sleep processes")
    procs = []
    try:
        for i in range(total):
            procs.append(subprocess.Popen(["sleep", "3600"]))
            if i % 500 == 0:
                progress(f"starting sleep processes: {i:,}/{total:,}")
        progress("pidfd baseline")
        base = baselines.pidfd_kill_to_notice(procs[: sizes.kills])
        rest = procs[sizes.kills :]
        progress(f"linking {len(rest):,} processes")
        samples = []
        with node.links() as links:
            t = time.perf_counter()
            for start in range(0, len(rest), 1000):
                links.link_many([p.pid for p in rest[start : start + 1000]])
            link_rate = len(rest) / (time.perf_counter() - t)
            watched = node.status()["links"]
            for k in range(min(sizes.kills, len(rest))):
                if k % 50 == 0:
                    progress(f"kill -> notice with {len(rest):,} linked: {k}/{sizes.kills}")
                victim = rest[k]
                t = time.perf_counter()
                victim.send_signal(signal.SIGKILL)
                exit_ = links.get(timeout=10)
                samples.append(time.perf_counter() - t)
                assert exit_ is not None and exit_.pid == victim.pid, exit_
                victim.wait()
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    mech = f"pidfd {watched['pidfd']:,}, sweep {watched['sweep']:,}"
    label = f"link notice ({len(rest):,} linked)"
    return [
        *versus_pidfd("links", label, samples, base, mech),
        Row("links", "link rate (batches of 1,000)", link_rate, "pid/s"),
    ]
