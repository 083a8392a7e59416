"""The PubSub client: broadcast to topics and subscribe to them, from any process.

How a `Subscription` hears of what it lost (the actor's side is in `actors/pubsub.py`):
- a hole in a topic's sequence numbers, when the next message arrives;
- a `Mark` on its lifelong inbox filter. It asks for one (`Sync`, a cast) when its queue
  drains after `sync_after` messages: a subscriber that overflowed always reads at least
  about that many queued messages before the gap (ZeroMQ stops taking messages in only when
  the receiving queue is full), so it asks right after reading past what it still had, and
  a mark naming a number it has not seen means those messages were dropped. A mark that is
  itself dropped is asked for again after `SYNC_RETRY`;
- a new epoch on any message or mark: the PubSub actor restarted (reported once for all
  topics; messages of the old epoch still queued after that are skipped);
- the node's supervisor exiting (a pidfd polled beside the socket): `NodeUnavailable`.

Every topic filter and inbox filter goes through the SUB socket's outgoing queue, which is
unbounded here (SNDHWM 0): with ZeroMQ's default of 1,000, filters past that were dropped
silently while nothing read the socket, and a large subscribe then hung until its timeout.
"""

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
from whosthere.transport.messages import (
    MAILBOX_PREFIX,
    Broadcast,
    Mark,
    Published,
    Subscribe,
    Sync,
)
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Connection, socket

log = logging.getLogger("whosthere.pubsub")

