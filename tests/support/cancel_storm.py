"""Cancel readers under a storm of messages, with the public API alone; prints one JSON line.

Run by `tests/test_cancel.py` under each Python it finds (asyncio's cancel rules changed
between 3.11 and 3.12): `python cancel_storm.py ADDRESS SUB_READERS LINK_READERS INTERRUPTS`.
Every count in the output is of readers that did not stop as they were told; all must be 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import whosthere
import whosthere.aio

STOP_WITHIN = 5.0  # seconds a cancelled reader has to end
ROUND = 100  # readers cancelled in one round


async def _settle(tasks: list[asyncio.Task[None]]) -> dict[str, int]:
    """How the cancelled tasks ended, once each had `STOP_WITHIN` seconds."""
    deadline = time.monotonic() + STOP_WITHIN
    while time.monotonic() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.02)
    counts = {"kept_running": 0, "not_cancelled": 0}
    for task in tasks:
        if not task.done():
            counts["kept_running"] += 1
        elif not task.cancelled():
            counts["not_cancelled"] += 1  # ended some other way: the cancel was not seen
    return counts


async def _cancel_each(tasks: list[asyncio.Task[None]], after: float) -> None:
    """Cancel the readers one at a time, at varied moments of the storm."""
    await asyncio.sleep(after)
    for task in tasks:
        task.cancel()
        await asyncio.sleep(random.choice((0, 0, 0.0005, 0.002)))


async def subscriptions(address: str, readers: int) -> dict[str, int]:
    """`async for msg in sub` readers cancelled while messages pour in."""
    pubsub = await whosthere.aio.connect_pubsub(address)
    totals = {"kept_running": 0, "not_cancelled": 0, "messages": 0}

    async def storm(until: asyncio.Task[None]) -> None:
        while not until.done():
            await pubsub.broadcast("storm", "tick", {"n": 1})
            await asyncio.sleep(0)

    async def read(sub: whosthere.aio.AsyncSubscription, timeout: float | None) -> None:
        while True:  # a loss (the storm outruns the readers) is not the point here
            with contextlib.suppress(whosthere.MessagesLost):
                if timeout is None:
                    async for _ in sub:
                        totals["messages"] += 1
                elif await sub.get(timeout) is not None:
                    totals["messages"] += 1

    try:
        for start in range(0, readers, ROUND):
            subs = [pubsub.subscribe("storm") for _ in range(min(ROUND, readers - start))]
            for sub in subs:
                await sub.open()
            timeouts = [None if i % 2 else 0.05 for i in range(len(subs))]
            tasks = [asyncio.create_task(read(s, t)) for s, t in zip(subs, timeouts, strict=True)]
            cancelling = asyncio.create_task(_cancel_each(tasks, after=0.02))
            await storm(cancelling)
            for key, n in (await _settle(tasks)).items():
                totals[key] += n
            for sub in subs:
                sub.close()  # a reader that kept running ends on the closed subscription
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await pubsub.close()
    return totals


async def _kill_in_turn(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        await asyncio.sleep(0)


async def links(address: str, readers: int) -> dict[str, int]:
    """`AsyncLinks` readers cancelled while linked processes exit around them."""
    totals = {"kept_running": 0, "not_cancelled": 0, "exits": 0}
    per_reader = 4
    for start in range(0, readers, ROUND // 4):
        count = min(ROUND // 4, readers - start)
        sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(count * per_reader)]
        watchers = [whosthere.aio.links(address) for _ in range(count)]
        tasks: list[asyncio.Task[None]] = []
        try:
            for i, watcher in enumerate(watchers):
                chunk = sleepers[i * per_reader : (i + 1) * per_reader]
                await watcher.link_many([p.pid for p in chunk])

            async def read(watcher: whosthere.aio.AsyncLinks, timeout: float | None) -> None:
                if timeout is None:
                    async for _ in watcher:
                        totals["exits"] += 1
                else:
                    while True:
                        if await watcher.get(timeout) is not None:
                            totals["exits"] += 1

            tasks = [
                asyncio.create_task(read(w, None if i % 2 else 0.05))
                for i, w in enumerate(watchers)
            ]
            order = list(range(len(sleepers)))
            random.shuffle(order)

            killing = asyncio.create_task(_kill_in_turn([sleepers[i] for i in order]))
            await _cancel_each(tasks, after=0.01)
            await killing
            for key, n in (await _settle(tasks)).items():
                totals[key] += n
        finally:
            for watcher in watchers:
                await watcher.close()  # a reader that kept running ends on the closed links
            await asyncio.gather(*tasks, return_exceptions=True)
            for proc in sleepers:
                proc.kill()
                proc.wait()
    return totals


def _interrupted(read: Callable[[], object], rounds: int) -> int:
    """Rounds whose Ctrl-C (SIGINT to this thread) did not stop `read`."""
    main = threading.get_ident()
    missed = 0
    for _ in range(rounds):
        done = threading.Event()

        def watchdog(done: threading.Event = done) -> None:
            if not done.wait(STOP_WITHIN):
                print(json.dumps({"error": "a sync reader ignored Ctrl-C"}), flush=True)
                os._exit(3)

        def fire(delay: float = random.uniform(0.001, 0.02)) -> None:
            time.sleep(delay)
            signal.pthread_kill(main, signal.SIGINT)

        firing = threading.Thread(target=fire)
        threading.Thread(target=watchdog, daemon=True).start()
        try:
            firing.start()
            read()
            missed += 1  # returned instead of raising: the interrupt was swallowed
        except KeyboardInterrupt:
            pass
        firing.join()  # it fired: the KeyboardInterrupt came
        done.set()
    return missed


def sync_readers(address: str, rounds: int) -> dict[str, int]:
    """A thread blocked in `for msg in sub` (or in `links.get()`) stops on Ctrl-C."""
    running = threading.Event()
    running.set()

    def storm() -> None:
        with whosthere.PubSub.connect(address) as pubsub:
            while running.is_set():
                pubsub.broadcast("sync-storm", "tick", {"n": 1})

    stormer = threading.Thread(target=storm)
    stormer.start()
    try:
        with whosthere.PubSub.connect(address) as pubsub, pubsub.subscribe("sync-storm") as sub:

            def read_sub() -> None:
                while True:  # a loss (the storm outruns this reader) is not the point here
                    with contextlib.suppress(whosthere.MessagesLost):
                        for _ in sub:
                            pass

            missed_sub = _interrupted(read_sub, rounds)
        with whosthere.Links(address) as watcher:
            missed_links = _interrupted(lambda: list(watcher), rounds // 2)
    finally:
        running.clear()
        stormer.join()
    return {"subscription_missed": missed_sub, "links_missed": missed_links}


def main() -> None:
    # Ctrl-C raises KeyboardInterrupt even when started from a shell's background job, which
    # hands its children SIGINT ignored (Python then installs no handler of its own)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    address, sub_readers, link_readers, interrupts = sys.argv[1], *map(int, sys.argv[2:5])
    random.seed(os.getpid())
    result: dict[str, object] = {"python": sys.version.split()[0]}

    started = time.monotonic()
    result["subscriptions"] = asyncio.run(subscriptions(address, sub_readers))
    result["links"] = asyncio.run(links(address, link_readers))
    result["sync"] = sync_readers(address, interrupts)
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
