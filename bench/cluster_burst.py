"""A cluster under a burst: N nodes on this host each track their share at once.

What a new user tries first with a cluster, and what made it flap: every node `track_many`s
its presences at the same moment, with short periods (0.2 s broadcasts, down_period 2 s).
A subscriber on every node counts what it is told: since every owner stays alive, a single
leave is a spurious one. Convergence is when every subscriber has been told of every
presence of every node, and each shard sees all its peers up.

    python bench/cluster_burst.py --nodes 4 --per-node 25000     # the issue's burst
    python bench/cluster_burst.py --nodes 8 --per-node 12500 --idle 10

Reused by the `cluster` bench workload and the short load soak in the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import whosthere
from whosthere.errors import MessagesLost

BURST_PERIODS = {"broadcast_period": 0.2, "down_period": 2.0, "permdown_period": 60.0}
LISTEN = "tcp://127.0.0.1:0"
TOPICS = 100
META = {"status": "online", "device": "desktop", "note": "x" * 32}


@dataclass
class Watcher:
    """A subscriber on every topic of one node, counting what it is told, in its own thread
    (a subscriber that stops reading would lose messages, not the cluster)."""

    node: Any
    topics: list[str]
    joins: int = 0
    leaves: int = 0
    lost: int = 0
    first_leave: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Watcher:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the subscriber did not start")
        return self

    def _run(self) -> None:
        sub = self.node.pubsub.subscribe(*self.topics, hwm=1_000_000)
        self.ready.set()
        try:
            while not self.stop.is_set():
                try:
                    msg = sub.get(timeout=0.05)
                except MessagesLost:
                    self.lost += 1
                    continue
                if msg is None or msg.event != "presence_diff":
                    continue
                self.joins += sum(len(m["metas"]) for m in msg.payload["joins"].values())
                left = msg.payload["leaves"]
                if left and not self.first_leave:
                    self.first_leave = f"{msg.topic}: {sorted(left)[:3]}"
                self.leaves += sum(len(m["metas"]) for m in left.values())
        finally:
            sub.close()

    @property
    def shown(self) -> int:
        return self.joins - self.leaves

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)


def start_cluster(count: int, periods: dict[str, float], prefix: str = "burst",
                  **options: Any) -> list[Any]:  # fmt: skip
    """`count` nodes on loopback, all seeded with the first, once each sees every other up."""
    nodes: list[Any] = []
    try:
        first = whosthere.Node(name=f"{prefix}0", listen=LISTEN, **periods, **options).start()
        nodes.append(first)
        for i in range(1, count):
            node = whosthere.Node(name=f"{prefix}{i}", listen=LISTEN,
                                  peers=[first.cluster_address], **periods, **options)  # fmt: skip
            nodes.append(node.start())
        deadline = time.monotonic() + 30 + 5 * count
        while not all(_peers_up(n) == count - 1 for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {count} nodes did not all see each other")
            time.sleep(0.05)
    except BaseException:
        stop_cluster(nodes)
        raise
    return nodes


def stop_cluster(nodes: list[Any]) -> None:
    for node in reversed(nodes):
        with contextlib.suppress(Exception):
            node.stop()


def _shard_stats(node: Any) -> list[dict[str, Any]]:
    status = node.status()
    return [a["stats"] or {} for a in status["actors"] if a["name"].startswith("shard.")]


def _peers_up(node: Any) -> int:
    peers = node.status().get("peers", {})
    return sum(1 for p in peers.values() if p["status"] == "up")


def events(nodes: list[Any]) -> dict[str, int]:
    """Every shard's replication events, summed over the cluster."""
    total: dict[str, int] = {}
    for node in nodes:
        for stats in _shard_stats(node):
            for name, n in (stats.get("replication_events") or {}).items():
                total[name] = total.get(name, 0) + n
    return total