DEFAULT_SUBSCRIBER_HWM = 100_000  # messages queued in a subscriber before the PubSub drops
SYNC_RUN = 1_000  # messages read between two `Sync`s at most (fewer with a small hwm)
SYNC_RETRY = 0.25  # seconds without the asked-for mark before asking again
SYNC_CAST_TIMEOUT = 0.1  # seconds a `Sync` may wait to be queued (else: asked again later)


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
        self._conn = Connection(
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

    def sync(self, topics: list[str], inbox: str) -> list[Any]:
        """Confirm SUB filters with the actor (see `messages.Subscribe`): [epoch, [seq...]]."""
        return self._conn.call(Subscribe(topics, inbox))

    def ask_mark(self, mailbox: str, topics: list[str]) -> None:
        """Ask for a `Mark` of `topics` on `mailbox` (see `messages.Sync`); NodeUnavailable
        if it cannot be queued within `SYNC_CAST_TIMEOUT`."""
        self._conn.cast(Sync(mailbox, topics), SYNC_CAST_TIMEOUT)

    def close(self, flush_timeout: float = 1.0) -> None:
        """Deliver what this thread broadcast (up to `flush_timeout` s), then disconnect."""
        self._conn.close(flush_timeout)

    def __enter__(self) -> PubSub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Handshake = tuple[dict[bytes, str], str]  # a subscribe's topic frames -> topics, inbox token


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
        self._guard = pubsub.info.supervisor  # the node's supervisor, watched (or None)
        self._socket = socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        self._socket.setsockopt(zmq.SNDHWM, 0)  # filters are never dropped (module doc)
        self._mailbox_token = MAILBOX_PREFIX + uuid.uuid4().hex
        self._mailbox = codec.inbox_frame(self._mailbox_token)  # lifelong inbox, for marks
        self._socket.setsockopt(zmq.SUBSCRIBE, self._mailbox)
        self._socket.connect(pubsub.info.endpoints[PUBSUB_PUB])
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        guard_fd = None if self._guard is None else self._guard.fileno()
        if guard_fd is not None:
            self._poller.register(guard_fd, zmq.POLLIN)
        self._expect: dict[bytes, list[int]] = {}  # topic frame -> [epoch, next seq (0: any)]
        self._epoch = 0  # the PubSub actor's epoch as last seen (0: none yet)
        self._old_epochs: set[int] = set()  # epochs left behind: their stragglers are skipped
        self._held: Message | None = None  # arrived after a reported gap
        self._restarted = False  # a restart seen by `subscribe`, to report on the next `get`
        self._sync_after = max(1, min(SYNC_RUN, hwm // 2))
        self._since_sync = 0  # messages read since the last `Sync`
        self._sync_asked = 0.0  # monotonic time of the unanswered `Sync`, 0 if none
        self.missed = 0  # messages known lost, over the subscription's life
        try:
            self.subscribe(*topics)
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

    def subscribe(self, *topics: str) -> None:
        """Add `topics` (any number, one round trip); in place when this returns.

        Raises `NodeUnavailable` if the PubSub actor does not confirm within the timeout.
        """
        handshake = self.begin_subscribe(topics)
        if handshake is None:
            return
        try:
            reply = self._pubsub.sync(list(handshake[0].values()), handshake[1])
        except BaseException:
            self.end_subscribe(handshake, None)
            raise
        self.end_subscribe(handshake, reply)

    # The two halves of `subscribe` around its call, for a client that makes the call its
    # own way (whosthere.aio).

    def begin_subscribe(self, topics: tuple[str, ...]) -> Handshake | None:
        """Set the filters of the topics not subscribed yet, and a one-off inbox; what to
        ask the actor to confirm (None: nothing new)."""
        frames = {}
        for topic in topics:
            frame = codec.topic_frame(check_topic(topic))
            if frame not in self._expect:
                frames.setdefault(frame, topic)
        if not frames:
            return None
        token = uuid.uuid4().hex
        for frame in frames:
            self._socket.setsockopt(zmq.SUBSCRIBE, frame)
        self._socket.setsockopt(zmq.SUBSCRIBE, codec.inbox_frame(token))
        return frames, token

    def end_subscribe(self, handshake: Handshake, reply: list[Any] | None) -> None:
        """The actor's confirmation ([epoch, [seq, ...]]); None: it failed, filters undone."""
        frames, token = handshake
        self._socket.setsockopt(zmq.UNSUBSCRIBE, codec.inbox_frame(token))
        if reply is None:
            for frame in frames:
                self._socket.setsockopt(zmq.UNSUBSCRIBE, frame)
            return
        epoch, seqs = reply
        if self._epoch and epoch != self._epoch:  # restarted meanwhile: report it on `get`
            self._epoch_changed(epoch)
            self._restarted = bool(self._expect)
        self._epoch = epoch
        for frame, seq in zip(frames, seqs, strict=True):
            self._expect[frame] = [epoch, seq + 1]

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (messages already queued for it are skipped)."""
        frame = codec.topic_frame(check_topic(topic))
        if self._expect.pop(frame, None) is not None:
            self._socket.setsockopt(zmq.UNSUBSCRIBE, frame)

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to `timeout` seconds (None: forever); None on timeout.

        Raises `MessagesLost` once for each gap, before the message that follows it, and
        `NodeUnavailable` if the node's supervisor has exited or the subscription is closed.
        """
        if self._held is not None:
            msg, self._held = self._held, None
            return msg
        if self._socket.closed:
            raise NodeUnavailable("subscription is closed")
        if self._restarted:
            self._restarted = False
            raise self._restart_lost()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._socket.poll(0):
                msg = self._receive()
                if msg is not None:
                    return msg
                continue
            self._drained()
            wait = 1.0 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return None
            if self._sync_asked:
                wait = min(wait, SYNC_RETRY)
            events = dict(self._poller.poll(max(1, int(wait * 1000))))
            if len(events) > (self._socket in events) and self._guard is not None:
                self._guard.check()  # the supervisor's pidfd is readable: it exited

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

    def _drained(self) -> None:
        """The queue is empty: ask for a mark after a long run, or again if one went missing."""
        if self._guard is not None and self._guard.fileno() is None:
            self._guard.check()  # no pidfd on this platform: ask the process table
        now = time.monotonic()
        due = self._since_sync >= self._sync_after or (
            self._sync_asked and now - self._sync_asked >= SYNC_RETRY
        )
        if not due or not self._expect:
            return
        try:
            self._pubsub.ask_mark(self._mailbox_token, self.topics)
        except NodeUnavailable:
            log.debug("could not ask the PubSub actor for a mark; asking again later")
        self._since_sync = 0
        self._sync_asked = now

    def _epoch_changed(self, epoch: int) -> None:
        """The PubSub actor restarted: every topic starts afresh in `epoch`."""
        if self._epoch:
            self._old_epochs.add(self._epoch)
        self._epoch = epoch
        for expect in self._expect.values():
            if expect[0] != epoch:
                expect[0], expect[1] = epoch, 0

    def _restart_lost(self) -> MessagesLost:
        topics = self.topics
        return MessagesLost(
            topics[0] if len(topics) == 1 else "*", None, "the PubSub actor restarted"
        )

    def _receive(self) -> Message | None:
        frames = self._socket.recv_multipart(zmq.NOBLOCK)
        if len(frames) != 2:
            return None
        if frames[0] == self._mailbox:
            self._on_mark(frames[1])
            return None
        expect = self._expect.get(frames[0])
        if expect is None:
            return None  # a topic unsubscribed since, or not a message
        try:
            pub = codec.decode(frames[1])
        except MalformedFrame as exc:
            log.warning("dropped malformed message: %s", exc)
            return None
        if not isinstance(pub, Published) or pub.epoch in self._old_epochs:
            return None  # not a message, or queued before a restart already reported
        self._since_sync += 1
        topic = codec.topic_of(frames[0]) or ""
        msg = Message(topic, pub.event, pub.payload)
        if pub.epoch != self._epoch:
            self._epoch_changed(pub.epoch)
            expect[1] = pub.seq + 1
            self._held = msg
            raise self._restart_lost()
        seq = expect[1]
        if pub.seq < seq or expect[0] != pub.epoch:
            return None  # published before this subscription was in place, or kept & replayed
        expect[1] = pub.seq + 1
        if pub.seq > seq and seq:
            self.missed += pub.seq - seq
            self._held = msg
            raise MessagesLost(topic, pub.seq - seq, "the subscriber fell behind")
        return msg

    def _on_mark(self, body: bytes) -> None:
        """A `Mark`: a new epoch is a restart; numbers not seen before it were dropped."""
        try:
            mark = codec.decode(body)
        except MalformedFrame as exc:
            log.warning("dropped malformed mark: %s", exc)
            return
        if not isinstance(mark, Mark) or mark.epoch in self._old_epochs:
            return
        if not self._epoch:  # the first word from the actor: nothing to compare with
            self._epoch = mark.epoch
        if mark.epoch != self._epoch:
            self._epoch_changed(mark.epoch)
            raise self._restart_lost()
        if mark.seqs:
            self._sync_asked = 0.0
        lost: dict[str, int] = {}
        for topic, last in mark.seqs.items():
            expect = self._expect.get(codec.topic_frame(topic))
            if expect is None or expect[0] != mark.epoch:
                continue
            if expect[1] and last >= expect[1]:
                lost[topic] = last - expect[1] + 1
            expect[1] = max(expect[1], last + 1)
        if lost:
            total = sum(lost.values())
            self.missed += total
            topic = next(iter(lost)) if len(lost) == 1 else "*"
            raise MessagesLost(topic, total, "the subscriber fell behind")
