"""Presence classes for tests; module level, so the node's processes can import them."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import whosthere


class ExtraPresence(whosthere.Presence):
    def fetch(self, topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        return {key: {**entry, "extra": "extra"} for key, entry in presences.items()}


class SlowPresence(whosthere.Presence):
    """Fetches take a random while, so results come back out of order."""

    def fetch(self, topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        time.sleep(random.uniform(0, 0.01))
        return {key: {**entry, "fetched": True} for key, entry in presences.items()}


class BrokenPresence(whosthere.Presence):
    """fetch raises on topics "boom:*" and hangs on "hang:*"."""

    def fetch(self, topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        if topic.startswith("boom:"):
            raise RuntimeError("fetch exploded")
        if topic.startswith("hang:"):
            time.sleep(3)
        return {key: {**entry, "fetched": True} for key, entry in presences.items()}


class MetasPresence(whosthere.Presence):
    """Reports every handle_metas call on "metas:<topic>"."""

    def init(self) -> int:
        return 0

    def handle_metas(self, topic: str, diff: dict, presences: dict, state: int) -> int:
        if topic.startswith("crash:"):
            raise ValueError("handle_metas exploded")
        pubsub = getattr(self, "_reporter", None)
        if pubsub is None:
            pubsub = self._reporter = whosthere.PubSub(self.info)
        pubsub.broadcast(
            f"metas:{topic}", "handle_metas", {"presences": presences, "calls": state + 1}
        )
        return state + 1


class HandleMetasWithoutInit(whosthere.Presence):
    """Reports the state it was given on "metas:<topic>"."""

    def handle_metas(self, topic: str, diff: dict, presences: dict, state: Any) -> Any:
        with whosthere.PubSub(self.info) as pubsub:
            pubsub.broadcast(f"metas:{topic}", "handle_metas", {"state": state})
        return state


class HangOncePresence(whosthere.Presence):
    """On topic "once:<path>", the first fetch (the one that creates <path>) hangs; later
    fetches of it return at once. On "poison:*", fetch kills its own process."""

    def fetch(self, topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        if topic.startswith("poison:"):
            os._exit(3)
        if topic.startswith("once:"):
            try:
                with open(topic[len("once:") :], "x"):
                    pass
            except FileExistsError:
                pass
            else:
                time.sleep(60)
        return {key: {**entry, "fetched": True} for key, entry in presences.items()}


class GatedPresence(whosthere.Presence):
    """`handle_metas` waits while the file named by $GATE exists (a slow callback), keeps
    {topic: number of keys} as its state, and on topic "probe" broadcasts the total."""

    def init(self) -> dict[str, int]:
        return {}

    def handle_metas(self, topic: str, diff: dict, presences: dict, state: dict) -> dict:
        while os.path.exists(os.environ["GATE"]):
            time.sleep(0.01)
        state[topic] = len(presences)
        if topic == "probe":
            with whosthere.PubSub(self.info) as pubsub:
                pubsub.broadcast("probe:report", "total", {"total": sum(state.values())})
        return state


class FetchAndMetasPresence(whosthere.Presence):
    """Every callback defined, so fetchers and the presence client actor all run; each
    handle_metas call walks the presences (as a user's would)."""

    def fetch(self, topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        return {key: {**entry, "fetched": True} for key, entry in presences.items()}

    def init(self) -> int:
        return 0

    def handle_metas(self, topic: str, diff: dict, presences: dict, state: int) -> int:
        return state + sum(len(metas) for metas in presences.values())


class GatedFetchPresence(whosthere.Presence):
    """`fetch` waits while the file named by $GATE exists (a slow fetch)."""

    def fetch(self, topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        while os.path.exists(os.environ["GATE"]):
            time.sleep(0.01)
        return {key: {**entry, "fetched": True} for key, entry in presences.items()}


class AsyncCallbacksPresence(whosthere.Presence):
    """Every callback an `async def`: fetch marks entries, handle_metas reports on
    "metas:<topic>" the presences and how many calls it had (its state, from async init)."""

    async def fetch(self, topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {key: {**entry, "async": True} for key, entry in presences.items()}

    async def init(self) -> int:
        await asyncio.sleep(0)
        return 100

    async def handle_metas(self, topic: str, diff: dict, presences: dict, state: int) -> int:
        await asyncio.sleep(0)
        pubsub = getattr(self, "_reporter", None)
        if pubsub is None:
            pubsub = self._reporter = whosthere.PubSub(self.info)
        pubsub.broadcast(
            f"metas:{topic}", "handle_metas", {"keys": sorted(presences), "calls": state + 1}
        )
        return state + 1
