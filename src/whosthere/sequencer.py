"""`Sequencer`: what a subscription makes of the frames it receives, without a socket.

Frames in (topic frame and body, as the SUB socket hands them over), `Message` or
`MessagesLost` out, and when to ask the PubSub actor for a `Mark` (`drained`). The
synchronous `Subscription` and the asyncio `AsyncSubscription` both feed it from their SUB
socket (`sub_socket.SubSocket`), and its tests feed it frames made by hand. It reads no
clock: the time comes with `drained`.

How a subscription hears of what it lost (the actor's side is in `actors/pubsub.py`):
- a hole in a topic's sequence numbers, when the next message arrives: the loss first, then
  the message, held for the next read;
- a `Mark` on its lifelong inbox filter. It asks for one (`Sync`) when its queue drains after
  `sync_after` messages: a subscriber that overflowed always reads at least about that many
  queued messages before the gap (ZeroMQ stops taking messages in only when the receiving
  queue is full), so it asks right after reading past what it still had, and a mark naming
  a number it has not seen means those messages were dropped. A mark that is itself dropped
  is asked for again after `SYNC_RETRY`;
- a new epoch on any message or mark: the PubSub actor restarted (reported once for all
  topics; messages of the old epoch still queued after that are skipped). A restart seen
  while subscribing more topics is reported by the next read.
Numbers below the one expected were published before the subscription was in place (a
restarted actor replays its first seconds to those that reconnect): skipped.

A topic whose subscribe is under way is *pending* (`pend`): its messages that arrive before
the actor's confirmation are kept, and `subscribed` reads them then, against the number
confirmed. A reader that reads while another caller subscribes (the process's shared feed,
`feed`) so loses nothing published after the confirmation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, TypeAlias

from whosthere.errors import MessagesLost
from whosthere.names import check_topic
from whosthere.transport import codec
from whosthere.transport.messages import Mark, Published, Sync

SYNC_RUN = 1_000  # messages read between two `Sync`s at most (fewer with a small hwm)
SYNC_RETRY = 0.25  # seconds without the asked-for mark before asking again
PUBSUB_RESTARTED = "the PubSub actor restarted"  # a `MessagesLost`'s reason on a new epoch


class Message(NamedTuple):
    """A message received on a subscription."""

    topic: str
    event: str
    payload: Any


Received: TypeAlias = tuple[int, "Message | MessagesLost"]  # (sequence number or -1, item)


class Sequencer:
    """The sequence numbers, epochs and marks of one subscription (see the module doc).

    `mailbox` is the token of its lifelong inbox, where marks come; `hwm` the number of
    messages its socket queues, which sets how often it asks for a mark."""

    def __init__(self, mailbox: str, hwm: int) -> None:
        self.mailbox = mailbox  # the lifelong inbox's token, named in `Sync`
        self.mailbox_frame = codec.inbox_frame(mailbox)  # its SUB filter: marks start so
        self.missed = 0  # messages known lost, over the subscription's life
        self._expect: dict[bytes, list[int]] = {}  # topic frame -> [epoch, next seq (0: any)]
        self._epoch = 0  # the PubSub actor's epoch as last seen (0: none yet)
        self._old_epochs: set[int] = set()  # epochs left behind: their stragglers are skipped
        self._held: Message | None = None  # arrived after a reported gap
        self._restarted = False  # a restart seen by `subscribed`, to report on the next read
        self._sync_after = max(1, min(SYNC_RUN, hwm // 2))
        self._since_sync = 0  # messages read since the last `Sync`
        self._sync_asked: float | None = None  # when the unanswered `Sync` was asked
        self._pending: dict[bytes, list[list[bytes]]] = {}  # topic frame -> frames kept
        self.seq = 0  # the number of the last message `receive` returned or held

    @property
    def topics(self) -> list[str]:
        """The topics subscribed, in the order they were."""
        return [codec.topic_of(f) or "" for f in self._expect]

    @property
    def awaiting_mark(self) -> bool:
        """Whether a `Sync` is unanswered (the reader should look again by `SYNC_RETRY`)."""
        return self._sync_asked is not None

    # -- subscribing -------------------------------------------------------------------------

    def new_frames(self, topics: Iterable[str]) -> dict[bytes, str]:
        """The topic frames (SUB filters) of `topics` not subscribed yet, each with its topic.
        `TypeError` for a topic that is not a str, `ValueError` for one too long."""
        frames: dict[bytes, str] = {}
        for topic in topics:
            frame = codec.topic_frame(check_topic(topic))
            if frame not in self._expect:
                frames.setdefault(frame, topic)
        return frames

    def pend(self, frames: Iterable[bytes]) -> None:
        """Keep the messages of `frames` (a subscribe under way) until `subscribed` or
        `unpend`."""
        for frame in frames:
            self._pending.setdefault(frame, [])

    def pending(self, frame: bytes) -> bool:
        """Whether `frame`'s subscribe is under way (its messages are kept)."""
        return frame in self._pending

    def unpend(self, frames: Iterable[bytes]) -> None:
        """The subscribe of `frames` failed: drop what was kept for them."""
        for frame in frames:
            self._pending.pop(frame, None)

    def confirm(self, frames: Iterable[bytes], reply: list[Any]) -> list[Received]:
        """`subscribed`, then what the pending `frames` kept, read against the numbers
        confirmed (and a restart seen meanwhile, first)."""
        frames = list(frames)
        self.subscribed(frames, reply)
        out: list[Received] = []
        lost = self.take_restart()
        if lost is not None:
            out.append((-1, lost))
        for frame in frames:
            for kept in self._pending.pop(frame, ()):
                out += self.read(kept)
        return out

    def read(self, frames: list[bytes]) -> list[Received]:
        """What one frame set means, in order: nothing, a message, a loss, or a loss and
        the message after it; each message with its number (-1 for a loss)."""
        if frames[0] in self._pending and len(frames) == 2:
            self._pending[frames[0]].append(frames)
            return []
        got = self.receive(frames)
        if got is None:
            return []
        if isinstance(got, Message):
            return [(self.seq, got)]
        held = self.take_held()
        return [(-1, got)] if held is None else [(-1, got), (self.seq, held)]

    def subscribed(self, frames: Iterable[bytes], reply: list[Any]) -> None:
        """The actor confirmed `frames` (`Subscribe`): its reply is [epoch, [seq, ...]], the
        number each topic has reached. A new epoch means it restarted meanwhile: the topics
        already subscribed hear of it on the next read."""
        epoch, seqs = reply
        if epoch in self._old_epochs:  # answered by an actor already replaced: any number
            for frame in frames:
                self._expect[frame] = [self._epoch, 0]
            return
        if self._epoch and epoch != self._epoch:
            self._epoch_changed(epoch)
            self._restarted = bool(self._expect)
        self._epoch = epoch
        for frame, seq in zip(frames, seqs, strict=True):
            self._expect[frame] = [epoch, seq + 1]

    def unsubscribe(self, topic: str) -> bytes | None:
        """Forget `topic` (its messages still queued are skipped): its frame, to take off
        the socket, or None if it was not subscribed."""
        frame = codec.topic_frame(check_topic(topic))
        return frame if self._expect.pop(frame, None) is not None else None

    # -- reading -----------------------------------------------------------------------------

    def take_held(self) -> Message | None:
        """The message that came after the last reported gap, once."""
        held, self._held = self._held, None
        return held

    def take_restart(self) -> MessagesLost | None:
        """The restart seen by `subscribed`, once."""
        if not self._restarted:
            return None
        self._restarted = False
        return self._restart_lost()

    def receive(self, frames: list[bytes]) -> Message | MessagesLost | None:
        """What one frame set from the socket means: a message, a loss to report (the
        message after a gap is then held: `take_held`), or nothing (a mark with no loss, a
        topic no longer subscribed, a number already seen, a straggler of an old epoch).
        `MalformedFrame` for a body that does not decode, nothing changed."""
        if len(frames) != 2:
            return None
        if frames[0] == self.mailbox_frame:
            return self._on_mark(frames[1])
        expect = self._expect.get(frames[0])
        if expect is None:
            return None  # a topic unsubscribed since, or not a message
        pub = codec.decode(frames[1])
        if not isinstance(pub, Published) or pub.epoch in self._old_epochs:
            return None  # not a message, or queued before a restart already reported
        self._since_sync += 1
        topic = codec.topic_of(frames[0]) or ""
        msg = Message(topic, pub.event, pub.payload)
        self.seq = pub.seq
        if pub.epoch != self._epoch:
            self._epoch_changed(pub.epoch)
            expect[1] = pub.seq + 1
            self._held = msg
            return self._restart_lost()
        seq = expect[1]
        if pub.seq < seq or expect[0] != pub.epoch:
            return None  # published before this subscription was in place, or kept & replayed
        expect[1] = pub.seq + 1
        if pub.seq > seq and seq:
            self.missed += pub.seq - seq
            self._held = msg
            return MessagesLost(
                topic,
                pub.seq - seq,
                "the subscriber fell behind",
                {topic: pub.seq - seq},
                {topic: pub.seq - 1},
            )
        return msg

    def forget_sync(self) -> None:
        """The actor that was asked for a mark is gone: stop waiting for it."""
        self._sync_asked = None
        self._since_sync = 0

    def drained(self, now: float) -> Sync | None:
        """The socket's queue is empty (at `now`, monotonic seconds): the `Sync` to cast after
        a long run, or again when the asked-for mark went missing; counted as asked."""
        due = self._since_sync >= self._sync_after or (
            self._sync_asked is not None and now - self._sync_asked >= SYNC_RETRY
        )
        if not due or not self._expect:
            return None
        self._since_sync = 0
        self._sync_asked = now
        return Sync(self.mailbox, self.topics)

    # -- inside ------------------------------------------------------------------------------

    def _epoch_changed(self, epoch: int) -> None:
        """The PubSub actor restarted: every topic starts afresh in `epoch`."""
        if self._epoch:
            self._old_epochs.add(self._epoch)
        self._epoch = epoch
        for expect in self._expect.values():
            if expect[0] != epoch:
                expect[0], expect[1] = epoch, 0

    @property
    def epoch(self) -> int:
        """The PubSub actor's epoch as last seen (0: none yet)."""
        return self._epoch

    def _restart_lost(self) -> MessagesLost:
        topics = self.topics
        return MessagesLost(
            topics[0] if len(topics) == 1 else "*",
            None,
            PUBSUB_RESTARTED,
            dict.fromkeys(topics),
        )

    def _on_mark(self, body: bytes) -> MessagesLost | None:
        """A `Mark`: a new epoch is a restart; numbers not seen before it were dropped."""
        mark = codec.decode(body)
        if not isinstance(mark, Mark) or mark.epoch in self._old_epochs:
            return None
        if not self._epoch:  # the first word from the actor: nothing to compare with
            self._epoch = mark.epoch
        if mark.epoch != self._epoch:
            self._epoch_changed(mark.epoch)
            return self._restart_lost()
        if mark.seqs:
            self._sync_asked = None
        lost: dict[str, int] = {}
        lasts: dict[str, int] = {}
        for topic, last in mark.seqs.items():
            expect = self._expect.get(codec.topic_frame(topic))
            if expect is None or expect[0] != mark.epoch:
                continue
            if expect[1] and last >= expect[1]:
                lost[topic] = last - expect[1] + 1
                lasts[topic] = last
            expect[1] = max(expect[1], last + 1)
        if not lost:
            return None
        total = sum(lost.values())
        self.missed += total
        return MessagesLost(
            next(iter(lost)) if len(lost) == 1 else "*",
            total,
            "the subscriber fell behind",
            dict(lost),
            lasts,
        )
