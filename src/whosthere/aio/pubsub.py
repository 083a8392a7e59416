"""`AsyncPubSub` and `AsyncSubscription`: broadcast and subscribe from an asyncio loop.

A subscription is a member of the loop's feed from the node (`feed`, read by
`aio.feed_loop`: one SUB socket, its `Sequencer`); its subscribe's round trip goes through
the loop's connection, and `get` waits on the loop for its queue to gain something.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from whosthere.aio import feed_loop
from whosthere.aio.client import lookup
from whosthere.aio.dealer import AsyncDealer
from whosthere.aio.feed_loop import LoopFeed
from whosthere.aio.waits import wait_event
from whosthere.client import NodeInfo
from whosthere.errors import NodeUnavailable
from whosthere.feed import FeedMember
from whosthere.names import check_topic
from whosthere.sequencer import Message
from whosthere.sub_socket import DEFAULT_SUBSCRIBER_HWM, request
from whosthere.topology import PUBSUB
from whosthere.transport.messages import Broadcast, Ping
from whosthere.transport.sockets import DEFAULT_TIMEOUT


class AsyncPubSub:
    """A node's PubSub actor from one event loop: `await pubsub.broadcast(...)`."""

    def __init__(self, info: NodeInfo, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.info = info
        self.timeout = timeout
        self._conn = AsyncDealer(
            info.endpoints[PUBSUB], timeout=timeout, what="pubsub actor", guard=info.supervisor
        )
        self._unflushed = False  # broadcasts cast since the last reply (see `close`)

    @classmethod
    async def connect(
        cls, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> AsyncPubSub:
        """The PubSub of the node at `address` (default `$WHOSTHERE_ADDRESS`)."""
        return cls(await lookup(address, timeout), timeout=timeout)

    async def broadcast(self, topic: str, event: str, payload: Any) -> None:
        """To every subscriber of `topic`, on every node of the cluster; returns once it is
        queued for the PubSub actor (`close()` waits until it is delivered)."""
        msg = Broadcast(check_topic(topic), check_topic(event, "event"), payload, False)
        await self._conn.cast(msg)
        self._unflushed = True

    async def local_broadcast(self, topic: str, event: str, payload: Any) -> None:
        """As `broadcast`, to this node's subscribers only."""
        await self._conn.cast(
            Broadcast(check_topic(topic), check_topic(event, "event"), payload, True)
        )
        self._unflushed = True

    def subscribe(self, *topics: str, hwm: int = DEFAULT_SUBSCRIBER_HWM) -> AsyncSubscription:
        """A subscription to `topics`: `async with` it (or `await sub.open()`), then
        `async for msg in sub` or `await sub.get(timeout)`."""
        return AsyncSubscription(self, topics, hwm=hwm)

    def unsubscribe(self, subscription: AsyncSubscription, topic: str | None = None) -> None:
        """Unsubscribe `subscription` from `topic`, or close it when no topic is given."""
        if topic is None:
            subscription.close()
        else:
            subscription.unsubscribe(topic)

    async def close(self, flush_timeout: float = 1.0) -> None:
        """Deliver what was broadcast (up to `flush_timeout` s), then disconnect. Idempotent."""
        if self._unflushed and not self._conn.closed:
            self._unflushed = False
            with contextlib.suppress(NodeUnavailable):  # a `Ping` comes back after them
                await self._conn.call(Ping(), flush_timeout)
        await self._conn.aclose()

    async def __aenter__(self) -> AsyncPubSub:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSubscription:
    """Messages on some topics, from an asyncio loop; as `whosthere.Subscription` (the same
    `MessagesLost` and `NodeUnavailable`). Every subscription of a loop to a node shares one
    node subscription (`aio.feed_loop`): an idle one costs no timer and no wake-up. Use it
    from the loop that opened it."""

    def __init__(self, pubsub: AsyncPubSub, topics: tuple[str, ...] = (), *, hwm: int) -> None:
        self._pubsub = pubsub
        self._topics = tuple(check_topic(t) for t in topics)
        self._member = FeedMember(hwm)
        self._feed: LoopFeed | None = None  # attached by `open`, on the loop
        self._ready = asyncio.Event()  # the member's queue gained something
        self._member.wake = self._ready.set
        self._closed = False

    async def open(self) -> AsyncSubscription:
        """Subscribe; in place when it returns (nothing published later is missed)."""
        if self._feed is None and not self._closed:
            self._feed = feed_loop.attach(self._pubsub.info)
        try:
            await self.subscribe(*self._topics)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def topics(self) -> list[str]:
        """The topics subscribed (none before `open`)."""
        return list(self._member.topics)

    @property
    def missed(self) -> int:
        """Messages known lost, over the subscription's life."""
        return self._member.missed

    async def subscribe(self, *topics: str) -> None:
        """Add `topics`, in place when this returns."""
        feed = self._open_feed()
        handshake = feed.begin(self._member, topics)
        if handshake is None:
            return
        try:
            reply = await self._pubsub._conn.call(request(handshake))
        except BaseException:
            feed.end(handshake, None)
            raise
        feed.end(handshake, reply)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (messages already queued for it are skipped)."""
        self._open_feed().leave(self._member, check_topic(topic))

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (None: for ever); None on
        timeout. Raises `MessagesLost` for a gap, `NodeUnavailable` once when the node goes
        (then it can be read on, as `whosthere.Subscription.get`)."""
        self._open_feed()
        member, ready = self._member, self._ready
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready.clear()
            msg = member.take()
            if msg is not None:
                return msg
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return None
            await wait_event(ready, wait)

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> Message:
        """The next message, waiting as long as it takes."""
        while True:
            msg = await self.get()
            if msg is not None:
                return msg

    async def __aenter__(self) -> AsyncSubscription:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe from everything. Idempotent."""
        self._closed = True
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.leave(self._member)
            feed_loop.detach(feed)
            self._member.close()  # a reader waiting in another task raises, at once

    def _open_feed(self) -> LoopFeed:
        if self._feed is None:
            if self._closed:
                raise NodeUnavailable("subscription is closed")
            raise NodeUnavailable("the subscription is not open: `async with` it or `open()`")
        return self._feed
