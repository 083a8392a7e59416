"""`SubSocket`: a subscription's SUB socket and its `Sequencer`, read without waiting.

The part of a subscription that is the same in both clients: the socket's options and
filters, the halves of a subscribe around its round trip, one read of whatever is queued,
and the `Sync` cast when the queue drains. How to wait for the socket, and how to make the
round trip, is each client's own: `pubsub.Subscription` polls, `aio.pubsub.AsyncSubscription`
waits on the event loop.

Every topic filter and inbox filter goes through the SUB socket's outgoing queue, which is
unbounded here (SNDHWM 0): with ZeroMQ's default of 1,000, filters past that were dropped
silently while nothing read the socket, and a large subscribe then hung until its timeout.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import zmq

from whosthere.client import NodeInfo
from whosthere.errors import MalformedFrame, MessagesLost, NodeUnavailable
from whosthere.sequencer import Message, Sequencer
from whosthere.topology import PUBSUB_PUB
from whosthere.transport import codec
from whosthere.transport.messages import MAILBOX_PREFIX, Subscribe, Sync
from whosthere.transport.sockets import readable, socket

log = logging.getLogger("whosthere.pubsub")

DEFAULT_SUBSCRIBER_HWM = 100_000  # messages queued in a subscriber before the PubSub drops


class Handshake(NamedTuple):
    """A subscribe under way: the new topics' filters are set, and a one-off inbox."""

    frames: dict[bytes, str]  # the new topic frames -> their topics
    token: str  # the one-off inbox, subscribed right after the topics

    @property
    def request(self) -> Subscribe:
        """What asks the PubSub actor to confirm the filters."""
        return Subscribe(list(self.frames.values()), self.token)


class SubSocket:
    """The SUB socket of one subscription, fed to its `Sequencer`. Not thread-safe.

    `ask` casts a `Sync` to the PubSub actor (it never waits long: `NodeUnavailable` if it
    cannot, and the mark is asked for again later)."""

    def __init__(self, info: NodeInfo, hwm: int, ask: Callable[[Sync], None]) -> None:
        self.guard = info.supervisor  # the node's supervisor, watched (or None)
        self.sequencer = Sequencer(MAILBOX_PREFIX + uuid.uuid4().hex, hwm)
        self.socket = socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.SNDHWM, 0)  # filters are never dropped (module doc)
        self.socket.setsockopt(zmq.SUBSCRIBE, self.sequencer.mailbox_frame)  # lifelong, marks
        self.socket.connect(info.endpoints[PUBSUB_PUB])
        self._ask = ask

    def begin(self, topics: Iterable[str]) -> Handshake | None:
        """Set the filters of the topics not subscribed yet, and a one-off inbox; what to
        ask the actor to confirm (None: nothing new)."""
        frames = self.sequencer.new_frames(topics)
        if not frames:
            return None
        token = uuid.uuid4().hex
        for frame in frames:
            self.socket.setsockopt(zmq.SUBSCRIBE, frame)
        self.socket.setsockopt(zmq.SUBSCRIBE, codec.inbox_frame(token))
        return Handshake(frames, token)

    def end(self, handshake: Handshake, reply: list[Any] | None) -> None:
        """The actor's confirmation ([epoch, [seq, ...]]); None: it failed, filters undone."""
        self.socket.setsockopt(zmq.UNSUBSCRIBE, codec.inbox_frame(handshake.token))
        if reply is None:
            for frame in handshake.frames:
                self.socket.setsockopt(zmq.UNSUBSCRIBE, frame)
            return
        self.sequencer.subscribed(handshake.frames, reply)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (messages already queued for it are skipped)."""
        frame = self.sequencer.unsubscribe(topic)
        if frame is not None:
            self.socket.setsockopt(zmq.UNSUBSCRIBE, frame)

    def get_nowait(self) -> Message | None:
        """The next message if one is queued, else None (after asking for a mark if due).

        Raises `MessagesLost` once for each gap, before the message that follows it, and
        `NodeUnavailable` if the node's supervisor has exited or the socket is closed."""
        sequencer = self.sequencer
        held = sequencer.take_held()
        if held is not None:
            return held
        if self.socket.closed:
            raise NodeUnavailable("subscription is closed")
        lost = sequencer.take_restart()
        if lost is not None:
            raise lost
        while readable(self.socket):
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
            try:
                got = sequencer.receive(frames)
            except MalformedFrame as exc:
                log.warning("dropped a malformed message or mark: %s", exc)
                continue
            if isinstance(got, MessagesLost):
                raise got
            if got is not None:
                return got
        self._drained()
        return None

    def close(self) -> None:
        """Close the socket (every filter goes with it). Idempotent."""
        self.socket.close(linger=0)

    def _drained(self) -> None:
        """The queue is empty: ask for a mark after a long run, or again if one went missing."""
        if self.guard is not None and self.guard.fileno() is None:
            self.guard.check()  # no pidfd on this platform: ask the process table
        sync = self.sequencer.drained(time.monotonic())
        if sync is not None:
            try:
                self._ask(sync)
            except NodeUnavailable:
                log.debug("could not ask the PubSub actor for a mark; asking again later")
