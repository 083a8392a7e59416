"""Phoenix's W-P shape on `whosthere.aio`, with each process's CPU per call.

The shape of Phoenix's own presence bench (and of `phx_bench.exs wp` in the shared harness):
100,000 owners with one presence each (topics `t:1`..`t:100`, keys `u:<g>`), 1,000 concurrent
callers each making its 100 owners' calls one after the other; phases track, update,
untrack/4 (`untrack(owner, topic, key)`), re-track, untrack/2 (`untrack(owner)`), each over
every owner.

Here the callers are asyncio tasks, in one client process (1 x 1,000) or split over four
(4 x 250, owners split too: four web workers, which is how users deploy). A phase's rate is
counted to its last diff at a subscriber process on the 100 topics (`*_to_last_diff`), as
Phoenix sends its diffs inside the call. Each role's CPU (client processes, shards, PubSub
actor, supervisor, the subscriber) is read from /proc around each phase and given per call:
what a call costs, and where.

    python bench/wp_workload.py POOL [--procs P] [--n N] [--callers C]   # RESULT lines
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

import whosthere
import whosthere.aio

CTX = multiprocessing.get_context("spawn")
PHASES = ("track", "update", "untrack4", "retrack", "untrack2")
TIMEOUT = 60.0


def wp_topic(g: int) -> str:
    return f"t:{g % 100 + 1}"


def expected(phase: str, n: int) -> tuple[int, int]:
    """(joins, leaves) the subscriber has seen, in metas, once `phase` is done."""
    totals = {
        "track": (n, 0),
        "update": (2 * n, n),  # an update is a leave and a join
        "untrack4": (2 * n, 2 * n),
        "retrack": (3 * n, 2 * n),
        "untrack2": (3 * n, 3 * n),
    }
    return totals[phase]


# -- the subscriber ------------------------------------------------------------------------


def _subscriber_main(address: str, conn: Any) -> None:
    """Counts joins and leaves; answers (joins, leaves) wanted with the time they were all in."""
    pubsub = whosthere.PubSub.connect(address, timeout=TIMEOUT)
    sub = pubsub.subscribe(*(f"t:{t}" for t in range(1, 101)))
    conn.send("ready")
    joins = leaves = lost = 0
    last = 0
    waiting: list[tuple[int, int]] = []
    while True:
        try:
            msg = sub.get(timeout=0.02)
        except whosthere.MessagesLost:
            lost += 1
            msg = None
        if msg is not None and msg.event == "presence_diff":
            joins += sum(len(v["metas"]) for v in msg.payload["joins"].values())
            leaves += sum(len(v["metas"]) for v in msg.payload["leaves"].values())
            last = time.monotonic_ns()
        if msg is None and conn.poll(0):
            wanted = conn.recv()
            if wanted == "exit":
                break
            waiting.append(wanted)
        if msg is None or not waiting:
            still = []
            for want_j, want_l in waiting:
                if joins >= want_j and leaves >= want_l:
                    conn.send((last, lost))
                else:
                    still.append((want_j, want_l))
            waiting = still
    sub.close()
    pubsub.close()


# -- a client process ----------------------------------------------------------------------


async def _client(address: str, first: int, count: int, callers: int, conn: Any) -> None:
    presence = await whosthere.aio.connect(address, timeout=TIMEOUT)
    owners = [presence.owner() for _ in range(count)]
    per = count // callers
    loop = asyncio.get_running_loop()

    async def caller(ci: int, phase: str) -> None:
        for i in range(ci * per, ci * per + per):
            g = first + i
            owner = owners[i]
            if phase in ("track", "retrack"):
                await presence.track(owner, wp_topic(g), f"u:{g}", {"status": "online", "n": g})
            elif phase == "update":
                await presence.update(owner, wp_topic(g), f"u:{g}", {"status": "away", "n": g})
            elif phase == "untrack4":
                await presence.untrack(owner, wp_topic(g), f"u:{g}")
            else:
                await presence.untrack(owner)

    conn.send("ready")
    while True:
        phase = await loop.run_in_executor(None, conn.recv)
        if phase == "exit":
            break
        t0 = time.monotonic_ns()
        await asyncio.gather(*(caller(ci, phase) for ci in range(callers)))
        conn.send((t0, time.monotonic_ns()))
    await presence.close()


def _client_main(address: str, first: int, count: int, callers: int, conn: Any) -> None:
    asyncio.run(_client(address, first, count, callers, conn))


# -- the run -------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    calls: int
    seconds: float  # first call sent to last reply, over every client process
    to_last_diff: float  # first call sent to the last diff at the subscriber
    cpu_us: dict[str, float] = field(default_factory=dict)  # role -> CPU us per call
    diffs: int = 0  # diffs the shards published
    switches: dict[str, float] = field(default_factory=dict)  # role -> context switches per call

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def rate_to_last_diff(self) -> float:
        return self.calls / self.to_last_diff


def _cpu(procs: dict[str, list[psutil.Process]]) -> dict[str, tuple[float, int]]:
    """Each role's (CPU seconds, context switches) so far."""
    out = {}
    for role, members in procs.items():
        total, switches = 0.0, 0
        for p in members:
            try:
                t, c = p.cpu_times(), p.num_ctx_switches()
            except psutil.Error:
                continue
            total += t.user + t.system
            switches += c.voluntary + c.involuntary
        out[role] = (total, switches)
    return out


