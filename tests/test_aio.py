"""`whosthere.aio`: the presence API as coroutines (DESIGN section 6), on a real node.

Each test runs its own event loop (`asyncio.run`): no plugin, and the loop is gone after.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import whosthere
import whosthere.aio
from whosthere.transport import codec
from whosthere.transport.messages import Calls, GetByKey, ListTopic, Track
from whosthere.transport.sockets import Dealer


class Enriched(whosthere.Presence):
    async def fetch(self, topic, presences):  # an async def runs on the caller's loop
        await asyncio.sleep(0)
        return {k: {**v, "seen": True} for k, v in presences.items()}


def test_the_presence_api_as_coroutines():
    async def main(address: str) -> None:
        presence = await Enriched.connect_async(address)
        async with presence:
            async with presence.owner() as tab1, presence.owner() as tab2:
                await presence.track(tab1, "room", "alice", {"tab": 1})
                await presence.track(whosthere.Channel(tab2, "room"), "alice", {"tab": 2})
                with pytest.raises(whosthere.AlreadyTracked):
                    await presence.track(tab1, "room", "alice", {"tab": 1})
                listed = await presence.list("room")
                assert listed["alice"]["seen"] is True
                assert sorted(m["tab"] for m in listed["alice"]["metas"]) == [1, 2]

                async def typing(meta):  # the callable may be an async def too
                    return {**meta, "typing": True}

                await presence.update(tab1, "room", "alice", typing)
                entry = await presence.get_by_key("room", "alice")
                assert sorted(m.get("typing", False) for m in entry["metas"]) == [False, True]
                with pytest.raises(whosthere.NotTracked):
                    await presence.update(tab1, "room", "bob", {})
                refs = await presence.track_many([(tab2, f"t{i}", "k", {}) for i in range(50)])
                assert len(set(refs)) == 50
                await tab2.close()
                assert [m["tab"] for m in (await presence.list("room"))["alice"]["metas"]] == [1]
                assert await presence.get_by_key("t3", "k") is None
            assert await presence.list("room") == {}
            assert len(await presence.fetchers_pids()) == 2

    with whosthere.Node(pool_size=2) as node:
        asyncio.run(main(node.address))


def test_a_thousand_concurrent_calls_share_one_connection():
    async def main(address: str) -> float:
        presence = await whosthere.aio.connect(address)
        async with presence:
            owners = [presence.owner() for _ in range(1_000)]
            t0 = time.perf_counter()
            refs = await asyncio.gather(*(presence.track(o, "crowd", "k", {}) for o in owners))
            elapsed = time.perf_counter() - t0
            assert len(set(refs)) == 1_000
            assert len((await presence.list("crowd"))["k"]["metas"]) == 1_000
            await asyncio.gather(*(o.close() for o in owners))
            assert await presence.list("crowd") == {}
            return elapsed

    with whosthere.Node() as node:
        elapsed = asyncio.run(main(node.address))
    assert elapsed < 30  # a smoke check: pipelined, 1,000 calls take well under a second


def test_a_cancelled_or_timed_out_call_never_hands_its_reply_to_a_later_one():
    async def main(address: str) -> None:
        presence = await whosthere.aio.connect(address)
        async with presence:
            me = presence.owner()
            for i in range(20):
                await presence.track(me, "keys", f"k{i}", {"i": i})
            rnd = random.Random(7)
            for round_ in range(200):
                doomed = asyncio.create_task(presence.get_by_key("keys", f"k{round_ % 20}"))
                for _ in range(rnd.randrange(3)):  # cancelled before, during or after sending
                    await asyncio.sleep(0)
                doomed.cancel()
                j = rnd.randrange(20)
                entry = await presence.get_by_key("keys", f"k{j}")
                assert entry["metas"][0]["i"] == j, (round_, j, entry)
            for _ in range(20):  # a deadline too short to be met: NodeUnavailable, nothing left
                with pytest.raises(whosthere.NodeUnavailable):
                    await presence._shard("keys").call(GetByKey("keys", "k0"), timeout=1e-6)
                assert (await presence.get_by_key("keys", "k5"))["metas"][0]["i"] == 5

    with whosthere.Node() as node:
        asyncio.run(main(node.address))


def test_calls_in_flight_fail_at_once_when_the_node_dies():
    """Every connection watches the supervisor's pidfd (one reader per fd on the loop,
    shared): calls to both shards and a waiting subscription all end at once."""

    async def main(node: whosthere.Node) -> float:
        presence = await whosthere.aio.connect(node.address, timeout=30)
        try:
            me = presence.owner()
            topics = ["t0", "t1", "t2", "t3"]  # on both shards
            for topic in topics:
                await presence.track(me, topic, "k", {})
            async with presence.subscribe("quiet") as sub:  # nothing will be published on it

                async def forever(topic: str) -> None:
                    while True:
                        await presence.list(topic)

                t0 = time.monotonic()
                tasks = [asyncio.create_task(forever(t)) for t in topics]
                tasks.append(asyncio.create_task(sub.get()))
                await asyncio.sleep(0.05)
                os.killpg(node.pid, signal.SIGKILL)
                results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
                assert all(isinstance(r, whosthere.NodeUnavailable) for r in results), results
                return time.monotonic() - t0
        finally:
            await presence.close()

    node = whosthere.Node(pool_size=2).start()
    try:
        assert asyncio.run(main(node)) < 5  # not the 30 s timeout
    finally:
        node.stop()


def test_subscribe_and_broadcast_as_coroutines():
    async def main(address: str) -> None:
        presence = await whosthere.aio.connect(address)
        pubsub = await whosthere.aio.connect_pubsub(address)
        try:
            async with presence.subscribe("room") as sub, pubsub.subscribe("news", "room") as both:
                me = presence.owner()
                await presence.track(me, "room", "alice", {"v": 1})
                diff = (await sub.get(timeout=5)).payload
                assert list(diff["joins"]) == ["alice"]
                for n in range(100):
                    await pubsub.broadcast("news", "msg", {"n": n})
                got = []
                async for msg in both:  # the join, then the news in order
                    got.append(msg.payload)
                    if len(got) == 101:
                        break
                assert got[0]["joins"]["alice"]["metas"][0]["v"] == 1
                assert [p["n"] for p in got[1:]] == list(range(100))
                assert await both.get(timeout=0.2) is None
                await me.close()
                assert list((await sub.get(timeout=5)).payload["leaves"]) == ["alice"]
        finally:
            await presence.close()
            await pubsub.close()

    with whosthere.Node() as node:
        asyncio.run(main(node.address))


def test_a_subscriber_that_overflows_hears_of_it_from_the_loop_too():
    async def main(address: str) -> int:
        pubsub = await whosthere.aio.connect_pubsub(address)
        flood = whosthere.PubSub.connect(address)
        try:
            async with pubsub.subscribe("flood", hwm=100) as sub:
                # broadcast with the loop held (a blocking client): nothing reads meanwhile,
                # so the subscription overflows for sure. With `await broadcast`, a send that
                # waited for room let the loop read on, and a run could keep up: no loss.
                for n in range(20_000):
                    flood.broadcast("flood", "n", n)
                received, lost = 0, 0
                while True:
                    try:
                        msg = await sub.get(timeout=1.0)
                    except whosthere.MessagesLost:
                        lost += 1
                        continue
                    if msg is None:
                        break
                    received += 1
                assert lost >= 1 and received + sub.missed == 20_000
                return received
        finally:
            flood.close()
            await pubsub.close()

    with whosthere.Node(pubsub_hwm=100) as node:
        assert asyncio.run(main(node.address)) < 20_000


def test_calls_of_one_turn_share_a_frame_and_keep_their_own_answers():
    async def main(address: str) -> None:
        presence = await whosthere.aio.connect(address)
        async with presence:
            owners = [presence.owner() for _ in range(100)]
            twice = owners[:10] * 2 + owners[10:]  # ten tracked twice in the same turn
            results = await asyncio.gather(
                *(presence.track(o, "turn", "k", {}) for o in twice), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, whosthere.AlreadyTracked)]
            assert len(refused) == 10 and len({r for r in results if isinstance(r, str)}) == 100
            assert len((await presence.list("turn"))["k"]["metas"]) == 100

    with whosthere.Node() as node:
        asyncio.run(main(node.address))
        # a batch holds only what the actor takes so: the rest is refused one by one
        shard = Dealer(node.presence.info.endpoints["shard.0"])
        try:
            track = Track(os.getpid(), None, "calls", "k", codec.pack_meta({}))
            replies = shard.call(Calls([codec.encode(track), codec.encode(ListTopic("calls"))]))
            first, second = (codec.decode(r) for r in replies)
            assert type(first).__name__ == "Ok" and isinstance(first.value, str)
            assert type(second).__name__ == "Failed" and "in a Calls batch" in second.message
        finally:
            shard.close()


def test_links_as_coroutines():
    """Each exit once, as `whosthere.Links`; a gone pid at once; unlink silences; close ends."""

    async def main(address: str) -> None:
        a, b = sleeper(), sleeper()
        try:
            async with whosthere.aio.links(address) as links:
                await links.link_many([a.pid, b.pid])
                assert links.linked == {a.pid, b.pid}
                await links.unlink(b.pid)
                assert await links.get(timeout=0.2) is None
                a.kill()
                b.kill()
                exit_ = await links.get(timeout=5)
                assert exit_ is not None and exit_.pid == a.pid
                assert await links.get(timeout=0.3) is None, "reported twice, or unlinked b"
                with pytest.raises(TypeError):
                    await links.link(0)
                gone = subprocess.Popen([sys.executable, "-c", "pass"])
                gone.wait()
                await links.link(gone.pid, 12345)  # a start time that is not the process's
                exit_ = await links.get(timeout=5)
                assert exit_ is not None and exit_.pid == gone.pid
                waiting = asyncio.ensure_future(links.get())
                await asyncio.sleep(0.05)
            with pytest.raises(whosthere.NodeUnavailable):
                await asyncio.wait_for(waiting, 5)
        finally:
            for p in (a, b):
                p.kill()
                p.wait()

    with whosthere.Node() as node:
        asyncio.run(main(node.address))


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
