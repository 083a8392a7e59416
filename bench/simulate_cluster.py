"""The cluster at N nodes, simulated: the pure cores of N replicas in one process.

A real cluster of 100 nodes does not fit a 2-core machine; its replication does. Each
simulated node is what a shard is made of (`tracker.state.State` and
`tracker.replication.Replication`), and the network between them is a queue of encoded
messages (`transport.codec`, so sizes and decoding costs are the real ones) delivered after a
latency, maybe lost, maybe cut by a partition. Time is simulated: a tick every
`broadcast_period` for each node (staggered, as real shards start at different moments), and
the CPU each node spends on its ticks and on the messages it handles is measured for real.

What it reports for N nodes, each tracking `per_node` presences at once at the start (a
burst): the broadcast periods until every node lists every presence; messages and bytes per
node per period while the burst spreads and once the cluster is idle; the CPU a heartbeat
costs, sent and received; and "down" events (flaps: a peer wrongly taken for dead).

    python bench/simulate_cluster.py 8 32 100          # nodes
    python bench/run.py --only simulate                # the bench's sizes, as a table
"""

from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import logging
import os
import random
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster_burst
import redis_fanout
import resp
from common import Row, Sizes, progress

from whosthere.actors.peer_book import PeerBook
from whosthere.tracker.options import TrackerOptions
from whosthere.tracker.replication import Replication
from whosthere.tracker.state import State
from whosthere.transport import codec
from whosthere.transport.messages import (
    Heartbeat,
    PeerHello,
    PeerWelcome,
    TransferAck,
    TransferReq,
)

META = codec.pack_meta(cluster_burst.META, 65536)  # what the real growth runs track


@dataclass
class Network:
    """Messages in flight: delivered after `latency` (+ up to `jitter`) seconds, each lost
    with probability `loss`; `cut` pairs of nodes hear nothing of each other."""

    latency: float = 0.0005
    jitter: float = 0.0005
    loss: float = 0.0
    cut: set[frozenset[str]] = field(default_factory=set)
    queue: list[tuple[float, int, str, str, bytes]] = field(default_factory=list)
    order: itertools.count[int] = field(default_factory=itertools.count)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def send(self, now: float, src: str, dst: str, body: bytes) -> bool:
        if frozenset((src, dst)) in self.cut or self.rng.random() < self.loss:
            return False
        at = now + self.latency + self.rng.random() * self.jitter
        heapq.heappush(self.queue, (at, next(self.order), src, dst, body))
        return True


class SimNode:
    """One node's shard: its State and Replication, its queue of work, what it sent and spent.

    A node does one thing at a time, as a shard's loop does: a message that comes while it is
    busy waits in `inbox` (the work's CPU, measured, is charged to simulated time, so a
    burst keeps a node busy and its messages wait)."""

    def __init__(self, name: str, options: TrackerOptions) -> None:
        self.name = name
        self.state = State((name, 1))
        self.replication = Replication(self.state, options)
        self.inbox: deque[tuple[str, bytes]] = deque()  # (sender, frame) waiting their turn
        self.busy_until = 0.0
        self.sent_messages = 0
        self.sent_bytes = 0
        self.cpu = 0.0  # seconds of this process's time on its ticks and messages
        self.heartbeats_in = 0
        self.heartbeat_cpu_in = 0.0

    def track(self, count: int, topics: int) -> None:
        for i in range(count):
            self.state.join(1_000 + i % 1_000, f"t:{i % topics}", f"{self.name}:{i}", META)

    def listed(self, topics: int) -> int:
        return sum(len(self.state.list(f"t:{t}")) for t in range(topics))


