"""Chaos: kill the node's actors under a live workload and check that nothing is lost.

Shared by `tests/test_chaos.py` (every actor kind once) and `bench/chaos.py` (a soak).

Owners are OS processes that track, update and untrack their own presences through the
public API and keep a model of what they hold. A call that raises `NodeUnavailable` (its
actor died) is repeated until it answers, so each model is exact: a track repeated after it
took effect answers `AlreadyTracked`, which confirms it. Owners also die (SIGKILL) and new
ones start. A subscriber builds its own view from the diffs, resyncing with `list` after
`MessagesLost`.

After each kill the owners pause, and the checker waits until `list` equals the ground
truth (the live owners' models) and the subscriber's view equals `list`: how long that
takes is the time to converge. What is listed and not owned is a phantom; what is owned and
not listed is lost.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import whosthere

TOPICS = [f"chaos:{i}" for i in range(8)]
KEYS_PER_OWNER = 6
Truth = set[tuple[str, str, int, int]]  # (topic, key, owner id, version)


class ChaosPresence(whosthere.Presence):
    """Both callbacks defined, so the fetchers and the presence client actor run."""

    def fetch(self, topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        return presences

    def init(self) -> int:
        return 0

    def handle_metas(self, topic: str, diff: dict, presences: dict, state: int) -> int:
        return state + 1


# -- owners ----------------------------------------------------------------------------------


def _retry(call: Callable[..., Any], *args: Any) -> Any:
    """Repeat a call until an actor answers (it may have died with the call in flight)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return call(*args)
        except whosthere.NodeUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def owner_main(address: str, ident: int, conn: Connection, seed: int) -> None:
    """An owner's loop: random changes to its own presences; pauses and reports on demand."""
    rng = random.Random(seed)
    presence = ChaosPresence.connect(address, timeout=2.0)
    pid = os.getpid()
    held: dict[tuple[str, str], int] = {}  # (topic, key) -> version of its meta
    surprises: list[str] = []  # answers that show the node forgot something
    version = 0
    paused = False
    while True:
        if conn.poll(0 if not paused else None):
            order = conn.recv()
            if order == "pause":
                paused = True
                conn.send((sorted((t, k, ident, v) for (t, k), v in held.items()), surprises))
                surprises = []
            elif order == "resume":
                paused = False
            elif order == "stop":
                return
            continue
        topic, key = rng.choice(TOPICS), f"o{ident}-k{rng.randrange(KEYS_PER_OWNER)}"
        version += 1
        meta = {"o": ident, "v": version}
        if (topic, key) not in held:
            with contextlib.suppress(whosthere.AlreadyTracked):  # a repeat: it took effect
                _retry(presence.track, pid, topic, key, meta)
            held[(topic, key)] = version
        elif rng.random() < 0.5:
            try:
                _retry(presence.update, pid, topic, key, meta)
            except whosthere.NotTracked:  # it was tracked: the node lost it
                surprises.append(f"update of lost {topic} {key}")
                del held[(topic, key)]
                continue
            held[(topic, key)] = version
        else:
            _retry(presence.untrack, pid, topic, key)
            del held[(topic, key)]
        time.sleep(rng.uniform(0, 0.01))


@dataclass
class Owner:
    ident: int
    proc: multiprocessing.process.BaseProcess
    conn: Connection


# -- the subscriber's view -------------------------------------------------------------------


class View(threading.Thread):
    """What a subscriber knows, from diffs and resyncs: {(topic, key, owner, version)}."""

    def __init__(self, node: whosthere.Node) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.lock = threading.Lock()
        self.metas: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TOPICS}  # by ref
        self.lost = 0  # MessagesLost heard
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.node.pubsub.subscribe(*TOPICS) as sub:
                self._resync()
                self.ready.set()
                while not self.stopping.is_set():
                    try:
                        msg = sub.get(timeout=0.1)
                    except whosthere.MessagesLost:
                        self.lost += 1
                        self._resync()
                        continue
                    if msg is not None and msg.event == "presence_diff":
                        self._apply(msg.topic, msg.payload)
        except BaseException as exc:  # reported by the checker
            self.error = exc
            self.ready.set()

    def _apply(self, topic: str, diff: dict[str, Any]) -> None:
        with self.lock:
            held = self.metas[topic]
            for entry in diff["leaves"].values():
                for meta in entry["metas"]:
                    held.pop(meta["phx_ref"], None)
            for key, entry in diff["joins"].items():
                for meta in entry["metas"]:
                    held[meta["phx_ref"]] = {**meta, "_key": key}

    def _resync(self) -> None:
        for topic in TOPICS:
            listed = _retry(self.node.presence.list, topic)
            with self.lock:
                self.metas[topic] = {
                    m["phx_ref"]: {**m, "_key": key}
                    for key, entry in listed.items()
                    for m in entry["metas"]
                }

    def snapshot(self) -> Truth:
        with self.lock:
            return {
                (t, m["_key"], m["o"], m["v"])
                for t, held in self.metas.items()
                for m in held.values()
            }


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Report:
    kills: dict[str, int] = field(default_factory=dict)
    owner_kills: int = 0
    converge_s: list[float] = field(default_factory=list)
    lost: int = 0
    phantom: int = 0
    view_wrong: int = 0  # checks at which the subscriber's view never matched list
    resyncs: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def survived(self) -> int:
        return sum(self.kills.values())


