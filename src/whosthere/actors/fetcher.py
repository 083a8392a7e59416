"""Fetcher worker: runs the user's `Presence.fetch` on diffs, off the shard's loop.

A `fetch` that is an `async def` runs on the fetcher's own event loop, kept for its life.

Each diff is fetched in two calls, joins and leaves, as Phoenix does; the result (or the
error) goes back to the shard that sent it, which publishes in its own order. On start it
tells every shard (`FetcherReady`): after a crash, the fetches it held are sent again.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

from whosthere.actors.base import Actor, ActorSpec
from whosthere.loading import load_class, settle
from whosthere.topology import Topology
from whosthere.transport.messages import Fetch, Fetched, FetcherReady
from whosthere.transport.sockets import Dealer


class FetcherActor(Actor):
    handles = (Fetch,)

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        self.presence_class = load_class(spec.node.presence)  # the user's Presence subclass
        self.presence: Any = None  # bound to the node on first use
        shards = Topology(spec.node).shards
        self.shards = [Dealer(e, what="shard", unbounded=True) for e in shards]
        self.fetched = 0
        self.failed = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # for an async fetch, made at need

    def on_start(self) -> None:
        for shard in self.shards:  # a restart: the shards send again what died with the last one
            shard.cast(FetcherReady(self.spec.index, self.spec.incarnation))

    def stats(self) -> dict[str, Any]:
        return {"fetched": self.fetched, "failed": self.failed}

    def on_fetch(self, msg: Fetch) -> None:
        try:
            if self.presence is None:
                self.presence = self.presence_class.connect(self.spec.supervisor)
            joins = self._fetch(msg.topic, msg.joins) if msg.joins else msg.joins
            leaves = self._fetch(msg.topic, msg.leaves) if msg.leaves else msg.leaves
            reply = Fetched(msg.id, {"joins": joins, "leaves": leaves}, "")
            self.fetched += 1
        except (Exception, SystemExit) as exc:  # the user's code: whatever it raises
            self.failed += 1
            self.log.error(
                "%s: fetch raised on topic %r\n%s", self.name, msg.topic, traceback.format_exc()
            )
            reply = Fetched(msg.id, None, f"{type(exc).__name__}: {exc}")
        try:
            self.shards[msg.shard].cast(reply)
        except Exception as exc:  # e.g. fetch returned something msgpack cannot carry
            self.log.error(
                "%s: fetch result for topic %r cannot be sent: %s", self.name, msg.topic, exc
            )
            self.shards[msg.shard].cast(Fetched(msg.id, None, f"{type(exc).__name__}: {exc}"))

    def _fetch(self, topic: str, presences: dict[str, Any]) -> Any:
        fetched = self.presence.fetch(topic, presences)
        if self.loop is None and not isinstance(fetched, dict):
            self.loop = asyncio.new_event_loop()
        return settle(fetched, self.loop)

    def on_stop(self) -> None:
        if self.loop is not None:
            self.loop.close()
        for dealer in self.shards:
            dealer.close()
        if self.presence is not None:
            self.presence.close()