class Simulation:
    """N simulated nodes meshed over one `Network`, run in simulated time.

    `cores`: how many cores the nodes share (None: a core each, as on N hosts). With fewer
    cores than nodes, each node's CPU is charged `nodes / cores` times over: the fair share
    of a machine whose nodes are all busy at once, as in a burst (how the real growth runs,
    8 nodes on this 2-core host, spend theirs)."""

    def __init__(
        self,
        nodes: int,
        options: TrackerOptions,
        network: Network | None = None,
        cores: int | None = None,
    ):
        self.options = options
        self.network = network or Network()
        self.nodes = {f"n{i}": SimNode(f"n{i}", options) for i in range(nodes)}
        self.slowdown = max(1.0, nodes / cores) if cores else 1.0
        self.now = 0.0
        self.order = itertools.count()
        period = options.broadcast_period
        # (when, order, node name): the moments a node ticks or may take its next work; each
        # node ticks on its own phase, as shards started at different moments do
        self.due = [
            (period * i / nodes, next(self.order), name) for i, name in enumerate(self.nodes)
        ]
        self.tick_at = {name: at for at, _, name in self.due}
        heapq.heapify(self.due)

    def run_until(self, until: float) -> None:
        """Ticks, deliveries and work in time order up to simulated time `until`.

        The garbage collector is off meanwhile: its full scans walk every simulated node's
        state, and their time would be charged to whichever node ran into one (a real shard
        keeps its state out of the collector's scans: `actors.heap.FreezeAsItGrows`)."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._run_until(until)
        finally:
            if was_enabled:
                gc.enable()

    def _run_until(self, until: float) -> None:
        net = self.network
        while True:
            next_due = self.due[0][0] if self.due else float("inf")
            next_msg = net.queue[0][0] if net.queue else float("inf")
            at = min(next_due, next_msg)
            if at > until:
                self.now = until
                return
            self.now = at
            if next_msg < next_due:
                _, _, src, dst, body = heapq.heappop(net.queue)
                self._arrive(self.nodes[dst], (src, body))
                continue
            _, _, name = heapq.heappop(self.due)
            node = self.nodes[name]
            if self.tick_at[name] <= at:
                self.tick_at[name] = at + self.options.broadcast_period
                heapq.heappush(self.due, (self.tick_at[name], next(self.order), name))
                self._tick(node)
            else:
                self._work(node)

    def _tick(self, node: SimNode) -> None:
        """A tick goes at its time even when the node is busy, as a real shard's does: long
        merges run in slices with its loop's other duties between them. Its CPU is added to
        the node's work."""
        t = time.process_time()
        busy = node.busy_until > self.now  # a merge under way: no transfer asked meanwhile
        outs, _ = node.replication.tick(self.now, busy=busy)
        cost = (time.process_time() - t) * self.slowdown
        node.cpu += cost
        node.busy_until = max(node.busy_until, self.now) + cost
        self._send(node, outs, self.now + cost)

    def _arrive(self, node: SimNode, item: tuple[str, bytes]) -> None:
        """A message comes: a sign of life of its sender at once (as a busy shard counts a
        message waiting in its queue), handled in its turn."""
        node.replication.heard(item[0], self.now)
        node.inbox.append(item)
        if len(node.inbox) > 1:
            return  # its turn is already due
        if node.busy_until <= self.now:
            self._work(node)
        else:
            heapq.heappush(self.due, (node.busy_until, next(self.order), node.name))

    def _work(self, node: SimNode) -> None:
        """The node takes the next thing in its inbox once it is not busy."""
        if not node.inbox:
            return
        if node.busy_until > self.now:  # a tick's work came in between: later
            heapq.heappush(self.due, (node.busy_until, next(self.order), node.name))
            return
        src, body = node.inbox.popleft()
        t = time.process_time()
        outs = self._handle(node, src, body)
        cost = (time.process_time() - t) * self.slowdown
        node.cpu += cost
        node.busy_until = self.now + cost
        self._send(node, outs, node.busy_until)
        if node.inbox:
            heapq.heappush(self.due, (node.busy_until, next(self.order), node.name))

    def _handle(self, node: SimNode, src: str, body: bytes) -> list[tuple[str, Any]]:
        t = time.process_time()
        msg = codec.decode(body)
        rep = node.replication
        rep.heard(src, self.now)
        if isinstance(msg, Heartbeat):
            rep.on_heartbeat(msg, self.now)
            node.heartbeats_in += 1
            node.heartbeat_cpu_in += time.process_time() - t
        elif isinstance(msg, TransferReq):
            return rep.on_transfer_req(msg, self.now)
        elif isinstance(msg, TransferAck):
            rep.on_transfer_ack(msg, self.now)
        return []

    def _send(self, node: SimNode, outs: Iterable[tuple[str, Any]], at: float) -> None:
        for to, msg in outs:
            body = codec.encode(msg)
            targets = [n for n in self.nodes if n != node.name] if to == "*" else [to]
            for dst in targets:
                node.sent_messages += 1
                node.sent_bytes += len(body)
                self.network.send(at, node.name, dst, body)

    def counters(self) -> tuple[int, int, float]:
        """(messages sent, bytes sent, CPU seconds) over every node so far."""
        nodes = self.nodes.values()
        return (
            sum(n.sent_messages for n in nodes),
            sum(n.sent_bytes for n in nodes),
            sum(n.cpu for n in nodes),
        )

    def downs(self) -> int:
        return sum(n.replication.events["down"] for n in self.nodes.values())


