"""A cluster under a burst: N nodes on this host each track their share at once.

What a new user tries first with a cluster, and what made it flap: every node `track_many`s
its presences at the same moment, with short periods (0.2 s broadcasts, down_period 2 s).
A subscriber on every node counts what it is told: since every owner stays alive, a single
leave is a spurious one. Convergence is when every subscriber has been told of every
presence of every node, and each shard sees all its peers up.

    python bench/cluster_burst.py --nodes 4 --per-node 25000     # the issue's burst
    python bench/cluster_burst.py --rounds 30 --turnover   # a soak: owners replaced, 30 times

Used by the `cluster` bench workload (growth table) and the load soak in the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil

import whosthere
from whosthere.errors import MessagesLost, WhosthereError

BURST_PERIODS = {"broadcast_period": 0.2, "down_period": 2.0, "permdown_period": 60.0}
LISTEN = "tcp://127.0.0.1:0"
TOPICS = 100
META = {"status": "online", "device": "desktop", "note": "x" * 32}


class Watcher:
    """A subscriber on every topic of one node, in its own thread, counting what it is told
    (a subscriber that stopped reading would lose messages, not the cluster)."""

    def __init__(self, node: Any, topics: list[str]) -> None:
        self.node = node
        self.topics = topics
        self.joins = self.leaves = self.lost = 0
        self.first_leave = ""
        self.error: WhosthereError | None = None  # why it stopped early (its node died)
        self._stop = threading.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the subscriber did not start")

    def _run(self, ready: threading.Event) -> None:
        sub = self.node.pubsub.subscribe(*self.topics, hwm=1_000_000)
        ready.set()
        try:
            while not self._stop.is_set():
                try:
                    msg = sub.get(timeout=0.05)
                except MessagesLost:
                    self.lost += 1
                    continue
                except WhosthereError as exc:  # NodeUnavailable: the node was killed
                    self.error = exc
                    return
                if msg is None or msg.event != "presence_diff":
                    continue
                self.joins += sum(len(m["metas"]) for m in msg.payload["joins"].values())
                left = msg.payload["leaves"]
                if left and not self.first_leave:
                    self.first_leave = f"{msg.topic}: {sorted(left)[:3]}"
                self.leaves += sum(len(m["metas"]) for m in left.values())
        finally:
            with contextlib.suppress(WhosthereError):
                sub.close()

    @property
    def shown(self) -> int:
        return self.joins - self.leaves

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Round:
    """One burst: every node tracks `per_node` more presences at once."""

    nodes: int
    per_node: int
    track_s: float  # until every node's track_many returned
    converged_s: float | None  # until every subscriber showed every presence (None: never)
    events: dict[str, int]  # replication events during the round, summed over the shards
    leaves: int  # spurious: every owner stays alive
    lost: int  # MessagesLost seen by the subscribers
    first_leave: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.converged_s is not None
            and not self.events.get("down")
            and not self.leaves
            and not self.lost
        )

    def summary(self) -> str:
        conv = "never" if self.converged_s is None else f"{self.converged_s:.1f} s"
        e = self.events
        text = (
            f"{self.nodes} nodes x {self.per_node:,}: tracked in {self.track_s:.1f} s, "
            f"converged in {conv}; down {e.get('down', 0)}, up again "
            f"{e.get('up_again', 0)}, whole-state transfers {e.get('sent_whole', 0)}, "
            f"delta transfers {e.get('sent_delta', 0)}; spurious leaves "
            f"{self.leaves:,}, messages lost {self.lost}"
        )
        if self.first_leave:
            text += f"; first leave {self.first_leave}"
        return text


class Cluster:
    """`count` nodes on loopback, seeded with the first (or, with `engine`, meeting through
    that Redis server), each with one owner process and a watcher on every topic. Use as a
    context manager: everything is stopped at the end."""

    def __init__(
        self,
        count: int,
        periods: dict[str, float] | None = None,
        prefix: str = "burst",
        engine: str | None = None,
        **options: Any,
    ) -> None:
        self.engine = engine
        self.periods = dict(BURST_PERIODS if periods is None else periods)
        self.topics = [f"room:{t}" for t in range(TOPICS)]
        self.nodes: list[Any] = []
        self.owners: list[subprocess.Popen[bytes]] = []
        self.watchers: list[Watcher] = []
        self.tracked = 0  # presences per node so far
        self.dead: set[int] = set()
        try:
            self._start(count, prefix, options)
        except BaseException:
            self.close()
            raise

    def _start(self, count: int, prefix: str, options: dict[str, Any]) -> None:
        options = {"pool_size": 1, **options}
        where: dict[str, Any] = {"engine": self.engine} if self.engine else {"listen": LISTEN}
        first = whosthere.Node(name=f"{prefix}0", **where, **self.periods, **options)
        self.nodes.append(first.start())
        if not self.engine:
            where["peers"] = [first.cluster_address]
        for i in range(1, count):
            node = whosthere.Node(name=f"{prefix}{i}", **where, **self.periods, **options)
            self.nodes.append(node.start())
        deadline = time.monotonic() + 30 + 5 * count
        while not self.all_up():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {count} nodes did not all see each other")
            time.sleep(0.05)
        self.owners = [subprocess.Popen(["sleep", "3600"]) for _ in self.nodes]
        self.watchers = [Watcher(n, self.topics) for n in self.nodes]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for w in self.watchers:
            w.close()
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop()
        for p in self.owners:
            p.kill()
            p.wait()

    @property
    def live(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.dead]

    def all_up(self) -> bool:
        want = len(self.live) - 1
        return all(_peers_up(self.nodes[i]) == want for i in self.live)

    def engine_traffic(self) -> tuple[int, int]:
        """(frames, bytes) the live nodes published through the Redis engine so far."""
        frames = size = 0
        for i in self.live:
            engine = self.nodes[i].status()["cluster"].get("engine", {})
            frames += engine.get("published", 0)
            size += engine.get("published_bytes", 0)
        return frames, size

    def events(self) -> dict[str, int]:
        """Every live shard's replication events, summed."""
        total: dict[str, int] = {}
        for i in self.live:
            for stats in _shard_stats(self.nodes[i]):
                for name, n in (stats.get("replication_events") or {}).items():
                    total[name] = total.get(name, 0) + n
        return total

    def burst(self, per_node: int, settle: float = 60.0, *, turnover: bool = False) -> Round:
        """Each live node tracks `per_node` more presences at once (keys new to this round);
        wait until every watcher shows all of them and every peer is up.

        With `turnover`, the presences are new owners' and the old owners are SIGKILLed as
        soon as the tracks return: their presences leave everywhere (expected leaves, not
        counted as spurious), as workers replaced in a rolling deploy."""
        before = self.events()
        leaves_before = sum(w.leaves for w in self.watchers)
        lost_before = sum(w.lost for w in self.watchers)
        start = self.tracked
        old = list(self.owners)
        if turnover:
            self.owners = [subprocess.Popen(["sleep", "3600"]) for _ in self.nodes]
        errors: list[BaseException] = []

        def track(i: int) -> None:
            pid = self.owners[i].pid
            entries = [
                (pid, self.topics[k % TOPICS], f"n{i}-u{k}", META)
                for k in range(start, start + per_node)
            ]
            try:
                self.nodes[i].presence.track_many(entries)
            except BaseException as exc:  # reported by the caller
                errors.append(exc)

        threads = [threading.Thread(target=track, args=(i,)) for i in self.live]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tracked = time.monotonic() - t0
        expected = 0
        if turnover:
            for p in old:
                p.kill()
                p.wait()
            expected = self.tracked * len(self.live) * len(self.live)  # every watcher, each
            self.tracked = 0
        if errors:
            raise errors[0]
        self.tracked += per_node
        total = self.tracked * len(self.live)
        converged = None
        while time.monotonic() < t0 + settle:
            if all(self.watchers[i].shown == total for i in self.live) and self.all_up():
                converged = time.monotonic() - t0
                break
            time.sleep(0.05)
        after = self.events()
        return Round(
            len(self.live),
            per_node,
            tracked,
            converged,
            {k: after.get(k, 0) - before.get(k, 0) for k in after},
            sum(w.leaves for w in self.watchers) - leaves_before - expected,
            sum(w.lost for w in self.watchers) - lost_before,
            "" if turnover else " | ".join(w.first_leave for w in self.watchers if w.first_leave),
        )

    def idle_cpu(self, seconds: float) -> list[float]:
        """Each live node's CPU over `seconds` of doing nothing, in % of one core (its
        processes at the end, a journal compaction's child included while it runs)."""
        before = [_cpu_by_pid(tree(self.nodes[i])) for i in self.live]
        t0 = time.monotonic()
        time.sleep(seconds)  # measuring: the cluster is left alone for this long
        spent = time.monotonic() - t0
        after = [_cpu_by_pid(tree(self.nodes[i])) for i in self.live]
        return [
            100 * sum(cpu - b.get(pid, 0.0) for pid, cpu in a.items()) / spent
            for b, a in zip(before, after, strict=True)
        ]

    def shard_rss(self) -> list[int]:
        """Each live node's shard processes' RSS, in bytes."""
        return [rss(shards(self.nodes[i])) for i in self.live]

    def kill(self, victim: int, timeout: float = 30.0) -> float:
        """SIGKILL node `victim`'s whole tree; seconds until every other node's watcher saw
        all of its presences leave (its owner lives on: only the node died)."""
        shown = {i: self.watchers[i].shown for i in self.live if i != victim}
        t0 = time.monotonic()
        os.killpg(self.nodes[victim].pid, signal.SIGKILL)
        self.dead.add(victim)
        self.watchers[victim].close()
        while time.monotonic() < t0 + timeout:
            if all(self.watchers[i].shown <= n - self.tracked for i, n in shown.items()):
                return time.monotonic() - t0
            time.sleep(0.01)
        raise RuntimeError(f"node {victim}'s presences did not leave within {timeout} s")


