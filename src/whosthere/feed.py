"""`Feed`: every subscription of one process to one node, over one node subscription. Pure.

A web worker holds a subscription per socket: a thousand of them over ten topics. Each used
to be its own SUB socket, which decoded every message of its topic again and woke on a timer
to look for losses. Here a process has one SUB socket per node (one `Sequencer`: numbers,
epochs, marks), and each message is decoded once and queued for the subscriptions of its
topic, the `FeedMember`s, as the Channels fan-out does for its channels. An idle member costs a
queue: nothing wakes it. The drivers (`feed_thread` for blocking readers, `aio.feed_loop`
for an event loop) own the socket and wake a member when its queue gains something.

What a member sees is what a subscription of its own would see:
- it gets a topic's messages published after its subscribe's confirmation (the actor's
  number then), never older ones, even when the topic was already subscribed by another
  member and older messages are still queued;
- a loss (a gap, a mark, a restart) reaches the members of the topics it touched, with
  their own counts;
- a member that does not keep up with its own queue (`hwm` messages) loses the messages
  that do not fit, and reads a `MessagesLost` where they were;
- the node's end reaches every member once, after its queue (`interrupt`); at a fixed
  address a node may serve again, and its first word (a new epoch) is then a
  `MessagesLost` for every member, and its messages follow. A node that came back unlike
  the old one ends the feed for good (`end`): every read raises.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from whosthere.errors import MessagesLost, NodeUnavailable
from whosthere.names import check_topic
from whosthere.sequencer import PUBSUB_RESTARTED, Message, Sequencer
from whosthere.transport import codec
from whosthere.transport.messages import Sync

FELL_BEHIND = "the subscriber fell behind"
NODE_RESTARTED = "a node serves the address again (the node restarted)"


class _Overflow:
    """Messages a member's full queue could not take, by topic: one loss where they were."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def lost(self) -> MessagesLost:
        counts: dict[str, int | None] = dict(self.counts)
        total = sum(self.counts.values())
        topic = next(iter(counts)) if len(counts) == 1 else "*"
        return MessagesLost(topic, total, FELL_BEHIND, counts)


def _nothing() -> None:
    pass


class FeedMember:
    """One subscription's share of a feed: its topics, and the queue of what it gets.

    `wake` is called by the driver when the queue gains something (it starts as a no-op)."""

    def __init__(self, hwm: int) -> None:
        self.hwm = hwm
        self.topics: dict[str, int] = {}  # topic -> the first number it gets (0: any)
        self.queue: deque[tuple[int, Any]] = deque()  # (number or -1, item)
        self.missed = 0  # messages known lost, over its life
        self.gone: NodeUnavailable | None = None  # the node ended: raised once read up
        self.wake: Callable[[], None] = _nothing

    def take(self) -> Message | None:
        """The next message, or None when the queue is empty.

        Raises `MessagesLost` where messages were lost, and `NodeUnavailable` once the
        node is gone and everything before it was read. Messages of topics unsubscribed
        since they were queued are skipped."""
        queue = self.queue
        while queue:
            item = queue.popleft()[1]
            if type(item) is Message:
                if item.topic in self.topics:
                    return item
                continue
            if isinstance(item, NodeUnavailable):
                raise item  # the node went: once (a node may serve its address again)
            lost = item.lost() if type(item) is _Overflow else item
            self.missed += lost.missed or 0
            raise lost
        if self.gone is not None:
            raise self.gone
        return None

    def close(self) -> None:
        """Its subscription is closed: a reader raises `NodeUnavailable`, woken now."""
        self.queue.clear()
        self.gone = NodeUnavailable("subscription is closed")
        self.wake()

    def put(self, seq: int, msg: Message) -> bool:
        """Queue `msg` (number `seq`) unless it came before this member's subscribe; whether
        the queue took something."""
        start = self.topics.get(msg.topic)
        if start is None or seq < start:
            return False
        queue = self.queue
        if len(queue) < self.hwm:
            queue.append((seq, msg))
            return True
        last = queue[-1][1]
        if type(last) is not _Overflow:
            last = _Overflow()
            queue.append((-1, last))
        last.counts[msg.topic] = last.counts.get(msg.topic, 0) + 1
        return True

    def confirmed(self, topic: str, seq: int) -> None:
        """The actor confirmed `topic` at number `seq`: only later ones are this member's."""
        if topic not in self.topics:
            return
        self.topics[topic] = seq + 1
        queue = self.queue
        if any(s <= seq and s >= 0 and m.topic == topic for s, m in queue):
            kept = [(s, m) for s, m in queue if not (0 <= s <= seq and m.topic == topic)]
            queue.clear()
            queue.extend(kept)