@dataclass
class Outcome:
    nodes: int
    per_node: int
    converged_periods: float | None  # broadcast periods from the burst until all list all
    burst_msgs_per_node_period: float
    burst_kb_per_node_period: float
    idle_msgs_per_node_period: float
    idle_bytes_per_node_period: float
    idle_cpu_per_node_period_us: float
    heartbeat_in_us: float  # CPU to handle one peer's heartbeat, over the whole run
    idle_heartbeat_in_us: float  # the same, for the idle cluster's heartbeats only
    downs: int
    period: float  # the broadcast period, seconds

    def redis_rates(self, burst: bool) -> tuple[float, float, float]:
        """(publishes/s, deliveries/s, KB/s delivered) one redis-server would carry for this
        cluster's replication over the Redis engine: a delivery per mesh message, a
        publish per heartbeat (all but a few of them, transfers, are broadcasts)."""
        msgs = self.burst_msgs_per_node_period if burst else self.idle_msgs_per_node_period
        kb = self.burst_kb_per_node_period if burst else self.idle_bytes_per_node_period / 1024
        deliveries = self.nodes * msgs / self.period
        return deliveries / max(1, self.nodes - 1), deliveries, self.nodes * kb / self.period


def simulate(
    nodes: int,
    per_node: int,
    *,
    topics: int = 100,
    options: TrackerOptions | None = None,
    network: Network | None = None,
    max_periods: int = 200,
    idle_periods: int = 20,
    cores: int | None = None,
) -> Outcome:
    """Start `nodes` nodes, let them find each other, burst `per_node` tracks on each, and
    measure the spread and then the idle cluster (see the module doc)."""
    options = options or TrackerOptions(broadcast_period=0.2, down_period=2.0)
    sim = Simulation(nodes, options, network, cores)
    period = options.broadcast_period
    sim.run_until(3 * period)  # everyone has heard of everyone
    start = sim.now
    gc.disable()  # as in `run_until`
    for node in sim.nodes.values():  # the burst's own tracks keep each node busy first
        t = time.process_time()
        node.track(per_node, topics)
        node.busy_until = start + (time.process_time() - t) * sim.slowdown
    gc.enable()
    m0, b0, _ = sim.counters()
    want = nodes * per_node
    converged: float | None = None
    step = period / 4  # convergence is looked for every quarter period
    for i in range(1, 4 * max_periods + 1):
        sim.run_until(start + i * step)
        if all(n.listed(topics) == want for n in sim.nodes.values()):
            converged = i / 4
            break
    spread = (converged or max_periods) * nodes
    m1, b1, _ = sim.counters()
    sim.run_until(sim.now + 2 * period)  # the last heartbeats of the burst go out
    m2, b2, c2 = sim.counters()
    h2, hc2 = _heartbeats_in(sim)
    sim.run_until(sim.now + idle_periods * period)
    m3, b3, c3 = sim.counters()
    h3, hc3 = _heartbeats_in(sim)
    idle = idle_periods * nodes
    hb_in = sum(n.heartbeats_in for n in sim.nodes.values())
    hb_cpu = sum(n.heartbeat_cpu_in for n in sim.nodes.values())
    return Outcome(
        nodes=nodes,
        per_node=per_node,
        converged_periods=converged,
        burst_msgs_per_node_period=(m1 - m0) / spread,
        burst_kb_per_node_period=(b1 - b0) / spread / 1024,
        idle_msgs_per_node_period=(m3 - m2) / idle,
        idle_bytes_per_node_period=(b3 - b2) / idle,
        idle_cpu_per_node_period_us=(c3 - c2) / idle * 1e6,
        heartbeat_in_us=hb_cpu / hb_in * 1e6 if hb_in else 0.0,
        idle_heartbeat_in_us=(hc3 - hc2) / (h3 - h2) * 1e6 if h3 > h2 else 0.0,
        downs=sim.downs(),
        period=period,
    )


