"""`channels.fanout`: a backlog of broadcasts is dispatched in slices, the loop turning
between them (the writer's turn). Pure: a fake subscription, one event loop per test."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, cast

from whosthere.channels.fanout import BURST, Fanout
from whosthere.pubsub import Message

if TYPE_CHECKING:
    from whosthere.aio.pubsub import AsyncPubSub


class Subscription:
    """Its messages are all there at once: `get` returns each without suspending."""

    def __init__(self, backlog: list[Message]) -> None:
        self.backlog = deque(backlog)

    async def open(self) -> None:
        pass

    async def subscribe(self, topic: str) -> None:
        pass

    def unsubscribe(self, topic: str) -> None:
        pass

    async def get(self) -> Message | None:
        if self.backlog:
            return self.backlog.popleft()
        await asyncio.get_running_loop().create_future()  # nothing more, for ever
        return None

    def close(self) -> None:
        pass


class PubSub:
    def __init__(self, backlog: list[Message]) -> None:
        self.sub = Subscription(backlog)

    def subscribe(self) -> Subscription:
        return self.sub


class Turns:
    """Counts the loop's turns (one step of its task per turn)."""

    def __init__(self) -> None:
        self.now = 0

    async def run(self) -> None:
        while True:
            self.now += 1
            await asyncio.sleep(0)


class Member:
    def __init__(self, turns: Turns) -> None:
        self.turns = turns
        self.heard: list[tuple[int, Any]] = []  # (turn, payload)

    def on_broadcast(self, event: str, payload: Any, frame: str | bytes) -> None:
        self.heard.append((self.turns.now, payload))


def test_a_backlog_of_broadcasts_is_dispatched_a_slice_per_loop_turn():
    async def main() -> None:
        backlog = [Message("room:1", "msg", {"n": n}) for n in range(10 * BURST + 7)]
        fanout = Fanout(cast("AsyncPubSub", PubSub(backlog)))
        turns = Turns()
        ticker = asyncio.get_running_loop().create_task(turns.run())
        member = Member(turns)
        await fanout.add("room:1", member)
        for _ in range(100):
            if len(member.heard) == len(backlog):
                break
            await asyncio.sleep(0)
        await fanout.close()
        ticker.cancel()
        assert [p["n"] for _, p in member.heard] == list(range(len(backlog)))  # in order
        per_turn = Counter(turn for turn, _ in member.heard)
        assert max(per_turn.values()) <= BURST and len(per_turn) >= 11

    asyncio.run(main())