def listed(node: whosthere.Node) -> Truth:
    out: Truth = set()
    for topic in TOPICS:
        for key, entry in _retry(node.presence.list, topic).items():
            for m in entry["metas"]:
                out.add((topic, key, m["o"], m["v"]))
    return out


class Chaos:
    def __init__(
        self, node: whosthere.Node, owners: int, seed: int, others: tuple[whosthere.Node, ...] = ()
    ) -> None:
        self.node = node
        self.others = others  # nodes of the same cluster: they must list the same
        self.rng = random.Random(seed)
        self.ctx = multiprocessing.get_context("spawn")
        self.owners: list[Owner] = []
        self.next_ident = 0
        self.view = View(node)
        self.report = Report()
        for _ in range(owners):
            self._spawn_owner()

    def __enter__(self) -> Chaos:
        self.view.start()
        self.view.ready.wait(30)
        if self.view.error is not None:
            raise self.view.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.view.stopping.set()
        self.view.join(10)
        for owner in self.owners:
            with contextlib.suppress(OSError):
                owner.conn.send("stop")
        for owner in self.owners:
            owner.proc.join(5)
            if owner.proc.is_alive():
                owner.proc.kill()
                owner.proc.join(5)
            owner.conn.close()

    def _spawn_owner(self) -> None:
        mine, theirs = self.ctx.Pipe()
        ident = self.next_ident
        self.next_ident += 1
        proc = self.ctx.Process(
            target=owner_main, args=(self.node.address, ident, theirs, self.rng.getrandbits(32))
        )
        proc.start()
        theirs.close()
        self.owners.append(Owner(ident, proc, mine))

    def actor_pid(self, name: str) -> int | None:
        for actor in _retry(self.node.status)["actors"]:
            if actor["name"] == name:
                return actor["pid"]
        return None

    def kill_actor(self, name: str) -> None:
        pid = self.actor_pid(name)
        assert pid is not None, name
        os.kill(pid, signal.SIGKILL)
        self.report.kills[name] = self.report.kills.get(name, 0) + 1

    def kill_owner(self) -> None:
        """SIGKILL a random owner (its presences must leave) and start a new one."""
        owner = self.owners.pop(self.rng.randrange(len(self.owners)))
        owner.proc.kill()
        owner.proc.join(5)
        owner.conn.close()
        self.report.owner_kills += 1
        self._spawn_owner()

    def check(self, since: float, timeout: float = 20.0) -> None:
        """Pause the owners and wait until list equals the truth and the view equals list."""
        for owner in self.owners:
            owner.conn.send("pause")
        truth: Truth = set()
        for owner in self.owners:
            if not owner.conn.poll(70):
                raise AssertionError(f"owner {owner.ident} did not pause")
            held, surprises = owner.conn.recv()
            truth |= {tuple(x) for x in held}  # type: ignore[misc]
            self.report.lost += len(surprises)
            self.report.failures += surprises
        deadline = time.monotonic() + timeout
        now_listed: Truth = set()
        while time.monotonic() < deadline:
            now_listed = listed(self.node)
            if (
                now_listed == truth
                and self.view.snapshot() == now_listed
                and all(listed(other) == truth for other in self.others)
            ):
                self.report.converge_s.append(time.monotonic() - since)
                break
            time.sleep(0.02)
        else:
            lost, phantom = truth - now_listed, now_listed - truth
            self.report.lost += len(lost)
            self.report.phantom += len(phantom)
            view = self.view.snapshot()
            if view != now_listed:
                self.report.view_wrong += 1
            for other in self.others:
                elsewhere = listed(other)
                if elsewhere != truth:
                    self.report.failures.append(
                        f"{other.name} lists {sorted(elsewhere ^ truth)[:5]} unlike the truth"
                    )
            self.report.failures.append(
                f"after {time.monotonic() - since:.1f} s: lost {sorted(lost)[:5]} "
                f"phantom {sorted(phantom)[:5]} view-list {sorted(view - now_listed)[:5]} "
                f"list-view {sorted(now_listed - view)[:5]}"
            )
        self.report.resyncs = self.view.lost
        if self.view.error is not None:
            raise self.view.error
        for owner in self.owners:
            owner.conn.send("resume")
