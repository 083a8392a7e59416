"""What a dashboard reads of a node: its busiest topics, and each exited owner process's
presences as they leave (`EXITS_TOPIC`)."""

from __future__ import annotations

import asyncio
import os
import time

import whosthere
import whosthere.aio
from whosthere.topology import EXITS_TOPIC


def test_topics_with_the_most_presences_first(owner):
    with whosthere.Node(pool_size=2) as node:
        presence = node.presence
        for t, n in (("a", 1), ("b", 3), ("c", 2)):
            presence.track_many([(owner.pid, f"t:{t}", f"k{i}", {}) for i in range(n)])
        assert presence.topics() == [("t:b", 3), ("t:c", 2), ("t:a", 1)]
        assert presence.topics(limit=2) == [("t:b", 3), ("t:c", 2)]

        async def from_asyncio() -> list:
            aio = await whosthere.aio.connect(node.address)
            async with aio:
                assert (await aio.status())["actors"]
                return await aio.topics(limit=1)

        assert asyncio.run(from_asyncio()) == [("t:b", 3)]


def test_an_exited_owner_process_is_told_with_its_presences(owner):
    with whosthere.Node() as node, node.pubsub.subscribe(EXITS_TOPIC) as exits:
        node.presence.track_many([(owner.pid, f"room:{i}", "k", {}) for i in range(3)])
        node.presence.track(os.getpid(), "room:0", "me", {})  # stays
        owner.kill()
        owner.wait()
        msg = exits.get(timeout=5)
        assert msg is not None and msg.event == "exit"
        told = msg.payload
        assert (told["pid"], told["presences"]) == (owner.pid, 3)
        assert told["topics"] == ["room:0", "room:1", "room:2"]
        assert 0 < told["left_at"] - told["seen_at"] < 5
        assert told["left_at"] <= time.time()
        assert list(node.presence.list("room:0")) == ["me"]
