"""The PubSub actor: topic fan-out for the node.

Publishers send `Broadcast` to the mailbox (one DEALER per publisher thread, so per publisher
and topic the order is kept); the actor stamps each message with its epoch and the topic's
next sequence number and publishes it on an XPUB socket that subscribers' SUB sockets connect
to. Topic frames are length-prefixed (`codec.topic_frame`), so matching is exact.

Why sequence numbers: XPUB drops, per subscriber, what exceeds the high-water mark, so that a
slow subscriber never blocks the others. The subscriber sees the hole in the numbers and
raises `MessagesLost` rather than diverge silently. A new epoch (a restarted actor) is a
possible loss too.

Numbering: only topics that have subscribers (as XPUB reports them) are numbered; a topic's
count starts from the actor's total of published messages, which only grows, so a topic that
loses its last subscriber and gains a new one never reuses a number within an epoch. Messages
to topics nobody subscribes to are not sent at all (outside the recovery window, below).

Why XPUB and inboxes: a SUB subscription is asynchronous. `Subscribe` is answered only after
the actor has seen the subscriber's one-off inbox filter, which the subscriber set right after
the topic filters on the same pipe, so those are in place and every message published after
the reply reaches it. The reply carries each topic's current sequence number.

Losses nobody would notice without help, and what announces them:
- A gap at the tail. Sequence numbers show a hole only when a later message arrives. So each
  subscription keeps a lifelong inbox filter (`messages.MAILBOX_PREFIX`), and when its queue
  drains after a long run of messages it casts `Sync`; the actor answers with a `Mark` of the
  topics' last numbers on that inbox. The mark travels the same pipe as the messages, behind
  every message numbered before it, so any number it names that the subscriber has not seen
  was dropped. Cost: nothing on the publish path; one cast and one small message per run of
  ~1,000 messages a subscriber reads (see `pubsub.Subscription`).
- A restart. The new actor starts a new epoch and knows no subscriber; subscribers reconnect
  and their SUB sockets resend every filter. XPUB_VERBOSE makes XPUB report each of them (not
  only a topic's first), and on a lifelong inbox the actor publishes a `Mark` with its epoch:
  the subscriber sees the new epoch and raises `MessagesLost` even if nothing is published.
  ZeroMQ resends a SUB's filters only when its owner next uses the socket (a `get`), so for
  `RECOVERY_PERIOD` seconds after a restart (told by the dead actor's ipc socket file still
  being there) the actor numbers and keeps every message it
  publishes, whether or not the topic has subscribers yet (up to `RECOVERY_LIMIT`), and
  replays a topic's kept messages whenever a subscriber's filter for it arrives. Subscribers
  that had them already skip them by their numbers; one that reconnects late gets them in
  order, or sees a gap in the numbers. So a diff published right after a restart (an owner
  that died meanwhile) is not lost.

- A shard's crash. A shard that comes back from its journal may have made diffs that never
  went out; it sends `ShardRestarted`, each of its topics skips a number, and a `Mark` of
  their numbers goes to every subscription: a subscriber of any of them raises
  `MessagesLost` and resyncs.

Bridging between nodes (the cluster issue) hooks into `forward`: `Broadcast(local=False)` is
handed to it after local publication.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import zmq

from whosthere.actors.base import NOREPLY, Actor, ActorSpec, Request
from whosthere.errors import MalformedFrame
from whosthere.topology import Topology
from whosthere.tracker.pool import shard_for
from whosthere.transport import codec
from whosthere.transport.messages import (
    MAILBOX_PREFIX,
    Broadcast,
    Mark,
    PublishMany,
    ShardRestarted,
    Subscribe,
    Sync,
)
from whosthere.transport.sockets import bind, socket

_SYNC_TTL = 30.0  # seconds a half-done subscription handshake is kept
RECOVERY_PERIOD = 3.0  # seconds after start during which messages are kept for replay
RECOVERY_LIMIT = 20_000  # messages kept for replay at most (later ones show as gaps)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(t, str) for t in value)


class PubSubActor(Actor):
    handles = (Subscribe, Broadcast, PublishMany, Sync, ShardRestarted)

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        self.epoch = random.getrandbits(62) + 1  # this incarnation
        self.seqs: dict[str, int] = {}  # numbered topic -> last sequence number
        self.subscribed: set[str] = set()  # topics with a subscriber, as XPUB reports them
        self.waiting: dict[str, tuple[Request, list[str], float]] = {}  # inbox -> (call, topics, t)
        self.seen_inboxes: dict[str, float] = {}  # inbox filters seen before their call
        self.mailboxes: set[str] = set()  # every subscription's lifelong inbox token
        self.published = 0  # messages published since start
        self.pub_endpoint = Topology(spec.node).pubsub_pub
        # a restart: the dead actor's ipc socket file is still there (a clean close removes
        # it, a new node's directory is empty); then keep messages for replay a while
        self.recovering = os.path.exists(self.pub_endpoint.removeprefix("ipc://"))
        self.kept: dict[str, list[tuple[bytes, bytes]]] = {}  # topic -> [(frame, body)]
        self.kept_count = 0
        self.xpub = socket(zmq.XPUB, hwm=spec.node.pubsub_hwm)
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's filters, not the first

    def on_start(self) -> None:
        self.pub_endpoint = bind(self.xpub, self.pub_endpoint)
        self.add_reader(self.xpub, self._on_subscriptions)
        self.call_later(_SYNC_TTL, self._expire_handshakes)
        if self.recovering:
            self.call_later(RECOVERY_PERIOD, self._end_recovery)

    def stats(self) -> dict[str, Any]:
        return {"topics": len(self.subscribed), "published": self.published}

    # -- messages --------------------------------------------------------------------------

    def on_broadcast(self, msg: Broadcast) -> None:
        self.publish(msg.topic, msg.event, msg.payload)
        if not msg.local:
            self.forward(msg)

    def on_publish_many(self, msg: PublishMany) -> None:
        bad = 0
        for item in msg.items:
            if (
                not isinstance(item, list)
                or len(item) != 3
                or not isinstance(item[0], str)
                or not isinstance(item[1], str)
                or not isinstance(item[2], bytes)
            ):
                bad += 1
                continue
            topic, event, payload = item
            if not msg.local:
                try:
                    unpacked = codec.unpack(payload)
                except Exception:  # msgpack raises several types on garbage
                    bad += 1
                    continue
                self.publish_packed(topic, event, payload)
                self.forward(Broadcast(topic, event, unpacked, False))
            else:
                self.publish_packed(topic, event, payload)
        if bad:  # the good items went out: one bad entry must not cost the others
            self.log.warning("%s: dropped %d malformed PublishMany item(s)", self.name, bad)

    def on_subscribe(self, msg: Subscribe) -> Any:
        if self.request is None:
            raise MalformedFrame("Subscribe must be a call")
        if not _strings(msg.topics):
            raise MalformedFrame("Subscribe.topics must be a list of str")
        if self.seen_inboxes.pop(msg.inbox, None) is not None:
            return self._sync_reply(msg.topics)
        self.waiting[msg.inbox] = (self.request, msg.topics, time.monotonic())
        return NOREPLY

    def on_shard_restarted(self, msg: ShardRestarted) -> None:
        """Each topic of that shard skips a number, and every subscription is told the
        topics' last numbers: a subscriber of any of them sees the skipped one as lost."""
        if not 0 <= msg.index < msg.pool_size:
            raise MalformedFrame(f"shard {msg.index} of a pool of {msg.pool_size}")
        seqs = {}
        for topic in self.seqs:
            if shard_for(topic, msg.pool_size) == msg.index:
                seqs[topic] = self.seqs[topic] = self.seqs[topic] + 1
        if seqs:
            for mailbox in self.mailboxes:
                self._mark(mailbox, seqs)

    def on_sync(self, msg: Sync) -> None:
        if not _strings(msg.topics) or not msg.inbox.startswith(MAILBOX_PREFIX):
            raise MalformedFrame("Sync wants a mailbox token and a list of str topics")
        seqs = {t: self.seqs[t] for t in msg.topics if t in self.seqs}
        self._mark(msg.inbox, seqs)

    # -- work ------------------------------------------------------------------------------

    def publish(self, topic: str, event: str, payload: Any) -> None:
        if topic not in self.seqs and not self.recovering:  # nobody would get it: don't pack
            self.published += 1
            return
        self.publish_packed(topic, event, codec.pack_value(payload))

    def publish_packed(self, topic: str, event: str, payload: bytes) -> None:
        """Publish a payload packed already (spliced into `Published`, never unpacked)."""
        last = self.seqs.get(topic)
        if last is None:
            if not self.recovering:
                self.published += 1
                return
            last = self.published
        self.published += 1
        seq = self.seqs[topic] = last + 1
        frame = codec.topic_frame(topic)
        body = codec.encode_published(self.epoch, seq, event, payload)
        if self.recovering and self.kept_count < RECOVERY_LIMIT:
            self.kept.setdefault(topic, []).append((frame, body))
            self.kept_count += 1
        self.xpub.send_multipart((frame, body))

    def forward(self, msg: Broadcast) -> None:
        """Hand a cluster-wide broadcast to the peers (none on a single node)."""

    def _sync_reply(self, topics: list[str]) -> list[Any]:
        # the topics' XPUB subscriptions came before the inbox's on the same pipe: known
        return [self.epoch, [self.seqs.setdefault(t, self.published) for t in topics]]

    def _mark(self, token: str, seqs: dict[str, int]) -> None:
        body = codec.encode(Mark(self.epoch, seqs))
        self.xpub.send_multipart((codec.inbox_frame(token), body))

    def _on_subscriptions(self) -> None:
        while True:
            try:
                frame = self.xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not frame:
                continue
            subscribing, filt = frame[0] == 1, frame[1:]
            inbox = codec.inbox_of(filt)
            if inbox is not None:
                if subscribing:
                    self._on_inbox(inbox)
                else:  # a subscription closed
                    self.mailboxes.discard(inbox)
                continue
            topic = codec.topic_of(filt)
            if topic is None:
                continue
            if subscribing:  # a subscriber (re)connected or subscribed (XPUB_VERBOSE)
                self.subscribed.add(topic)
                self.seqs.setdefault(topic, self.published)
                for kept in self.kept.get(topic, ()):  # a restart's early messages, again
                    self.xpub.send_multipart(kept)
            else:  # the last one left
                self.subscribed.discard(topic)
                if not self.recovering:
                    self.seqs.pop(topic, None)

    def _on_inbox(self, inbox: str) -> None:
        if inbox.startswith(MAILBOX_PREFIX):  # a subscription connected: tell it the epoch
            self.mailboxes.add(inbox)
            self._mark(inbox, {})
            return
        pending = self.waiting.pop(inbox, None)
        if pending is None:
            self.seen_inboxes[inbox] = time.monotonic()
        else:
            self.reply(pending[0], self._sync_reply(pending[1]))

    def _end_recovery(self) -> None:
        self.recovering = False
        self.kept.clear()
        self.kept_count = 0
        self.seqs = {t: n for t, n in self.seqs.items() if t in self.subscribed}

    def _expire_handshakes(self) -> None:
        cutoff = time.monotonic() - _SYNC_TTL
        self.seen_inboxes = {k: t for k, t in self.seen_inboxes.items() if t > cutoff}
        self.waiting = {k: v for k, v in self.waiting.items() if v[2] > cutoff}
        self.call_later(_SYNC_TTL, self._expire_handshakes)

    def on_stop(self) -> None:
        self.xpub.close(linger=0)
