"""The PubSub client: broadcast to topics and subscribe to them, from any process, blocking.

A `Subscription` is a SUB socket read through its `Sequencer` (`sub_socket`, `sequencer`:
sequence numbers, epochs, marks and what a loss looks like, shared with the asyncio client);
here it only waits, on the socket and on the node's supervisor (a pidfd polled beside it:
`NodeUnavailable` the moment the node goes).
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from whosthere.client import NodeInfo, lookup
from whosthere.names import check_topic
from whosthere.sequencer import SYNC_RETRY, Message
from whosthere.sub_socket import DEFAULT_SUBSCRIBER_HWM, SubSocket
from whosthere.topology import PUBSUB
from whosthere.transport.messages import Broadcast, Sync
from whosthere.transport.sockets import DEFAULT_TIMEOUT, DealerPerThread

__all__ = ["DEFAULT_SUBSCRIBER_HWM", "Message", "PubSub", "Subscription"]

SYNC_CAST_TIMEOUT = 0.1  # seconds a `Sync` may wait to be queued (else: asked again later)
IDLE_WAIT = 1.0  # seconds a `get` without a deadline waits before it looks around again


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

    def _ask_mark(self, sync: Sync) -> None:
        """Cast a subscription's `Sync`; `NodeUnavailable` if it cannot be queued within
        `SYNC_CAST_TIMEOUT`."""
        self._conn.cast(sync, SYNC_CAST_TIMEOUT)


class Subscription:
    """Messages on some topics, in publication order: an iterator and a context manager.

    `get` raises `MessagesLost` when messages were lost (the subscriber fell behind the
    high-water mark `hwm`, or the PubSub actor restarted), within a second of it even if
    nothing more is published; the subscription stays usable and the next `get` returns the
    next message that arrived. Its `topic` is "*" when the loss spans several topics (a
    restart, or a mark naming several). It raises `NodeUnavailable` once the node is gone.
    Use it from one thread.
    """

    def __init__(self, pubsub: PubSub, topics: tuple[str, ...] = (), *, hwm: int) -> None:
        self._pubsub = pubsub
        self._sub = SubSocket(pubsub.info, hwm, pubsub._ask_mark)
        self._poller = zmq.Poller()
        self._poller.register(self._sub.socket, zmq.POLLIN)
        guard = self._sub.guard
        guard_fd = None if guard is None else guard.fileno()
        if guard_fd is not None:
            self._poller.register(guard_fd, zmq.POLLIN)
        try:
            self.subscribe(*topics)
        except BaseException:
            self.close()
            raise

    @property
    def socket(self) -> zmq.Socket[bytes]:
        """The SUB socket, to poll beside others (then call `get(timeout=0)`)."""
        return self._sub.socket

    @property
    def topics(self) -> list[str]:
        """The topics subscribed."""
        return self._sub.sequencer.topics

    @property
    def missed(self) -> int:
        """Messages known lost, over the subscription's life."""
        return self._sub.sequencer.missed

    def subscribe(self, *topics: str) -> None:
        """Add `topics` (any number, one round trip); in place when this returns.

        Raises `NodeUnavailable` if the PubSub actor does not confirm within the timeout.
        """
        handshake = self._sub.begin(topics)
        if handshake is None:
            return
        try:
            reply = self._pubsub._conn.call(handshake.request)
        except BaseException:
            self._sub.end(handshake, None)
            raise
        self._sub.end(handshake, reply)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (messages already queued for it are skipped)."""
        self._sub.unsubscribe(topic)

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (None: forever); None on timeout.

        Raises `MessagesLost` once for each gap, before the message that follows it, and
        `NodeUnavailable` if the node's supervisor has exited or the subscription is closed.
        """
        sub = self._sub
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = sub.get_nowait()
            if msg is not None:
                return msg
            wait = IDLE_WAIT if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return None
            if sub.sequencer.awaiting_mark:
                wait = min(wait, SYNC_RETRY)
            events = dict(self._poller.poll(max(1, int(wait * 1000))))
            if len(events) > (sub.socket in events) and sub.guard is not None:
                sub.guard.check()  # the supervisor's pidfd is readable: it exited

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
        self._sub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
