"""`whosthere demo`: worker processes come and go on an embedded node, crashes included.

The demo starts a node, spawns worker processes that announce themselves and their status
changes on the "workers" topic, links every worker through the supervisor, kills some of them
with SIGKILL and shows, live, each join, update and crash-driven leave with the time from the
kill to the node's notice. A summary table ends it.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import zmq

from whosthere.links import Links
from whosthere.node import Node
from whosthere.pubsub import PubSub, Subscription

TOPIC = "workers"
STATUSES = ("idle", "busy", "waiting", "busy")


def worker_main(name: str, seed: int) -> None:
    """A demo worker: joins, then changes status now and then until it is stopped or killed."""
    rng = random.Random(seed)
    with PubSub.connect() as pubsub:
        status = "idle"
        started = time.time()
        pubsub.broadcast(
            TOPIC,
            "join",
            {"name": name, "pid": os.getpid(), "status": status, "started_at": started},
        )
        while True:
            time.sleep(rng.uniform(0.4, 1.6))
            new = rng.choice([s for s in STATUSES if s != status])
            pubsub.broadcast(
                TOPIC, "update", {"name": name, "pid": os.getpid(), "status": new, "was": status}
            )
            status = new


@dataclass
class Worker:
    name: str
    pid: int
    status: str = "starting"
    updates: int = 0
    killed_at: float | None = None  # perf_counter at SIGKILL
    left_after: float | None = None  # seconds from kill to the node's notice
    fate: str = "running"


@dataclass
class Demo:
    workers: int = 8
    kills: int = 3
    duration: float = 8.0
    out: TextIO = sys.stdout
    seed: int | None = None
    by_pid: dict[int, Worker] = field(default_factory=dict)
    t0: float = 0.0

    def say(self, what: str, text: str) -> None:
        print(
            f"  {time.perf_counter() - self.t0:6.2f}s  {what:<7} {text}", file=self.out, flush=True
        )

    def run(self) -> int:
        rng = random.Random(self.seed)
        print(
            f"whosthere demo: {self.workers} workers for {self.duration:g} s, "
            f"{self.kills} killed with SIGKILL",
            file=self.out,
            flush=True,
        )
        with Node(name="demo") as node, node.links() as links, node.pubsub.subscribe(TOPIC) as sub:
            print(f"node {node.name!r} at {node.address}\n", file=self.out, flush=True)
            self.t0 = time.perf_counter()
            for i in range(self.workers):
                name = f"worker-{i + 1}"
                proc = node.spawn(worker_main, (name, rng.randrange(2**32)), name=name)
                assert proc.pid is not None
                self.by_pid[proc.pid] = Worker(name, proc.pid)
                links.link(proc.pid)
            first_kill = min(2.0, self.duration / 3)
            gap = (self.duration - first_kill - 1.0) / max(1, self.kills)
            kill_times = [first_kill + k * gap for k in range(min(self.kills, self.workers))]
            self._loop(sub, links, kill_times, rng)
            for w in self.by_pid.values():
                if w.fate == "running":
                    w.fate = "stopped"
        self._summary()
        return 0

    def _loop(
        self, sub: Subscription, links: Links, kill_times: list[float], rng: random.Random
    ) -> None:
        poller = zmq.Poller()
        poller.register(sub.socket, zmq.POLLIN)
        poller.register(links.socket, zmq.POLLIN)
        end = self.t0 + self.duration
        while (now := time.perf_counter()) < end:
            if kill_times and now - self.t0 >= kill_times[0]:
                kill_times.pop(0)
                self._kill_one(rng)
                continue
            next_at = self.t0 + kill_times[0] if kill_times else end
            poller.poll(max(1, int((min(next_at, end) - now) * 1000)))
            while (exit_ := links.get(timeout=0)) is not None:
                self._left(exit_.pid, time.perf_counter())
            while (msg := sub.get(timeout=0)) is not None:
                self._announce(msg.event, msg.payload)

    def _kill_one(self, rng: random.Random) -> None:
        live = [w for w in self.by_pid.values() if w.fate == "running" and w.status != "starting"]
        if not live:
            return
        victim = rng.choice(live)
        self.say("KILL", f"{victim.name} (pid {victim.pid}) with SIGKILL")
        victim.killed_at = time.perf_counter()
        os.kill(victim.pid, signal.SIGKILL)

    def _left(self, pid: int, noticed: float) -> None:
        w = self.by_pid.get(pid)
        if w is None:
            return
        if w.killed_at is not None:
            w.left_after = noticed - w.killed_at
            w.fate = "killed"
            self.say(
                "leave",
                f"{w.name} (pid {pid}) crashed; noticed "
                f"{w.left_after * 1000:.2f} ms after the kill",
            )
        else:
            w.fate = "exited"
            self.say("leave", f"{w.name} (pid {pid}) exited")

    def _announce(self, event: str, payload: dict) -> None:
        w = self.by_pid.get(payload.get("pid", -1))
        if w is None:
            return
        if event == "join":
            w.status = payload["status"]
            self.say("join", f"{w.name} (pid {w.pid}) status={w.status}")
        elif event == "update":
            w.updates += 1
            self.say("update", f"{w.name} (pid {w.pid}) {payload['was']} -> {payload['status']}")
            w.status = payload["status"]

    def _summary(self) -> None:
        print("\nsummary", file=self.out)
        header = f"  {'worker':<10} {'pid':>7}  {'fate':<8} {'updates':>7}  {'kill -> leave':>13}"
        print(header, file=self.out)
        print("  " + "-" * (len(header) - 2), file=self.out)
        for w in sorted(self.by_pid.values(), key=lambda w: w.name):
            latency = f"{w.left_after * 1000:.2f} ms" if w.left_after is not None else "-"
            print(
                f"  {w.name:<10} {w.pid:>7}  {w.fate:<8} {w.updates:>7}  {latency:>13}",
                file=self.out,
            )
        samples = [w.left_after for w in self.by_pid.values() if w.left_after is not None]
        if samples:
            print(
                f"\n  {len(samples)} crash(es) noticed; kill -> leave median "
                f"{statistics.median(samples) * 1000:.2f} ms, max {max(samples) * 1000:.2f} ms",
                file=self.out,
                flush=True,
            )


def main(workers: int, kills: int, duration: float, seed: int | None = None) -> int:
    return Demo(workers=workers, kills=kills, duration=duration, seed=seed).run()
