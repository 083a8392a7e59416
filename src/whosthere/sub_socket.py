"""`SubSocket`: the SUB socket of a process's feed from one node, and its `Feed`.

The part of a feed that is the same for both drivers: the socket's options and filters, the
halves of a member's subscribe around its round trip, reading what is queued, and the `Sync`
due when the queue drains. When to read, and how to make the round trip, is each driver's
own: `feed_thread.ThreadFeed` reads in a thread, `aio.feed_loop.LoopFeed` on the loop.

Every topic filter and inbox filter goes through the SUB socket's outgoing queue, which is
unbounded here (SNDHWM 0): with ZeroMQ's default of 1,000, filters past that were dropped
silently while nothing read the socket, and a large subscribe then hung until its timeout.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import zmq

from whosthere.client import NodeInfo
from whosthere.errors import MalformedFrame, NodeUnavailable
from whosthere.feed import Feed, FeedMember, Handshake
from whosthere.sequencer import Sequencer
from whosthere.topology import PUBSUB_PUB
from whosthere.transport import codec
from whosthere.transport.messages import MAILBOX_PREFIX, Subscribe, Sync
from whosthere.transport.sockets import readable, socket

log = logging.getLogger("whosthere.pubsub")

DEFAULT_SUBSCRIBER_HWM = 100_000  # messages queued for a subscriber before it loses some
READ_BATCH = 1_000  # frame sets read before the driver lets others have the lock or the loop


def request(handshake: Handshake) -> Subscribe:
    """What asks the PubSub actor to confirm a member's topics."""
    return Subscribe(handshake.topics, handshake.token)


class SubSocket:
    """The SUB socket of one feed, read into its `Feed`. Not thread-safe."""

    def __init__(self, info: NodeInfo, hwm: int = DEFAULT_SUBSCRIBER_HWM) -> None:
        self.guard = info.supervisor  # the node's supervisor, watched (or None)
        self.down = False  # the node went; one may serve its fixed address again
        sequencer = Sequencer(MAILBOX_PREFIX + uuid.uuid4().hex, hwm)
        self.feed = Feed(sequencer)
        self.socket = socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.SNDHWM, 0)  # filters are never dropped (module doc)
        self.socket.setsockopt(zmq.SUBSCRIBE, sequencer.mailbox_frame)  # lifelong, marks
        self.socket.connect(info.endpoints[PUBSUB_PUB])

    @property
    def awaiting_mark(self) -> bool:
        """Whether a `Sync` is unanswered (read again within `sequencer.SYNC_RETRY`)."""
        return self.feed.sequencer.awaiting_mark

    def begin(self, member: FeedMember, topics: Iterable[str]) -> Handshake | None:
        """`member` takes `topics`: the filters of those new to the feed are set, and a
        one-off inbox; the handshake to confirm with the actor (None: nothing new)."""
        if self.socket.closed:
            raise NodeUnavailable("the subscription reader has stopped")
        handshake = self.feed.join(member, topics, uuid.uuid4().hex)
        if handshake is None:
            return None
        for frame in handshake.new:
            self.socket.setsockopt(zmq.SUBSCRIBE, frame)
        self.socket.setsockopt(zmq.SUBSCRIBE, codec.inbox_frame(handshake.token))
        return handshake

    def end(self, handshake: Handshake, reply: list[Any] | None) -> None:
        """The actor's confirmation ([epoch, [seq, ...]]); None: it failed, filters undone."""
        self._unsubscribe([codec.inbox_frame(handshake.token)])
        if reply is None:
            self._unsubscribe(self.feed.fail(handshake))
        else:
            self.feed.confirm(handshake, reply)

    def leave(self, member: FeedMember, topic: str | None = None) -> None:
        """`member` stops taking `topic` (None: all of them)."""
        self._unsubscribe(self.feed.leave(member, topic))

    def read(self, limit: int = READ_BATCH) -> bool:
        """Read what is queued, up to `limit` frame sets; whether more may wait."""
        sock, feed = self.socket, self.feed
        for _ in range(limit):
            if not readable(sock):
                return False
            frames = sock.recv_multipart(zmq.NOBLOCK)
            try:
                feed.receive(frames)
            except MalformedFrame as exc:
                log.warning("dropped a malformed message or mark: %s", exc)
        return True

    def drained(self, now: float) -> Sync | None:
        """The queue is read to the end: the `Sync` to cast, if due (none to a gone node)."""
        return None if self.down or self.feed.gone is not None else self.feed.drained(now)

    def check_guard(self) -> bool:
        """Whether the node's supervisor is still there. Once gone, every member hears it
        once and may read on (DESIGN section 12): at a fixed address a node may serve it
        again (`revived`); elsewhere nothing comes any more."""
        if self.guard is None or self.feed.gone is not None or self.down:
            return self.feed.gone is None and not self.down
        try:
            self.guard.check()
        except NodeUnavailable as exc:
            self.feed.interrupt(exc)
            self.down = True
            return False
        return True

    def revived(self) -> None:
        """A node serves the address again (its guard re-armed): watch it."""
        if self.guard is not None and self.guard.changed is not None:
            self.feed.end(NodeUnavailable(self.guard.why()))
        self.down = False
        self.feed.resume()

    def close(self) -> None:
        """Close the socket (every filter goes with it). Idempotent."""
        self.socket.close(linger=0)

    def _unsubscribe(self, frames: list[bytes]) -> None:
        if self.socket.closed:
            return
        for frame in frames:
            self.socket.setsockopt(zmq.UNSUBSCRIBE, frame)
