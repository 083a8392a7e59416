"""Idle subscriptions: what a web worker's thousand idle subscriptions cost, and how soon
they still hear of a gap (DESIGN section 12, "Idle costs nothing"; section 4, "within 1 s").

A worker process holds N subscriptions over 10 topics, each read by its own task (asyncio,
`async for`) or thread (sync, `get()`), and nothing is published. Its CPU use over a few
seconds is the figure, beside the same process holding one subscription (the baseline).
Then the PubSub actor is SIGKILLed: the time from its successor being up to the last reader
hearing `MessagesLost` is the gap notice.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import psutil
from common import Row, Sizes, progress
from runtime_workloads import with_node

import whosthere
import whosthere.aio

TOPICS = 10
IDLE_SECONDS = 3.0


def _cpu() -> float:
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def _measure_idle(conn: Any) -> None:
    """Tell the parent we are ready, measure our CPU over IDLE_SECONDS, send it."""
    conn.send("ready")
    cpu0, t0 = _cpu(), time.monotonic()
    time.sleep(IDLE_SECONDS)  # the measurement: nothing should run meanwhile
    conn.send((_cpu() - cpu0) / (time.monotonic() - t0))


def _aio_worker(address: str, count: int, conn: Any) -> None:
    async def main() -> None:
        presence = await whosthere.aio.connect(address, timeout=30)
        async with presence:
            subs = [await presence.subscribe(f"idle:{i % TOPICS}").open() for i in range(count)]
            heard: list[float] = []

            async def read(sub: whosthere.aio.AsyncSubscription) -> None:
                try:
                    async for _ in sub:
                        pass
                except whosthere.MessagesLost:
                    heard.append(time.monotonic())

            tasks = [asyncio.create_task(read(s)) for s in subs]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(_measure_idle, conn)
            deadline = time.monotonic() + 10
            while len(heard) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            conn.send(max(heard) if len(heard) == count else None)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sub in subs:
                sub.close()

    asyncio.run(main())


def _sync_worker(address: str, count: int, conn: Any) -> None:
    pubsub = whosthere.PubSub.connect(address, timeout=30)
    subs = [pubsub.subscribe(f"idle:{i % TOPICS}") for i in range(count)]
    heard: list[float] = []

    def read(sub: whosthere.Subscription) -> None:
        try:
            sub.get(timeout=30)
        except whosthere.MessagesLost:
            heard.append(time.monotonic())

    threads = [threading.Thread(target=read, args=(s,), daemon=True) for s in subs]
    for t in threads:
        t.start()
    time.sleep(0.5)
    _measure_idle(conn)
    for t in threads:
        t.join(10)
    conn.send(max(heard) if len(heard) == count else None)
    for sub in subs:
        sub.close()
    pubsub.close()


def _run(node: whosthere.Node, target: Any, count: int) -> tuple[float, float | None]:
    """(CPU share of a core while idle, seconds from the PubSub's return to the last
    reader's `MessagesLost`)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(node.address, count, child))
    proc.start()
    try:
        if not parent.poll(120) or parent.recv() != "ready":
            raise TimeoutError("the idle worker did not get ready")
        if not parent.poll(IDLE_SECONDS + 30):
            raise TimeoutError("the idle worker did not report its CPU")
        cpu = parent.recv()
        old = _pubsub_pid(node)
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            new = _pubsub_pid(node)
            if new != old and psutil.pid_exists(new):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the PubSub actor did not come back")
            time.sleep(0.005)
        back = time.monotonic()
        last = parent.recv() if parent.poll(30) else None
        return cpu, None if last is None else max(0.0, last - back)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _pubsub_pid(node: whosthere.Node) -> int:
    for actor in node.status()["actors"]:
        if actor["name"] == "pubsub":
            return int(actor["pid"])
    raise LookupError("no pubsub actor")


@with_node
def bench_idle(node: whosthere.Node, sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    for label, target, counts in (
        ("asyncio", _aio_worker, (1, 1_000)),
        ("sync", _sync_worker, (1, 100)),
    ):
        base: float | None = None
        for count in counts:
            progress(f"{count:,} idle {label} subscription(s) over {min(count, TOPICS)} topic(s)")
            cpu, notice = _run(node, target, count)
            if base is None:
                base = cpu
                rows.append(Row("idle", f"{label}: 1 idle subscription, CPU", cpu * 100, "%"))
            else:
                rows.append(
                    Row(
                        "idle",
                        f"{label}: {count:,} idle subscriptions, CPU",
                        cpu * 100,
                        "%",
                        baseline="1 subscription",
                        ratio=cpu / base if base > 0 else None,
                    )
                )
            if notice is not None:
                heard = f"  {label}: PubSub restart heard by all {count:,}"
                rows.append(Row("idle", heard, notice * 1000, "ms"))
            else:
                rows.append(Row("idle", f"  {label}: PubSub restart NOT heard by all", 0, "ms"))
    return rows
