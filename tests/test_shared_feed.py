"""Subscriptions of one process share one node subscription, and idle ones cost nothing
(DESIGN section 12, "Idle costs nothing"), on a real node: the sync client's reader thread
and the asyncio client's loop feed alike."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import psutil
import pytest

import whosthere
import whosthere.aio
from tests.support.nodes import actor_pid, alive
from tests.support.waiting import wait_until

TOPICS = [f"room:{i}" for i in range(10)]


def node_subscriptions(node: whosthere.Node) -> int:
    """How many node subscriptions (SUB sockets with their mailbox) the PubSub actor has."""
    for actor in node.status()["actors"]:
        if actor["name"] == "pubsub":
            return int(actor["stats"]["subscribers"])
    raise AssertionError("no pubsub actor in the status")


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def test_sync_subscriptions_of_a_process_share_one_node_subscription():
    with whosthere.Node() as node:
        presence = node.presence
        subs = [presence.subscribe(TOPICS[i % 10]) for i in range(100)]
        try:
            wait_until(lambda: node_subscriptions(node) == 1, what="one node subscription")
            presence.track(os.getpid(), "room:3", "alice", {"n": 1})
            for i, sub in enumerate(subs):
                if i % 10 == 3:
                    msg = sub.get(timeout=5)
                    assert msg is not None and msg.event == "presence_diff"
                    assert list(msg.payload["joins"]) == ["alice"]
                else:
                    assert sub.get(timeout=0) is None
        finally:
            for sub in subs:
                sub.close()
        wait_until(lambda: node_subscriptions(node) == 0, what="the node subscription gone")
        assert not [t for t in threading.enumerate() if t.name == "whosthere-feed"]


def test_idle_sync_readers_sleep_and_all_hear_the_nodes_end():
    node = whosthere.Node().start()
    try:
        subs = [node.pubsub.subscribe(TOPICS[i % 10]) for i in range(50)]
        outcomes: list[BaseException | None] = []

        def read(sub: whosthere.Subscription) -> None:
            try:
                sub.get()  # no deadline: wakes only when something comes
                outcomes.append(None)
            except whosthere.NodeUnavailable as exc:
                outcomes.append(exc)

        readers = [threading.Thread(target=read, args=(s,)) for s in subs]
        for r in readers:
            r.start()
        before, t0 = cpu_seconds(), time.monotonic()
        time.sleep(1.0)  # measuring idle CPU: the wait is the measurement
        used = (cpu_seconds() - before) / (time.monotonic() - t0)
        assert used < 0.05, f"50 idle readers used {used:.1%} of a core"
        os.kill(node.pid, signal.SIGKILL)
        for r in readers:
            r.join(5)
        assert len(outcomes) == 50
        assert all(isinstance(o, whosthere.NodeUnavailable) for o in outcomes)
        assert subs[0].get(timeout=0.1) is None  # once; then it can be read on (DESIGN 12)
        for sub in subs:
            sub.close()
    finally:
        node.stop()


def test_a_thousand_idle_asyncio_subscriptions_share_one_node_subscription_and_cost_nothing():
    async def main(node: whosthere.Node) -> None:
        presence = await whosthere.aio.connect(node.address)
        async with presence:
            subs = [presence.subscribe(TOPICS[i % 10]) for i in range(1000)]
            for sub in subs:
                await sub.open()
            got: list[int] = []

            async def read(i: int, sub: whosthere.aio.AsyncSubscription) -> None:
                async for msg in sub:
                    if msg.event == "presence_diff" and msg.payload["joins"]:
                        got.append(i)

            tasks = [asyncio.create_task(read(i, s)) for i, s in enumerate(subs)]
            await asyncio.sleep(0.2)  # every reader waiting
            assert node_subscriptions(node) == 1
            before, t0 = cpu_seconds(), time.monotonic()
            await asyncio.sleep(1.0)  # measuring idle CPU: the wait is the measurement
            used = (cpu_seconds() - before) / (time.monotonic() - t0)
            assert used < 0.05, f"1,000 idle subscriptions used {used:.1%} of a core"
            async with presence.owner() as tab:
                await presence.track(tab, "room:7", "bob", {})
                deadline = time.monotonic() + 5
                while len(got) < 100 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            assert sorted(got) == [i for i in range(1000) if i % 10 == 7]
            for task in tasks:
                task.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(d, asyncio.CancelledError) for d in done)
            for sub in subs:
                sub.close()
        wait_until(lambda: node_subscriptions(node) == 0, what="the node subscription gone")

    with whosthere.Node() as node:
        asyncio.run(main(node))


@pytest.mark.parametrize("client", ["sync", "asyncio"])
def test_idle_members_hear_a_pubsub_restart_within_a_second(client: str):
    with whosthere.Node() as node:
        old = actor_pid(node, "pubsub")

        def restart() -> float:
            os.kill(old, signal.SIGKILL)
            wait_until(lambda: alive({actor_pid(node, "pubsub")}) - {old}, what="pubsub back")
            return time.monotonic()

        if client == "sync":
            subs = [node.pubsub.subscribe(TOPICS[i % 3]) for i in range(6)]
            ready = restart()
            for sub in subs:
                with pytest.raises(whosthere.MessagesLost, match="restarted"):
                    sub.get(timeout=5)
                assert time.monotonic() - ready < 1.0
                node.pubsub.broadcast(sub.topics[0], "after", 1)
                assert sub.get(timeout=5) == whosthere.Message(sub.topics[0], "after", 1)
                sub.close()
            return

        async def main() -> None:
            pubsub = await whosthere.aio.connect_pubsub(node.address)
            async with pubsub:
                subs = [await pubsub.subscribe(TOPICS[i % 3]).open() for i in range(6)]
                ready = await asyncio.to_thread(restart)
                for sub in subs:
                    with pytest.raises(whosthere.MessagesLost, match="restarted"):
                        await sub.get(timeout=5)
                    assert time.monotonic() - ready < 1.0
                    await pubsub.broadcast(sub.topics[0], "after", 1)
                    assert await sub.get(timeout=5) == whosthere.Message(sub.topics[0], "after", 1)
                    sub.close()

        asyncio.run(main())
