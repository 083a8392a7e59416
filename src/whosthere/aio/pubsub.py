"""`AsyncPubSub` and `AsyncSubscription`: broadcast and subscribe from an asyncio loop.

A subscription is the synchronous `Subscription` (its sequence numbers, marks and losses,
unchanged), driven from the loop: its handshake goes through the loop's connection, and
`get` waits for its socket to be readable instead of blocking.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq

from whosthere.aio import readers
from whosthere.aio.dealer import AsyncDealer
from whosthere.aio.waits import wait_event
from whosthere.client import NodeInfo
from whosthere.errors import NodeUnavailable
from whosthere.pubsub import (
    DEFAULT_SUBSCRIBER_HWM,
    SYNC_RETRY,
    Message,
    Subscription,
    check_topic,
)
from whosthere.topology import PUBSUB
from whosthere.transport.messages import Broadcast, Subscribe, Sync
from whosthere.transport.sockets import DEFAULT_TIMEOUT


class AsyncPubSub:
    """A node's PubSub actor from one event loop: `await pubsub.broadcast(...)`."""

    def __init__(self, info: NodeInfo, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.info = info
        self.timeout = timeout
        self.dealer = AsyncDealer(
            info.endpoints[PUBSUB], timeout=timeout, what="pubsub actor", guard=info.supervisor
        )

    async def broadcast(self, topic: str, event: str, payload: Any) -> None:
        """To every subscriber of `topic`, on every node of the cluster."""
        msg = Broadcast(check_topic(topic), check_topic(event, "event"), payload, False)
        await self.dealer.cast(msg)

    async def local_broadcast(self, topic: str, event: str, payload: Any) -> None:
        """As `broadcast`, to this node's subscribers only."""
        await self.dealer.cast(
            Broadcast(check_topic(topic), check_topic(event, "event"), payload, True)
        )

    def subscribe(self, *topics: str, hwm: int = DEFAULT_SUBSCRIBER_HWM) -> AsyncSubscription:
        """A subscription to `topics`: `async with` it (or `await sub.open()`), then
        `async for msg in sub` or `await sub.get(timeout)`."""
        return AsyncSubscription(self, topics, hwm=hwm)

    # what `Subscription` asks of its PubSub, the loop's way
    def sync(self, topics: list[str], inbox: str) -> list[Any]:
        raise RuntimeError("an asyncio subscription confirms its topics with `await`")

    def ask_mark(self, mailbox: str, topics: list[str]) -> None:
        self.dealer.cast_nowait(Sync(mailbox, topics))

    async def close(self) -> None:
        await self.dealer.aclose()


class AsyncSubscription:
    """Messages on some topics, from an asyncio loop; as `whosthere.Subscription` (the same
    `MessagesLost` and `NodeUnavailable`). Use it from the loop that opened it."""

    def __init__(self, pubsub: AsyncPubSub, topics: tuple[str, ...], *, hwm: int) -> None:
        self._pubsub = pubsub
        self._topics = tuple(check_topic(t) for t in topics)
        self._hwm = hwm
        self._sub: Subscription | None = None
        self._ready = asyncio.Event()
        self._fds: list[int] = []

    async def open(self) -> AsyncSubscription:
        """Subscribe; in place when it returns (nothing published later is missed)."""
        if self._sub is None:
            self._sub = Subscription(self._pubsub, (), hwm=self._hwm)  # type: ignore[arg-type]
            loop = asyncio.get_running_loop()
            fds = [self._sub.socket.getsockopt(zmq.FD)]
            guard = self._pubsub.info.supervisor
            if guard is not None and guard.fileno() is not None:
                fds.append(guard.fileno())  # type: ignore[arg-type]
            for fd in fds:
                readers.add(loop, fd, self._ready.set)
            self._fds = fds
        try:
            await self.subscribe(*self._topics)
        except BaseException:
            self.close()
            raise
        return self

    async def subscribe(self, *topics: str) -> None:
        """Add `topics`, in place when this returns."""
        sub = self._open_sub()
        handshake = sub.begin_subscribe(topics)
        if handshake is None:
            return
        try:
            reply = await self._pubsub.dealer.call(
                Subscribe(list(handshake[0].values()), handshake[1])
            )
        except BaseException:
            sub.end_subscribe(handshake, None)
            raise
        sub.end_subscribe(handshake, reply)

    def unsubscribe(self, topic: str) -> None:
        self._open_sub().unsubscribe(topic)

    @property
    def missed(self) -> int:
        return self._sub.missed if self._sub is not None else 0

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (None: for ever); None on
        timeout. Raises `MessagesLost` for a gap, `NodeUnavailable` once the node is gone."""
        sub = self._open_sub()
        deadline = None if timeout is None else time.monotonic() + timeout
        guard = self._pubsub.info.supervisor
        while True:
            self._ready.clear()
            msg = sub.get(timeout=0)
            if msg is not None:
                return msg
            if guard is not None:
                guard.check()
            if sub.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                continue  # arrived meanwhile (the socket's fd only tells of changes)
            wait = SYNC_RETRY if deadline is None else min(SYNC_RETRY, deadline - time.monotonic())
            if wait <= 0:
                return None
            await wait_event(self._ready, wait)

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> Message:
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

    def _open_sub(self) -> Subscription:
        if self._sub is None:
            raise NodeUnavailable("the subscription is not open: `async with` it or `open()`")
        return self._sub
