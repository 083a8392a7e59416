"""whosthere benchmarks: each figure beside a baseline measured in the same run.

    python bench/run.py --quick          # CI size, well under a minute
    python bench/run.py --full           # the sizes quoted in the issues
    python bench/run.py --json out.json  # save; --compare old.json prints the change

This machine is shared and noisy: absolute times drift, ratios to a baseline measured in the
same run hold. Every throughput is a median over repetitions with its spread (min-max);
latencies are p50/p99 over all samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines

import whosthere
from whosthere.client import lookup
from whosthere.transport.messages import Ping
from whosthere.transport.sockets import Dealer


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
    calls: int
    casts: int
    fanout_msgs: int
    links: int
    kills: int
    reps: int


QUICK = Sizes(calls=2_000, casts=20_000, fanout_msgs=5_000, links=500, kills=50, reps=3)
FULL = Sizes(calls=20_000, casts=200_000, fanout_msgs=50_000, links=10_000, kills=1_000, reps=5)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_spread(values: list[float]) -> tuple[float, str]:
    return statistics.median(values), f"{min(values):,.0f}-{max(values):,.0f}"


def progress(text: str) -> None:
    print(f"\r\033[K  ... {text}", end="", file=sys.stderr, flush=True)


# -- workloads -------------------------------------------------------------------------------


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
    remaining = {i: count for i in range(subs)}
    poller = zmq.Poller()
    for s in subscriptions:
        poller.register(s.socket, zmq.POLLIN)
    index = {s.socket: i for i, s in enumerate(subscriptions)}
    while any(remaining.values()):
        for sock, _ in poller.poll(10_000):
            i = index[sock]
            sub = subscriptions[i]
            while remaining[i] and sub.get(timeout=0) is not None:
                remaining[i] -= 1
    done.set()
    for s in subscriptions:
        s.close()
    pubsub.close()


def bench_fanout(node: whosthere.Node, sizes: Sizes) -> list[Row]:
    import multiprocessing

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
    b50, b99 = pct(base, 0.5) * 1e3, pct(base, 0.99) * 1e3
    p50, p99 = pct(samples, 0.5) * 1e3, pct(samples, 0.99) * 1e3
    n = len(rest)
    mech = f"pidfd {watched['pidfd']:,}, sweep {watched['sweep']:,}"
    return [
        Row("links", "raw pidfd kill->notice p50", b50, "ms", f"p99 {b99:.3f}"),
        Row(
            "links",
            f"link notice p50 ({n:,} linked)",
            p50,
            "ms",
            f"p99 {p99:.3f}",
            "pidfd p50",
            p50 / b50,
        ),
        Row("links", f"link notice p99 ({n:,} linked)", p99, "ms", mech, "pidfd p99", p99 / b99),
        Row("links", "link rate (batches of 1,000)", link_rate, "pid/s"),
    ]


WORKLOADS: dict[str, Callable[[whosthere.Node, Sizes], list[Row]]] = {
    "call": bench_call,
    "cast": bench_cast,
    "fanout": bench_fanout,
    "links": bench_links,
}


# -- output ----------------------------------------------------------------------------------


def fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def print_table(rows: list[Row], previous: dict[str, float] | None = None) -> None:
    print(
        f"\n{'figure':<42} {'value':>12} {'unit':<6} {'spread':<18} {'vs baseline':>16}"
        + ("  change" if previous else "")
    )
    print("-" * (98 + (9 if previous else 0)))
    for r in rows:
        ratio = f"{r.ratio:.2f}x {r.baseline}" if r.ratio is not None else ""
        line = f"{r.figure:<42} {fmt(r.value):>12} {r.unit:<6} {r.spread:<18} {ratio:>16}"
        if previous and r.figure in previous and previous[r.figure]:
            line += f"  {(r.value / previous[r.figure] - 1) * 100:+6.1f}%"
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI sizes (default)")
    size.add_argument("--full", action="store_true", help="the sizes quoted in the issues")
    p.add_argument("--only", nargs="*", choices=sorted(WORKLOADS), help="run these workloads")
    p.add_argument("--json", metavar="FILE", help="save the results")
    p.add_argument("--compare", metavar="FILE", help="show the change against a saved run")
    args = p.parse_args(argv)
    sizes = FULL if args.full else QUICK
    names = args.only or list(WORKLOADS)
    rows: list[Row] = []
    started = time.time()
    with whosthere.Node(name="bench") as node:
        for name in names:
            rows += WORKLOADS[name](node, sizes)
    print("\r\033[K", end="", file=sys.stderr)
    previous = None
    if args.compare:
        saved = json.loads(Path(args.compare).read_text())
        previous = {r["figure"]: r["value"] for r in saved["rows"]}
    print(
        f"whosthere bench ({'full' if args.full else 'quick'}) on {platform.node()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.time() - started:.0f} s"
    )
    print_table(rows, previous)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "machine": platform.node(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "commit": _commit(),
                    "sizes": asdict(sizes),
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
    return 0


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