def _heartbeats_in(sim: Simulation) -> tuple[int, float]:
    """(heartbeats handled, their CPU seconds) over every node so far."""
    nodes = sim.nodes.values()
    return sum(n.heartbeats_in for n in nodes), sum(n.heartbeat_cpu_in for n in nodes)


def bench_simulate(sizes: Sizes) -> list[Row]:
    """The bench's table: N simulated nodes, 1,000 presences each (quick: fewer nodes), a
    core each as on N hosts; then the check: real bursts on this host beside the same
    bursts simulated on as many cores as it has."""
    rows: list[Row] = []
    counts = (8, 32) if sizes.reps <= 2 else (8, 32, 100)
    cost = None
    if resp.available():
        progress("redis-server's CPU per PUBLISH, per delivery, per KB")
        cost = redis_fanout.measure()
        rows.append(
            Row(
                "simulate",
                "redis-server CPU per delivery (per PUBLISH, per KB)",
                cost.per_delivery_us,
                "us",
                f"{cost.per_publish_us:.2f}, {cost.per_kb_us:.2f}",
            )
        )
    for n in counts:
        progress(f"simulating {n} nodes x 1,000 presences")
        out = simulate(n, 1_000)
        label = f"{n} nodes x 1,000"
        periods = out.converged_periods
        rows += [
            Row(
                "simulate",
                f"{label}: converged after the burst",
                float(periods or 0),
                "periods",
                "" if periods else "NOT converged",
            ),
            Row(
                "simulate",
                "  burst: messages / node / period",
                out.burst_msgs_per_node_period,
                "msg",
            ),
            Row("simulate", "  burst: KB / node / period", out.burst_kb_per_node_period, "KB"),
            Row(
                "simulate", "  idle: messages / node / period", out.idle_msgs_per_node_period, "msg"
            ),
            Row("simulate", "  idle: bytes / node / period", out.idle_bytes_per_node_period, "B"),
            Row("simulate", "  idle: CPU / node / period", out.idle_cpu_per_node_period_us, "us"),
            Row("simulate", "  a peer's heartbeat handled, mean", out.heartbeat_in_us, "us"),
            Row("simulate", "  a peer's idle heartbeat handled", out.idle_heartbeat_in_us, "us"),
            Row("simulate", "  down events (flaps)", float(out.downs), "events"),
        ]
        if cost is not None:
            for phase, burst in (("idle", False), ("burst", True)):
                publishes, deliveries, kb = out.redis_rates(burst)
                rows.append(
                    Row(
                        "simulate",
                        f"  over Redis, {phase}: one redis-server's CPU",
                        cost.cpu_share(publishes, deliveries, kb) * 100,
                        "% core",
                        f"{deliveries:,.0f} deliveries/s, {kb:,.0f} KB/s",
                    )
                )
    return rows + _gossip(counts) + _checked_against_real(sizes)