def run(pool: int, procs: int = 1, n: int = 100_000, callers: int = 1_000) -> list[Phase]:
    """One fresh node; the five phases of W-P; what each cost."""
    if n % procs or callers % procs or (n // procs) % (callers // procs):
        raise ValueError("owners and callers must split evenly over the client processes")
    with whosthere.Node(pool_size=pool) as node:
        roles: dict[str, list[psutil.Process]] = {"client": [], "shard": [], "pubsub": []}
        for actor in node.status()["actors"]:
            kind = actor["name"].split(".")[0]
            if kind in roles:
                roles[kind].append(psutil.Process(actor["pid"]))
        roles["supervisor"] = [psutil.Process(node.pid)]
        sub_conn, child = CTX.Pipe()
        subscriber = CTX.Process(target=_subscriber_main, args=(node.address, child))
        subscriber.start()
        clients: list[tuple[Any, Any]] = []
        try:
            if not sub_conn.poll(TIMEOUT):
                raise RuntimeError("the subscriber did not start")
            sub_conn.recv()
            roles["subscriber"] = [psutil.Process(subscriber.pid)]
            share = n // procs
            for k in range(procs):
                conn, child = CTX.Pipe()
                proc = CTX.Process(
                    target=_client_main,
                    args=(node.address, k * share, share, callers // procs, child),
                )
                proc.start()
                clients.append((proc, conn))
            for proc, conn in clients:
                if not conn.poll(TIMEOUT):
                    raise RuntimeError("a client process did not start")
                conn.recv()
                roles["client"].append(psutil.Process(proc.pid))
            return [_phase(name, n, clients, sub_conn, roles=roles, node=node) for name in PHASES]
        finally:
            for proc, conn in clients:
                if proc.is_alive():
                    conn.send("exit")
            for proc, _ in clients:
                proc.join(TIMEOUT)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            if subscriber.is_alive():
                sub_conn.send("exit")
                subscriber.join(TIMEOUT)
                if subscriber.is_alive():
                    subscriber.kill()
                    subscriber.join()


def _diffs(node: whosthere.Node) -> int:
    actors = node.status()["actors"]
    return sum(a["stats"]["diffs"] for a in actors if a["name"].startswith("shard."))


def _phase(
    name: str,
    n: int,
    clients: list[tuple[Any, Any]],
    sub_conn: Any,
    *,
    roles: dict[str, Any],
    node: whosthere.Node,
) -> Phase:
    diffs = _diffs(node)
    before = _cpu(roles)
    for _, conn in clients:
        conn.send(name)
    spans = []
    for _, conn in clients:
        if not conn.poll(600):
            raise RuntimeError(f"a client process never finished {name}")
        spans.append(conn.recv())
    sub_conn.send(expected(name, n))
    if not sub_conn.poll(600):
        raise RuntimeError(f"the subscriber never saw {name}'s diffs")
    last, lost = sub_conn.recv()
    if lost:
        raise RuntimeError(f"the subscriber lost messages during {name} ({lost} gaps)")
    after = _cpu(roles)
    t0, t1 = min(s[0] for s in spans), max(s[1] for s in spans)
    cpu = {role: (after[role][0] - before[role][0]) * 1e6 / n for role in roles}
    switches = {role: (after[role][1] - before[role][1]) / n for role in roles}
    seconds, to_last_diff = (t1 - t0) / 1e9, (max(t1, last) - t0) / 1e9
    return Phase(name, n, seconds, to_last_diff, cpu, _diffs(node) - diffs, switches)


# -- rows for bench/run.py -------------------------------------------------------------------

SHAPES = ((1, 1), (1, 4), (2, 1), (2, 4))  # (pool_size, client processes)
LABELS = (("track", "tracks"), ("update", "updates"), ("untrack4", "untracks"))


def bench_wp(sizes: Any) -> list[Any]:
    """W-P at pool 1 and 2, from one client process (1,000 tasks) and from four (4 x 250):
    each rate to the last diff, its CPU per call, and the ratio that tells whether more
    shards or more client processes help (pool 2 to pool 1, four processes to one)."""
    from common import Row, median_spread, progress

    n, callers = (100_000, 1_000) if sizes.owners >= 1_000 else (10_000, 100)
    runs: dict[tuple[int, int], list[dict[str, Phase]]] = {shape: [] for shape in SHAPES}
    for rep in range(sizes.reps):  # shapes interleaved: the machine's drift hits them alike
        for pool, procs in SHAPES:
            progress(f"W-P pool {pool}, {procs} client process(es), rep {rep + 1}/{sizes.reps}")
            runs[(pool, procs)].append({p.name: p for p in run(pool, procs, n, callers)})
    rows = []
    for pool, procs in SHAPES:
        against = (pool - 1, procs) if pool == 2 else (pool, 1) if procs == 4 else None
        for name, label in LABELS:
            value, spread = median_spread([r[name].rate_to_last_diff for r in runs[(pool, procs)]])
            cpu = runs[(pool, procs)][-1][name].cpu_us
            if against is None:
                baseline, ratio = "", None
            else:
                base = statistics.median(r[name].rate_to_last_diff for r in runs[against])
                baseline = f"pool {against[0]}, {against[1]} proc(s)"
                ratio = value / base
            rows.append(
                Row(
                    "wp",
                    f"pool {pool}, {procs} x {callers // procs} tasks: {label}/s to last diff",
                    value,
                    "/s",
                    f"{spread}; CPU us/call client {cpu['client']:.1f} shard {cpu['shard']:.1f}"
                    f" pubsub {cpu['pubsub']:.1f} sub {cpu['subscriber']:.1f}",
                    baseline,
                    ratio,
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pool", type=int)
    ap.add_argument("--procs", type=int, default=1, help="client processes (callers split)")
    ap.add_argument("--n", type=int, default=100_000, help="owners, one presence each")
    ap.add_argument("--callers", type=int, default=1_000, help="concurrent callers in all")
    a = ap.parse_args()
    for phase in run(a.pool, a.procs, a.n, a.callers):
        print(f"RESULT {phase.name}_per_s {phase.rate:.3f}")
        print(f"RESULT {phase.name}_per_s_to_last_diff {phase.rate_to_last_diff:.3f}")
        cpu = " ".join(f"{role}={us:.1f}" for role, us in phase.cpu_us.items())
        switches = " ".join(f"{role}={k:.3f}" for role, k in phase.switches.items())
        print(f"# {phase.name}: CPU us per call: {cpu}; diffs {phase.diffs:,}", flush=True)
        print(f"# {phase.name}: context switches per call: {switches}", flush=True)


if __name__ == "__main__":
    main()
