"""`whosthere demo`: worker processes come and go on an embedded node, crashes included.

The demo starts a node and spawns worker processes that each track themselves on the
"workers" topic (meta: status and start time) and update their status now and then. It kills
some of them with SIGKILL and shows, live, each join, update and crash-driven leave as the
`presence_diff` events arrive, with the time from each kill to its leave. A summary ends it.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from whosthere.node import Node
from whosthere.presence import Presence
from whosthere.pubsub import Subscription

TOPIC = "workers"
STATUSES = ("idle", "busy", "waiting", "busy")


def worker_main(name: str, seed: int) -> None:
    """A demo worker: tracks itself, then changes status now and then until it dies."""
    rng = random.Random(seed)
    presence = Presence.connect()
    status = "idle"
    meta = {"status": status, "pid": os.getpid(), "started_at": round(time.time(), 3)}
    presence.track(os.getpid(), TOPIC, name, meta)
    while True:
        time.sleep(rng.uniform(0.4, 1.6))
        status = rng.choice([s for s in STATUSES if s != status])

        def moved(meta: dict[str, Any], status: str = status) -> dict[str, Any]:
            return {**meta, "status": status}

        presence.update(os.getpid(), TOPIC, name, moved)


@dataclass
class DemoWorker:
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
    by_pid: dict[int, DemoWorker] = field(default_factory=dict)
    t0: float = 0.0

    def say(self, what: str, text: str) -> None:
        print(
            f"  {time.perf_counter() - self.t0:6.2f}s  {what:<7} {text}", file=self.out, flush=True
        )

    def run(self) -> int:
        rng = random.Random(self.seed)
        print(
            f"whosthere demo: {self.workers} workers track themselves on {TOPIC!r} for "
            f"{self.duration:g} s; {self.kills} get killed with SIGKILL",
            file=self.out,
            flush=True,
        )
        with Node(name="demo") as node, node.presence.subscribe(TOPIC) as sub:
            print(f"node {node.name!r} at {node.address}\n", file=self.out, flush=True)
            self.t0 = time.perf_counter()
            for i in range(self.workers):
                name = f"worker-{i + 1}"
                proc = node.spawn(worker_main, (name, rng.randrange(2**32)), name=name)
                assert proc.pid is not None
                self.by_pid[proc.pid] = DemoWorker(name, proc.pid)
            first_kill = min(2.0, self.duration / 3)
            gap = (self.duration - first_kill - 1.0) / max(1, self.kills)
            kill_times = [first_kill + k * gap for k in range(min(self.kills, self.workers))]
            self._loop(sub, kill_times, rng)
            listed = node.presence.list(TOPIC)
            print(
                f"\n  list('{TOPIC}') now: {len(listed)} present: "
                f"{', '.join(sorted(listed, key=lambda k: int(k.split('-')[1])))}",
                file=self.out,
                flush=True,
            )
            for w in self.by_pid.values():
                if w.fate == "running":
                    w.fate = "stopped"
        self._summary()
        return 0

    def _loop(self, sub: Subscription, kill_times: list[float], rng: random.Random) -> None:
        end = self.t0 + self.duration
        while (now := time.perf_counter()) < end:
            due = bool(kill_times) and now - self.t0 >= kill_times[0]
            if due and self._kill_one(rng):
                kill_times.pop(0)
                continue
            # a kill that found no worker joined yet waits for the next join
            next_at = self.t0 + kill_times[0] if kill_times and not due else end
            msg = sub.get(timeout=max(0.001, min(next_at, end) - now))
            if msg is not None and msg.event == "presence_diff":
                self._diff(msg.payload, time.perf_counter())

    def _kill_one(self, rng: random.Random) -> bool:
        """SIGKILL a worker that has joined; False if none has yet."""
        live = [
            w
            for w in self.by_pid.values()
            if w.fate == "running" and w.status != "starting" and w.killed_at is None
        ]
        if not live:
            return False
        victim = rng.choice(live)
        self.say("KILL", f"{victim.name} (pid {victim.pid}) with SIGKILL")
        victim.killed_at = time.perf_counter()
        os.kill(victim.pid, signal.SIGKILL)
        return True

    def _diff(self, diff: dict[str, Any], received: float) -> None:
        joins, leaves = diff["joins"], diff["leaves"]
        for key, entry in joins.items():
            meta = entry["metas"][-1]
            w = self.by_pid.get(meta.get("pid", -1))
            if w is None:
                continue
            if key in leaves:
                w.updates += 1
                was = leaves[key]["metas"][0].get("status")
                self.say("update", f"{w.name} (pid {w.pid}) {was} -> {meta['status']}")
            else:
                self.say("join", f"{w.name} (pid {w.pid}) status={meta['status']}")
            w.status = meta["status"]
        for key, entry in leaves.items():
            if key in joins:
                continue
            w = self.by_pid.get(entry["metas"][0].get("pid", -1))
            if w is None:
                continue
            if w.killed_at is not None:
                w.left_after = received - w.killed_at
                w.fate = "killed"
                self.say(
                    "leave",
                    f"{w.name} (pid {w.pid}) crashed: left "
                    f"{w.left_after * 1000:.2f} ms after the kill",
                )
            else:
                w.fate = "left"
                self.say("leave", f"{w.name} (pid {w.pid})")

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
                f"\n  {len(samples)} crash-driven leave(s); kill -> leave diff median "
                f"{statistics.median(samples) * 1000:.2f} ms, max {max(samples) * 1000:.2f} ms",
                file=self.out,
                flush=True,
            )


def main(workers: int, kills: int, duration: float, seed: int | None = None) -> int:
    return Demo(workers=workers, kills=kills, duration=duration, seed=seed).run()