class Handshake:
    """A member's subscribe under way: the topics asked, those new to the feed (their
    socket filters were set), and the one-off inbox token the actor answers after."""

    __slots__ = ("member", "new", "token", "topics")

    def __init__(self, member: FeedMember, topics: list[str], new: dict[bytes, str], token: str):
        self.member = member
        self.topics = topics
        self.new = new
        self.token = token


class Feed:
    """The members of one node subscription, fed from its `Sequencer`. Not thread-safe: a
    driver calls it under its own lock, or from one event loop."""

    def __init__(self, sequencer: Sequencer) -> None:
        self.sequencer = sequencer
        self.by_topic: dict[str, dict[FeedMember, None]] = {}  # topic -> its members, in order
        self.members: dict[FeedMember, None] = {}
        self.woken: set[FeedMember] = set()  # members whose queue gained since `take_woken`
        self.gone: NodeUnavailable | None = None
        self.interrupted = False  # the node went; a restart seen next is the node's
        self.resumed = True  # a node serves the address again and clients can call it
        self._waiting: list[tuple[int, Message | MessagesLost]] | None = None  # see `resume`
        self._orphans: set[bytes] = set()  # pending frames whose handshake failed
        self._epoch = 0

    # -- members coming and going ------------------------------------------------------------

    def join(self, member: FeedMember, topics: Iterable[str], token: str) -> Handshake | None:
        """`member` starts taking `topics` (at once: confirmed later); None if it has them
        all. The handshake's `new` topics need their socket filters set by the driver."""
        asked: list[str] = []
        new: dict[bytes, str] = {}
        for topic in [check_topic(t) for t in topics]:  # every one checked before any joins
            if topic in member.topics or topic in asked:
                continue
            frame = codec.topic_frame(topic)
            asked.append(topic)
            member.topics[topic] = 0
            members = self.by_topic.get(topic)
            if members is None:
                members = self.by_topic[topic] = {}
                new[frame] = topic
            members[member] = None
        self.members[member] = None  # hears the node's end, even with no topic yet
        if not asked:
            return None
        self.sequencer.pend(new)
        return Handshake(member, asked, new, token)

    def confirm(self, handshake: Handshake, reply: list[Any]) -> None:
        """The actor's answer to `handshake` ([epoch, [number, ...]] for its topics)."""
        epoch, seqs = reply
        by_topic = dict(zip(handshake.topics, seqs, strict=True))
        frames = [  # the topics this handshake set the filters of, or one whose setter failed
            f
            for f in map(codec.topic_frame, handshake.topics)
            if self.sequencer.pending(f) and (f in handshake.new or f in self._orphans)
        ]
        self._orphans.difference_update(frames)
        topics = [codec.topic_of(f) or "" for f in frames]
        for seq, item in self.sequencer.confirm(frames, [epoch, [by_topic[t] for t in topics]]):
            self._dispatch(seq, item)
        self._epoch_check()
        if epoch == self.sequencer.epoch:
            for topic in handshake.topics:
                handshake.member.confirmed(topic, by_topic[topic])

    def fail(self, handshake: Handshake) -> list[bytes]:
        """`handshake` failed: the member leaves its topics; the frames to take off the
        socket. A topic whose filter it set and that others are subscribing to is then
        confirmed by the next of their replies."""
        frames: list[bytes] = []
        for topic in handshake.topics:
            frames += self.leave(handshake.member, topic)
        self._orphans.update(f for f in handshake.new if self.sequencer.pending(f))
        return frames

    def leave(self, member: FeedMember, topic: str | None = None) -> list[bytes]:
        """`member` stops taking `topic` (None: every topic; it is then out of the feed);
        the frames of topics no member takes any more, to take off the socket."""
        frames: list[bytes] = []
        for name in list(member.topics) if topic is None else [topic]:
            if member.topics.pop(name, None) is None:
                continue
            members = self.by_topic.get(name)
            if members is None:
                continue
            members.pop(member, None)
            if not members:
                del self.by_topic[name]
                frame = codec.topic_frame(name)
                if self.sequencer.pending(frame):
                    self.sequencer.unpend([frame])
                    self._orphans.discard(frame)
                    frames.append(frame)
                elif self.sequencer.unsubscribe(name) is not None:
                    frames.append(frame)
        if topic is None:
            self.members.pop(member, None)
            self.woken.discard(member)
        return frames

    # -- what the socket brings --------------------------------------------------------------

    def receive(self, frames: list[bytes]) -> None:
        """One frame set read from the socket."""
        if self.gone is not None:
            return
        for seq, item in self.sequencer.read(frames):
            self._dispatch(seq, item)
        self._epoch_check()

    def end(self, error: NodeUnavailable) -> None:
        """The node is gone: every member hears it once it has read its queue."""
        self.gone = error
        self.sequencer.forget_sync()
        self._waiting = None
        for member in self.members:
            member.gone = error
            self.woken.add(member)

    def interrupt(self, error: NodeUnavailable) -> None:
        """The node went, and one may serve its address again: every member hears `error`
        once, after what it had queued, and may read on."""
        self.interrupted, self.resumed = True, False
        self.sequencer.forget_sync()  # the mark asked for will never come
        for member in self.members:
            member.queue.append((-1, error))
            self.woken.add(member)

    def resume(self) -> None:
        """Clients can call the node serving the address again: the new node's restart and
        what followed it go to the members now. Held until then, so that a member that
        lists on hearing the restart reaches the new node."""
        self.resumed = True
        waiting, self._waiting = self._waiting, None
        for seq, item in waiting or ():
            self._dispatch(seq, item)

    def drained(self, now: float) -> Sync | None:
        """The socket is read to the end: the `Sync` to cast, if one is due (`Sequencer`)."""
        return self.sequencer.drained(now)

    def take_woken(self) -> list[FeedMember]:
        """The members to wake, once each."""
        woken = list(self.woken)
        self.woken.clear()
        return woken

    # -- inside ------------------------------------------------------------------------------

    def _dispatch(self, seq: int, item: Message | MessagesLost) -> None:
        if self._waiting is not None:
            self._waiting.append((seq, item))
            return
        if seq >= 0:
            assert isinstance(item, Message)
            members = self.by_topic.get(item.topic)
            if members:
                woken = self.woken
                for member in members:
                    if member.put(seq, item):
                        woken.add(member)
            return
        assert isinstance(item, MessagesLost)
        if item.reason == PUBSUB_RESTARTED:  # numbers start again: before what follows
            self._restart_numbers()
        if self.interrupted and item.reason == PUBSUB_RESTARTED:
            item = MessagesLost(item.topic, item.missed, NODE_RESTARTED, item.counts)
            self.interrupted = False
            if not self.resumed:
                self._waiting = [(seq, item)]
                return
        for member in self.members:
            counts = _owed(item, member.topics)
            if not counts:
                continue
            known = [n for n in counts.values() if n is not None]
            missed = sum(known) if len(known) == len(counts) else None
            topic = next(iter(counts)) if len(counts) == 1 else "*"
            member.queue.append((-1, MessagesLost(topic, missed, item.reason, counts)))
            self.woken.add(member)

    def _epoch_check(self) -> None:
        """After a restart, numbers start again: every member takes a topic from 0."""
        if self.sequencer.epoch != self._epoch:
            if self._epoch:
                self._restart_numbers()
            self._epoch = self.sequencer.epoch

    def _restart_numbers(self) -> None:
        for member in self.members:
            for topic in member.topics:
                member.topics[topic] = 0
        self._epoch = self.sequencer.epoch


def _owed(lost: MessagesLost, topics: dict[str, int]) -> dict[str, int | None]:
    """What of `lost` a member taking `topics` (each from its first number) missed: a gap
    wholly before a member's subscribe is not its loss, and one it straddles counts from
    there."""
    owed: dict[str, int | None] = {}
    for topic, count in lost.counts.items():
        start = topics.get(topic)
        if start is None:
            continue
        last = lost.last.get(topic)
        if count is None or last is None or not start:
            owed[topic] = count
        elif start <= last:
            owed[topic] = last - max(last - count + 1, start) + 1
    return owed