def _shard_stats(node: Any) -> list[dict[str, Any]]:
    status = node.status()
    return [a["stats"] or {} for a in status["actors"] if a["name"].startswith("shard.")]


def _peers_up(node: Any) -> int:
    peers = node.status().get("peers", {})
    return sum(1 for p in peers.values() if p["status"] == "up")


def tree(node: Any) -> list[psutil.Process]:
    root = psutil.Process(node.pid)
    return [root, *root.children(recursive=True)]


def shards(node: Any) -> list[psutil.Process]:
    return [
        psutil.Process(a["pid"])
        for a in node.status()["actors"]
        if a["name"].startswith("shard.") and a["pid"]
    ]


def _cpu_by_pid(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--per-node", type=int, default=25_000)
    parser.add_argument("--rounds", type=int, default=1, help="bursts one after another")
    parser.add_argument(
        "--turnover",
        action="store_true",
        help="after the first round, each burst is new owners' while the "
        "last round's owners are killed",
    )
    parser.add_argument("--broadcast", type=float, default=BURST_PERIODS["broadcast_period"])
    parser.add_argument("--down", type=float, default=BURST_PERIODS["down_period"])
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    parser.add_argument("--log-level", default=None)
    parser.add_argument(
        "--engine",
        choices=("mesh", "redis", "both"),
        default="mesh",
        help="between nodes: the ZeroMQ mesh, a private redis-server, or each in turn",
    )
    args = parser.parse_args()
    periods = {**BURST_PERIODS, "broadcast_period": args.broadcast, "down_period": args.down}
    failed = 0
    for engine in ("mesh", "redis") if args.engine == "both" else (args.engine,):
        print(f"-- over {engine}", flush=True)
        failed += _over(engine, args, periods)
    print("OK" if not failed else f"FAILED ({failed} round(s))")
    raise SystemExit(1 if failed else 0)


def _over(engine: str, args: argparse.Namespace, periods: dict[str, float]) -> int:
    if engine != "redis":
        return _rounds(args, periods, None)
    import resp  # bench/ is on the path when run as a script

    with resp.redis_server() as path:
        return _rounds(args, periods, "unix://" + path)


def _rounds(args: argparse.Namespace, periods: dict[str, float], url: str | None) -> int:
    failed = 0
    with Cluster(args.nodes, periods, engine=url, log_level=args.log_level) as cluster:
        for n in range(args.rounds):
            before = cluster.engine_traffic()
            result = cluster.burst(args.per_node, turnover=args.turnover and n > 0)
            print(result.summary(), flush=True)
            if url and result.converged_s:
                after = cluster.engine_traffic()
                frames, size = after[0] - before[0], after[1] - before[1]
                print(
                    f"  through redis-server: {frames:,} PUBLISH ({size / 2**20:.1f} MB) "
                    f"while converging, {frames / result.converged_s:,.0f}/s",
                    flush=True,
                )
            failed += not result.ok
        if args.idle:
            cpu = cluster.idle_cpu(args.idle)
            mb = [b / 2**20 for b in cluster.shard_rss()]
            print(
                f"idle CPU per node {min(cpu):.1f}-{max(cpu):.1f} % of a core; shard RSS "
                f"{min(mb):.0f}-{max(mb):.0f} MB per node"
            )
    return failed


if __name__ == "__main__":
    main()
