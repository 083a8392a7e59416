"""One subscription per worker process, its messages fanned out to the worker's channels.

Phoenix's fastlane: a broadcast is encoded once and handed to every joined channel of its
topic on this worker, never once per socket through the node. Events a channel intercepts
go to its `handle_out` instead. A gap in the subscription (`MessagesLost`) sends each
channel that shows presences a fresh `presence_state`, from which the client's `Presence`
works out what it missed.

`broadcast_from` leaves the sender out without a field on the wire: the sender's worker
notes (event, payload, sender) before it broadcasts, and its own subscription brings the
message back in order; the first message of the topic that equals the note skips the
sender. Should another sender's equal message come first, the sender skips that one and
gets its own: one copy of one content either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from whosthere.channels import frames
from whosthere.errors import MessagesLost, NodeUnavailable

if TYPE_CHECKING:
    from whosthere.aio.pubsub import AsyncPubSub, AsyncSubscription

log = logging.getLogger("whosthere.channels")

EXCLUDE_FOR_S = 30.0  # a note whose message never came back (lost) is dropped after this
# Messages dispatched in a row before the reader lets the loop turn. A backlog is read
# without waiting, and the frames it makes are written only when the reader yields
# (`writer.Writer`): in slices, a burst of broadcasts never piles up in a client's outbox,
# whose bound (`connection.MAX_QUEUED`) is for clients that read slowly.
BURST = 100


class Member(Protocol):
    def on_broadcast(self, event: str, payload: Any, frame: str | bytes) -> None: ...


class Fanout:
    def __init__(self, pubsub: AsyncPubSub) -> None:
        self.pubsub = pubsub
        self.members: dict[str, set[Member]] = {}
        self.ready: dict[str, asyncio.Future[None]] = {}  # topic -> its subscription in place
        self.notes: dict[str, deque[tuple[str, Any, Member, float]]] = {}
        self.sub: AsyncSubscription | None = None
        self.reader: asyncio.Task[None] | None = None
        self.on_lost: Callable[[str], None] | None = None  # told a topic after a gap on it

    async def add(self, topic: str, member: Member) -> None:
        """`member` gets the topic's messages from when this returns."""
        members = self.members.get(topic)
        if members is None:
            members = self.members[topic] = set()
            ready = self.ready[topic] = asyncio.get_running_loop().create_future()
            members.add(member)
            try:
                await self._subscribe(topic)
            except BaseException as exc:
                members.discard(member)
                if not ready.done():
                    ready.set_exception(exc)
                    ready.exception()  # retrieved: the others waiting see it
                if not members:
                    self.members.pop(topic, None)
                    self.ready.pop(topic, None)
                raise
            if not ready.done():
                ready.set_result(None)
            if topic not in self.members and self.sub is not None:
                self.sub.unsubscribe(topic)  # every member left while it was subscribing
            return
        members.add(member)
        await asyncio.shield(self.ready[topic])

    async def _subscribe(self, topic: str) -> None:
        if self.sub is None:
            self.sub = self.pubsub.subscribe()
            await self.sub.open()
            self.reader = asyncio.get_running_loop().create_task(self._read())
        await self.sub.subscribe(topic)

    def remove(self, topic: str, member: Member) -> None:
        members = self.members.get(topic)
        if members is None:
            return
        members.discard(member)
        if not members:
            del self.members[topic]
            self.ready.pop(topic, None)
            self.notes.pop(topic, None)
            if self.sub is not None:
                self.sub.unsubscribe(topic)

    def exclude_next(self, topic: str, event: str, payload: Any, member: Member) -> None:
        self.notes.setdefault(topic, deque()).append((event, payload, member, time.monotonic()))

    async def _read(self) -> None:
        sub = self.sub
        assert sub is not None
        in_a_row = 0  # messages dispatched since the loop last turned here
        while True:
            if in_a_row >= BURST:
                in_a_row = 0
                await asyncio.sleep(0)  # the writer's turn
            try:
                msg = await sub.get()
            except MessagesLost as lost:
                log.warning("channels: %s", lost)
                for topic in lost.counts:  # every topic it touched ("*" spans several)
                    self.notes.pop(topic, None)
                    if self.on_lost is not None:
                        self.on_lost(topic)
                continue
            except NodeUnavailable as exc:
                guard = self.pubsub.info.supervisor
                if guard is not None and guard.stable and guard.changed is None:
                    log.warning("channels: %s", exc)  # a node may serve its address again:
                    continue  # then `MessagesLost`, and every channel's presence_state again
                log.error("channels: the node's PubSub is gone: %s", exc)
                return  # nothing will come any more
            except asyncio.CancelledError:
                return
            if msg is not None:
                self.dispatch(msg.topic, msg.event, msg.payload)
                in_a_row += 1

    def dispatch(self, topic: str, event: str, payload: Any) -> None:
        members = self.members.get(topic)
        if not members:
            return
        skip = self._skipped(topic, event, payload)
        try:
            frame = frames.broadcast(topic, event, payload)  # once for all
        except (TypeError, ValueError, frames.BadFrame) as exc:
            log.warning(
                "channels: a %r message on %r cannot be sent to clients: %s", event, topic, exc
            )
            return
        for member in list(members):
            if member is not skip:
                member.on_broadcast(event, payload, frame)

    def _skipped(self, topic: str, event: str, payload: Any) -> Member | None:
        notes = self.notes.get(topic)
        if not notes:
            return None
        now = time.monotonic()
        while notes and now - notes[0][3] > EXCLUDE_FOR_S:
            notes.popleft()
        for i, (ev, pl, member, _) in enumerate(notes):
            if ev == event and pl == payload:
                del notes[i]
                return member
        return None

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.sub is not None:
            self.sub.close()