def _gossip(counts: Iterable[int]) -> list[Row]:
    """The cluster actor's hellos, which the simulation leaves out: every node greets each of
    its 2(n-1) connections every second and is answered. Timed here on the real `PeerBook`
    and codec, with the addresses told in every hello (before) and only when they changed
    (now: an empty list in between)."""
    rows = []
    for n in counts:
        addresses = [f"tcp://10.1.{i // 250}.{i % 250}:7100" for i in range(n)]
        costs = {}
        for told in ("every hello", "when changed"):
            book = PeerBook("n0", set(), 1200.0, logging.getLogger("bench.gossip"))
            book.listening(addresses[0])
            for i in range(1, n):
                book.dialled(addresses[i], 1000.0)
                book.learn(f"n{i}", ("out", addresses[i]), [], 1000.0)
            peers = addresses if told == "every hello" else []
            hello = codec.encode(PeerHello("n5", 1, addresses[5], peers))
            reps, t = 2_000, time.perf_counter()
            for _ in range(reps):
                msg = codec.decode(hello)
                book.hello(msg.name, ("in", b"n5"), msg.listen, msg.peers, 1000.0)
                codec.encode(PeerWelcome("n0", peers))
            per_s = 2 * 2 * (n - 1)  # hellos and welcomes, in and out, a second
            costs[told] = ((time.perf_counter() - t) / reps * per_s / 2, len(hello) * per_s / 2)
        (cpu_then, bytes_then), (cpu_now, bytes_now) = costs.values()
        rows += [
            Row(
                "simulate",
                f"{n} nodes: hellos' CPU per node",
                cpu_now * 100,
                "% core",
                f"{bytes_now * n / 1e6:,.2f} MB/s in all",
                f"addresses in every hello: {cpu_then * 100:.2f} %, "
                f"{bytes_then * n / 1e6:,.1f} MB/s",
                cpu_now / cpu_then,
            )
        ]
    return rows


def _checked_against_real(sizes: Sizes) -> list[Row]:
    """A real burst (`cluster_burst`: nodes on this host, a subscriber of every topic on
    each) and the same burst simulated with the nodes sharing this host's cores: the
    simulation's time to converge over the real one's."""
    cores = os.cpu_count() or 1
    shapes = ((4, 2_500), (8, 1_250)) if sizes.reps <= 2 else ((4, 2_500), (8, 1_250), (8, 12_500))
    rows = []
    period = cluster_burst.BURST_PERIODS["broadcast_period"]
    for nodes, per_node in shapes:
        progress(f"a real burst of {nodes} nodes x {per_node:,} beside its simulation")
        with cluster_burst.Cluster(nodes, prefix=f"sim{nodes}-") as cluster:
            real = cluster.burst(per_node)
        options = TrackerOptions(**cluster_burst.BURST_PERIODS)
        sim = simulate(nodes, per_node, options=options, cores=cores)
        if real.converged_s is None or sim.converged_periods is None:
            raise RuntimeError(f"no convergence: real {real.summary()}, simulated {sim}")
        rows.append(
            Row(
                "simulate",
                f"check: {nodes} nodes x {per_node:,} on {cores} cores, simulated",
                sim.converged_periods * period * 1e3,
                "ms",
                f"real down {real.events.get('down', 0)}, simulated down {sim.downs}",
                f"real {real.converged_s * 1e3:,.0f} ms",
                sim.converged_periods * period / real.converged_s,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("nodes", nargs="*", type=int, default=[8, 32])
    p.add_argument("--per-node", type=int, default=1_000)
    p.add_argument("--loss", type=float, default=0.0, help="message loss probability")
    p.add_argument("--cores", type=int, help="cores the nodes share (default: one each)")
    args = p.parse_args(argv)
    print(
        f"{'nodes':>5} {'converged':>9} {'burst msg':>9} {'burst KB':>8} {'idle msg':>8} "
        f"{'idle B':>8} {'idle CPU us':>11} {'hb in us':>8} {'downs':>5}"
    )
    for n in args.nodes:
        out = simulate(n, args.per_node, network=Network(loss=args.loss), cores=args.cores)
        conv = "never" if out.converged_periods is None else f"{out.converged_periods:.2f}"
        print(
            f"{n:>5} {conv:>9} {out.burst_msgs_per_node_period:>9.1f} "
            f"{out.burst_kb_per_node_period:>8.1f} {out.idle_msgs_per_node_period:>8.1f} "
            f"{out.idle_bytes_per_node_period:>8.0f} {out.idle_cpu_per_node_period_us:>11.0f} "
            f"{out.heartbeat_in_us:>8.1f} {out.downs:>5}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