def tree(node: Any) -> list[psutil.Process]:
    root = psutil.Process(node.pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


@dataclass
class BurstResult:
    nodes: int
    per_node: int
    track_s: float  # until every node's track_many returned
    converged_s: float | None  # until every subscriber showed every presence (None: never)
    events: dict[str, int]
    joins: list[int]
    leaves: list[int]  # spurious: every owner stays alive
    lost: list[int]  # MessagesLost seen by the subscribers
    idle_cpu: list[float] = field(default_factory=list)  # % of one core, per node
    rss_mb: list[float] = field(default_factory=list)  # per node, after convergence
    shard_rss_mb: list[float] = field(default_factory=list)
    first_leave: str = ""

    @property
    def ok(self) -> bool:
        return (self.converged_s is not None and not self.events.get("down")
                and not any(self.leaves) and not any(self.lost))  # fmt: skip

    def summary(self) -> str:
        conv = "never" if self.converged_s is None else f"{self.converged_s:.1f} s"
        text = (f"{self.nodes} nodes x {self.per_node:,}: tracked in {self.track_s:.1f} s, "
                f"converged in {conv}; down {self.events.get('down', 0)}, up again "
                f"{self.events.get('up_again', 0)}, whole-state transfers "
                f"{self.events.get('sent_whole', 0)}, delta transfers "
                f"{self.events.get('sent_delta', 0)}; spurious leaves {sum(self.leaves):,}, "
                f"messages lost {sum(self.lost)}")  # fmt: skip
        if self.idle_cpu:
            text += (
                f"; idle CPU per node {min(self.idle_cpu):.1f}-{max(self.idle_cpu):.1f} %"
                f"; RSS per node {min(self.rss_mb):.0f}-{max(self.rss_mb):.0f} MB"
            )
        if self.first_leave.strip(" |"):
            text += f"; first leaves {self.first_leave}"
        return text


def burst(nodes: list[Any], per_node: int, owners: list[subprocess.Popen[bytes]], *,
          settle: float = 60.0, idle: float = 0.0, quiet: float = 0.0) -> BurstResult:  # fmt: skip
    """Each node tracks `per_node` presences (of `owners[i]`) at once; wait for convergence;
    then watch `quiet` more seconds for late leaves and measure `idle` seconds of CPU."""
    count = len(nodes)
    topics = [f"room:{t}" for t in range(TOPICS)]
    watchers = [Watcher(n, topics).start() for n in nodes]
    try:
        total = count * per_node
        errors: list[BaseException] = []

        def track(i: int) -> None:
            pid = owners[i].pid
            entries = [(pid, topics[k % TOPICS], f"n{i}-u{k}", META) for k in range(per_node)]
            try:
                nodes[i].presence.track_many(entries)
            except BaseException as exc:  # reported by the caller
                errors.append(exc)

        threads = [threading.Thread(target=track, args=(i,)) for i in range(count)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tracked = time.monotonic() - t0
        if errors:
            raise errors[0]
        converged = None
        deadline = t0 + settle
        while time.monotonic() < deadline:
            if all(w.shown == total for w in watchers) and all(
                _peers_up(n) == count - 1 for n in nodes
            ):
                converged = time.monotonic() - t0
                break
            time.sleep(0.05)
        if quiet:
            end = time.monotonic() + quiet
            while time.monotonic() < end:
                time.sleep(0.1)
        result = BurstResult(count, per_node, tracked, converged, events(nodes),
                             [w.joins for w in watchers], [w.leaves for w in watchers],
                             [w.lost for w in watchers],
                             first_leave=" | ".join(w.first_leave for w in watchers))  # fmt: skip
        if idle:
            trees = [tree(n) for n in nodes]
            before = [cpu_seconds(t) for t in trees]
            t1 = time.monotonic()
            time.sleep(idle)  # measuring: the cluster is left alone for this long
            spent = time.monotonic() - t1
            spent_cpu = [cpu_seconds(t) - b for t, b in zip(trees, before, strict=True)]
            result.idle_cpu = [100 * s / spent for s in spent_cpu]
            result.rss_mb = [rss(t) / 2**20 for t in trees]
            result.shard_rss_mb = [
                rss([p for p in t if "shard" in " ".join(p.cmdline())]) / 2**20 for t in trees
            ]
        return result
    finally:
        for w in watchers:
            w.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--per-node", type=int, default=25_000)
    parser.add_argument("--broadcast", type=float, default=BURST_PERIODS["broadcast_period"])
    parser.add_argument("--down", type=float, default=BURST_PERIODS["down_period"])
    parser.add_argument("--settle", type=float, default=60.0)
    parser.add_argument("--quiet", type=float, default=5.0)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--log-level", default=None)
    args = parser.parse_args()
    periods = {**BURST_PERIODS, "broadcast_period": args.broadcast, "down_period": args.down}
    owners = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.nodes)]
    nodes: list[Any] = []
    try:
        nodes = start_cluster(args.nodes, periods, pool_size=1, log_level=args.log_level)
        result = burst(
            nodes, args.per_node, owners, settle=args.settle, idle=args.idle, quiet=args.quiet
        )
        print(result.summary())
        print("OK" if result.ok else "FAILED")
    finally:
        stop_cluster(nodes)
        for p in owners:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
