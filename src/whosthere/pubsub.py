"""The PubSub client: broadcast to topics and subscribe to them, from any process, blocking.

A `Subscription` is a member of the process's feed from the node (`feed`, read by the
thread of `feed_thread`: one SUB socket, its `Sequencer` for numbers, epochs, marks and
losses); here it only waits for its queue, and the feed tells it when the node goes.
"""

from __future__ import annotations

import time
from typing import Any

from whosthere.client import NodeInfo, lookup
from whosthere.errors import NodeUnavailable
from whosthere.feed import FeedMember
from whosthere.feed_thread import Doorbell, ThreadFeed, attach, detach
from whosthere.names import check_topic
from whosthere.sequencer import Message
from whosthere.sub_socket import DEFAULT_SUBSCRIBER_HWM, request
from whosthere.topology import PUBSUB
from whosthere.transport.messages import Broadcast
from whosthere.transport.sockets import DEFAULT_TIMEOUT, DealerPerThread

__all__ = ["DEFAULT_SUBSCRIBER_HWM", "Message", "PubSub", "Subscription"]


class PubSub:
    """A node's PubSub actor, seen from one process. Safe to share between threads."""

    def __init__(self, info: NodeInfo, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.info = info
        self.timeout = timeout
        self._conn = DealerPerThread(
            info.endpoints[PUBSUB], timeout=timeout, what="pubsub actor", guard=info.supervisor
        )

    @classmethod
    def connect(cls, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> PubSub:
        """The PubSub of the node at `address` (default `$WHOSTHERE_ADDRESS`)."""
        return cls(lookup(address, timeout), timeout=timeout)

    def broadcast(self, topic: str, event: str, payload: Any) -> None:
        """Send to every subscriber of `topic` (cluster-wide once nodes are joined).

        Returns once the message is queued for the PubSub actor; `close()` waits until what
        was queued is delivered. Raises `InvalidMeta` if the payload cannot be packed,
        `NodeUnavailable` if it cannot be queued within the timeout.
        """
        msg = Broadcast(check_topic(topic), check_topic(event, "event"), payload, False)
        self._conn.cast(msg)

    def local_broadcast(self, topic: str, event: str, payload: Any) -> None:
        """As `broadcast`, to this node's subscribers only."""
        self._conn.cast(Broadcast(check_topic(topic), check_topic(event, "event"), payload, True))

    def subscribe(self, *topics: str, hwm: int = DEFAULT_SUBSCRIBER_HWM) -> Subscription:
        """A subscription to `topics`, in place when this returns (nothing later is missed)."""
        return Subscription(self, topics, hwm=hwm)

    def unsubscribe(self, subscription: Subscription, topic: str | None = None) -> None:
        """Unsubscribe `subscription` from `topic`, or close it when no topic is given."""
        if topic is None:
            subscription.close()
        else:
            subscription.unsubscribe(topic)

    def close(self, flush_timeout: float = 1.0) -> None:
        """Deliver what this thread broadcast (up to `flush_timeout` s), then disconnect."""
        self._conn.close(flush_timeout)

    def __enter__(self) -> PubSub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription:
    """Messages on some topics, in publication order: an iterator and a context manager.

    Every subscription of a process to a node shares one node subscription, read by one
    thread (`feed_thread`): an idle one costs nothing but its queue, and `get` wakes only
    when the queue gains something. `get` raises `MessagesLost` where messages were lost
    (this subscription fell `hwm` messages behind, or the PubSub actor restarted), and the
    subscription goes on with the next message; its `topic` is "*" when the loss spans
    several topics. It raises `NodeUnavailable` once when the node goes, and can be read on:
    at a fixed address, a node serving it again is a `MessagesLost`, then its messages
    (DESIGN section 12). Use it from one
    thread.
    """

    def __init__(self, pubsub: PubSub, topics: tuple[str, ...] = (), *, hwm: int) -> None:
        self._pubsub = pubsub
        self._member = FeedMember(hwm)
        self._bell = Doorbell()
        self._member.wake = self._bell.ring
        self._feed: ThreadFeed | None = attach(pubsub.info)
        try:
            self.subscribe(*topics)
        except BaseException:
            self.close()
            raise

    @property
    def topics(self) -> list[str]:
        """The topics subscribed."""
        return list(self._member.topics)

    @property
    def missed(self) -> int:
        """Messages known lost, over the subscription's life."""
        return self._member.missed

    def subscribe(self, *topics: str) -> None:
        """Add `topics` (any number, one round trip); in place when this returns.

        Raises `NodeUnavailable` if the PubSub actor does not confirm within the timeout.
        """
        feed = self._open_feed()
        handshake = feed.begin(self._member, topics)
        if handshake is None:
            return
        try:
            reply = self._pubsub._conn.call(request(handshake))
        except BaseException:
            feed.end(handshake, None)
            raise
        feed.end(handshake, reply)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (messages already queued for it are skipped)."""
        self._open_feed().leave(self._member, check_topic(topic))

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (None: forever); None on timeout.

        Raises `MessagesLost` once for each gap, before the message that follows it, and
        `NodeUnavailable` once when the node's supervisor has exited, and whenever the
        subscription is closed.
        """
        feed = self._open_feed()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = feed.take(self._member)
            if msg is not None:
                return msg
            if deadline is None:
                self._bell.wait(None)
                continue
            if not self._bell.wait(deadline - time.monotonic()):
                return feed.take(self._member)

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Message:
        """The next message, waiting as long as it takes."""
        while True:
            msg = self.get()
            if msg is not None:
                return msg

    def close(self) -> None:
        """Unsubscribe from everything. Idempotent."""
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.leave(self._member)
            detach(feed)
            self._member.close()  # a reader waiting in another thread raises, at once

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_feed(self) -> ThreadFeed:
        feed = self._feed
        if feed is None:
            raise NodeUnavailable("subscription is closed")
        return feed
