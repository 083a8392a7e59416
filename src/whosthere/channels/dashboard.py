"""The live page's own channels: the node at a glance, a topic's presences, recent exits.

The page (`static/dashboard.html`) is a Channels client like any other: it joins
"whosthere:node" (the process tree and the busiest topics, pushed every second),
"whosthere:exits" (each exited owner process: its presences, and how long from the
supervisor seeing it gone to the leaves going out), and any other topic to watch its
presences live (`presence_state`, then the `presence_diff` broadcasts).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from whosthere.channels.channel import Channel, ChannelSocket
from whosthere.channels.endpoint import Endpoint
from whosthere.topology import EXITS_TOPIC

STATUS_EVERY_S = 1.0
TOPICS_SHOWN = 50


class NodeChannel(Channel):
    """The node's process tree and busiest topics, on join and every second after."""

    ticker: asyncio.Task[None] | None = None

    async def join(self, topic: str, params: Any, socket: ChannelSocket) -> Any:
        self.ticker = asyncio.get_running_loop().create_task(self._tick(socket))
        return await self._overview()

    async def _overview(self) -> dict[str, Any]:
        presence = self.presence.client
        status, topics = await asyncio.gather(presence.status(), presence.topics(TOPICS_SHOWN))
        return {
            "node": presence.info.name,
            "actors": status["actors"],
            "supervisor": status["supervisor"],
            "topics": topics,
        }

    async def _tick(self, socket: ChannelSocket) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            with contextlib.suppress(Exception):  # a node restarting: the next tick tells
                socket.push("overview", await self._overview())

    async def terminate(self, reason: str, socket: ChannelSocket) -> None:
        if self.ticker is not None:
            self.ticker.cancel()


class HearChannel(Channel):
    """Hears its topic's broadcasts (the exits), holds nothing."""


class WatchChannel(Channel):
    """A topic's presences: the state on join, then its diffs as they are broadcast."""

    async def join(self, topic: str, params: Any, socket: ChannelSocket) -> Any:
        await self.push_presence_state(socket)
        return {}


def dashboard_endpoint(address: str | None = None) -> Endpoint:
    return Endpoint(
        channels={"whosthere:node": NodeChannel, EXITS_TOPIC: HearChannel, "*": WatchChannel},
        address=address,
    )
