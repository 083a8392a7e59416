"""`AsyncPubSub` and `AsyncSubscription`: broadcast and subscribe from an asyncio loop.

A subscription is a SUB socket read through its `Sequencer` (`sub_socket`, `sequencer`:
sequence numbers, epochs, marks and losses, shared with the synchronous client); here its
subscribe's round trip goes through the loop's connection, and `get` waits on the loop for
its socket (or the node's supervisor) to be readable instead of blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from whosthere.aio import readers
from whosthere.aio.client import lookup
from whosthere.aio.dealer import AsyncDealer
from whosthere.aio.waits import wait_event
from whosthere.client import NodeInfo
from whosthere.errors import NodeUnavailable
from whosthere.names import check_topic
from whosthere.sequencer import SYNC_RETRY, Message
from whosthere.sub_socket import DEFAULT_SUBSCRIBER_HWM, SubSocket
from whosthere.topology import PUBSUB
from whosthere.transport.messages import Broadcast, Ping
from whosthere.transport.sockets import DEFAULT_TIMEOUT, readable


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
    `MessagesLost` and `NodeUnavailable`). Use it from the loop that opened it."""

    def __init__(self, pubsub: AsyncPubSub, topics: tuple[str, ...] = (), *, hwm: int) -> None:
        self._pubsub = pubsub
        self._topics = tuple(check_topic(t) for t in topics)
        self._hwm = hwm
        self._sub: SubSocket | None = None  # made by `open`, on the loop
        self._ready = asyncio.Event()  # the socket or the supervisor's pidfd became readable
        self._fds: list[int] = []

    async def open(self) -> AsyncSubscription:
        """Subscribe; in place when it returns (nothing published later is missed)."""
        if self._sub is None:
            self._sub = SubSocket(self._pubsub.info, self._hwm, self._pubsub._conn.cast_nowait)
            loop = asyncio.get_running_loop()
            fds = [self._sub.socket.fileno()]
            guard_fd = None if self._sub.guard is None else self._sub.guard.fileno()
            if guard_fd is not None:
                fds.append(guard_fd)
            for fd in fds:
                readers.add(loop, fd, self._ready.set)
            self._fds = fds
        try:
            await self.subscribe(*self._topics)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def topics(self) -> list[str]:
        """The topics subscribed (none before `open`)."""
        return self._sub.sequencer.topics if self._sub is not None else []

    @property
    def missed(self) -> int:
        """Messages known lost, over the subscription's life."""
        return self._sub.sequencer.missed if self._sub is not None else 0

    async def subscribe(self, *topics: str) -> None:
        """Add `topics`, in place when this returns."""
        sub = self._open_sub()
        handshake = sub.begin(topics)
        if handshake is None:
            return
        try:
            reply = await self._pubsub._conn.call(handshake.request)
        except BaseException:
            sub.end(handshake, None)
            raise
        sub.end(handshake, reply)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (messages already queued for it are skipped)."""
        self._open_sub().unsubscribe(topic)

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (None: for ever); None on
        timeout. Raises `MessagesLost` for a gap, `NodeUnavailable` once the node is gone."""
        sub = self._open_sub()
        deadline = None if timeout is None else time.monotonic() + timeout
        guard = sub.guard
        while True:
            self._ready.clear()
            msg = sub.get_nowait()
            if msg is not None:
                return msg
            if guard is not None:
                guard.check()
            if readable(sub.socket):
                continue  # arrived meanwhile (the socket's fd only tells of changes)
            wait = SYNC_RETRY if deadline is None else min(SYNC_RETRY, deadline - time.monotonic())
            if wait <= 0:
                return None
            await wait_event(self._ready, wait)

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
        if self._fds:
            loop = asyncio.get_running_loop()
            for fd in self._fds:
                readers.remove(loop, fd, self._ready.set)
            self._fds = []
        if self._sub is not None:
            self._sub.close()

    def _open_sub(self) -> SubSocket:
        if self._sub is None:
            raise NodeUnavailable("the subscription is not open: `async with` it or `open()`")
        return self._sub
