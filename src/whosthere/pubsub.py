"""The PubSub client: broadcast to topics and subscribe to them, from any process."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import zmq

from whosthere.client import NodeInfo, lookup
from whosthere.errors import MalformedFrame, MessagesLost, NodeUnavailable
from whosthere.topology import PUBSUB, PUBSUB_PUB
from whosthere.transport import codec
from whosthere.transport.messages import Broadcast, Published, Subscribe
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Connection, socket

log = logging.getLogger("whosthere.pubsub")

DEFAULT_SUBSCRIBER_HWM = 100_000  # messages queued in a subscriber before the PubSub drops


class Message(NamedTuple):
    """A message received on a subscription."""

    topic: str
    event: str
    payload: Any


def check_topic(topic: object, what: str = "topic") -> str:
    """`topic` if it is a str (`TypeError` naming `what` if not)."""
    if not isinstance(topic, str):
        raise TypeError(f"{what} must be a str, got {type(topic).__name__}")
    return topic


class PubSub:
    """A node's PubSub actor, seen from one process. Safe to share between threads."""

    def __init__(self, info: NodeInfo, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.info = info
        self.timeout = timeout
        self._conn = Connection(info.endpoints[PUBSUB], timeout=timeout, what="pubsub actor")

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

    def sync(self, topic: str, inbox: str) -> list[int]:
        """Confirm a SUB filter with the actor (see `messages.Subscribe`): [epoch, seq]."""
        return self._conn.call(Subscribe(topic, inbox))

    def close(self, flush_timeout: float = 1.0) -> None:
        """Deliver what this thread broadcast (up to `flush_timeout` s), then disconnect."""
        self._conn.close(flush_timeout)

    def __enter__(self) -> PubSub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription:
    """Messages on some topics, in publication order: an iterator and a context manager.

    `get` raises `MessagesLost` when messages were lost before the next one (the subscriber
    fell behind the high-water mark `hwm`, or the PubSub actor restarted); the subscription
    stays usable and the next `get` returns that next message. Use it from one thread.
    """

    def __init__(self, pubsub: PubSub, topics: tuple[str, ...] = (), *, hwm: int) -> None:
        self._pubsub = pubsub
        self._socket = socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        self._socket.connect(pubsub.info.endpoints[PUBSUB_PUB])
        self._expect: dict[bytes, list[int]] = {}  # topic frame -> [epoch, next seq]
        self._held: Message | None = None  # arrived after a reported gap
        self.missed = 0  # messages known lost, over the subscription's life
        try:
            for topic in topics:
                self.subscribe(topic)
        except BaseException:
            self.close()
            raise

    @property
    def socket(self) -> zmq.Socket:
        """The SUB socket, to poll beside others (then call `get(timeout=0)`)."""
        return self._socket

    @property
    def topics(self) -> list[str]:
        return [codec.topic_of(f) or "" for f in self._expect]

    def subscribe(self, topic: str) -> None:
        """Add `topic`; in place when this returns. Raises `NodeUnavailable`."""
        frame = codec.topic_frame(check_topic(topic))
        if frame in self._expect:
            return
        token = uuid.uuid4().hex
        inbox = codec.inbox_frame(token)
        self._socket.setsockopt(zmq.SUBSCRIBE, frame)
        self._socket.setsockopt(zmq.SUBSCRIBE, inbox)
        try:
            epoch, seq = self._pubsub.sync(topic, token)
        except BaseException:
            self._socket.setsockopt(zmq.UNSUBSCRIBE, frame)
            raise
        finally:
            self._socket.setsockopt(zmq.UNSUBSCRIBE, inbox)
        self._expect[frame] = [epoch, seq + 1]

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (messages already queued for it are skipped)."""
        frame = codec.topic_frame(check_topic(topic))
        if self._expect.pop(frame, None) is not None:
            self._socket.setsockopt(zmq.UNSUBSCRIBE, frame)

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (None: forever); None on timeout.

        Raises `MessagesLost` once for each gap, before the message that follows it.
        """
        if self._held is not None:
            msg, self._held = self._held, None
            return msg
        if self._socket.closed:
            raise NodeUnavailable("subscription is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                ready = self._socket.poll(1000)
            else:
                ready = self._socket.poll(max(0, int((deadline - time.monotonic()) * 1000)))
            if ready:
                msg = self._receive()
                if msg is not None:
                    return msg
            elif deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.get()
            if msg is not None:
                yield msg

    def close(self) -> None:
        """Unsubscribe from everything. Idempotent."""
        self._socket.close(linger=0)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _receive(self) -> Message | None:
        frames = self._socket.recv_multipart(zmq.NOBLOCK)
        expect = self._expect.get(frames[0]) if len(frames) == 2 else None
        if expect is None:
            return None  # a topic unsubscribed since, or not a message
        try:
            pub = codec.decode(frames[1])
        except MalformedFrame as exc:
            log.warning("dropped malformed message: %s", exc)
            return None
        if not isinstance(pub, Published):
            return None
        topic = codec.topic_of(frames[0]) or ""
        msg = Message(topic, pub.event, pub.payload)
        epoch, seq = expect
        if pub.epoch != epoch:
            expect[0], expect[1] = pub.epoch, pub.seq + 1
            self._held = msg
            raise MessagesLost(topic, None, "the PubSub actor restarted")
        if pub.seq < seq:
            return None  # published before this subscription was in place
        expect[1] = pub.seq + 1
        if pub.seq > seq:
            self.missed += pub.seq - seq
            self._held = msg
            raise MessagesLost(topic, pub.seq - seq, "the subscriber fell behind")
        return msg
