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
to topics nobody subscribes to are not sent at all.

Why XPUB and inboxes: a SUB subscription is asynchronous. `Subscribe` is answered only after
the actor has seen the subscriber's one-off inbox filter, which the subscriber set right after
the topic filter on the same pipe, so the topic filter is in place and every message published
after the reply reaches it. The reply carries the topic's current sequence number.

Bridging between nodes (the cluster issue) hooks into `forward`: `Broadcast(local=False)` is
handed to it after local publication.
"""

from __future__ import annotations

import random
import time
from typing import Any

import zmq

from whosthere.actors.base import NOREPLY, Actor, ActorSpec, Request
from whosthere.errors import MalformedFrame
from whosthere.topology import Topology
from whosthere.transport import codec
from whosthere.transport.messages import Broadcast, PublishMany, Subscribe
from whosthere.transport.sockets import bind, socket

_SYNC_TTL = 30.0  # seconds a half-done subscription handshake is kept


class PubSubActor(Actor):
    handles = (Subscribe, Broadcast, PublishMany)

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        self.epoch = random.getrandbits(62) + 1  # this incarnation
        self.seqs: dict[str, int] = {}  # subscribed topic -> last sequence number
        self.waiting: dict[str, tuple[Request, str, float]] = {}  # inbox -> (call, topic, t)
        self.seen_inboxes: dict[str, float] = {}  # inbox filters seen before their call
        self.published = 0  # messages published since start
        self.xpub = socket(zmq.XPUB, hwm=spec.node.pubsub_hwm)
        self.pub_endpoint = Topology(spec.node).pubsub_pub

    def on_start(self) -> None:
        self.pub_endpoint = bind(self.xpub, self.pub_endpoint)
        self.add_reader(self.xpub, self._on_subscriptions)
        self.call_later(_SYNC_TTL, self._expire_handshakes)

    def stats(self) -> dict[str, Any]:
        return {"topics": len(self.seqs), "published": self.published}  # topics: subscribed

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
        if self.seen_inboxes.pop(msg.inbox, None) is not None:
            return self._sync_reply(msg.topic)
        self.waiting[msg.inbox] = (self.request, msg.topic, time.monotonic())
        return NOREPLY

    # -- work ------------------------------------------------------------------------------

    def publish(self, topic: str, event: str, payload: Any) -> None:
        if topic not in self.seqs:  # no subscriber: XPUB would drop it anyway; don't pack
            self.published += 1
            return
        self.publish_packed(topic, event, codec.pack_value(payload))

    def publish_packed(self, topic: str, event: str, payload: bytes) -> None:
        """Publish a payload packed already (spliced into `Published`, never unpacked)."""
        last = self.seqs.get(topic)
        self.published += 1
        if last is None:
            return
        seq = self.seqs[topic] = last + 1
        body = codec.encode_published(self.epoch, seq, event, payload)
        self.xpub.send_multipart((codec.topic_frame(topic), body))

    def forward(self, msg: Broadcast) -> None:
        """Hand a cluster-wide broadcast to the peers (none on a single node)."""

    def _sync_reply(self, topic: str) -> list[int]:
        # the topic's XPUB subscription came before the inbox's on the same pipe: it is known
        return [self.epoch, self.seqs.setdefault(topic, self.published)]

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
                if not subscribing:
                    continue
                pending = self.waiting.pop(inbox, None)
                if pending is None:
                    self.seen_inboxes[inbox] = time.monotonic()
                else:
                    self.reply(pending[0], self._sync_reply(pending[1]))
                continue
            topic = codec.topic_of(filt)
            if topic is None:
                continue
            if subscribing:  # the first subscriber of the topic
                self.seqs.setdefault(topic, self.published)
            else:  # the last one left
                self.seqs.pop(topic, None)

    def _expire_handshakes(self) -> None:
        cutoff = time.monotonic() - _SYNC_TTL
        self.seen_inboxes = {k: t for k, t in self.seen_inboxes.items() if t > cutoff}
        self.waiting = {k: v for k, v in self.waiting.items() if v[2] > cutoff}
        self.call_later(_SYNC_TTL, self._expire_handshakes)

    def on_stop(self) -> None:
        self.xpub.close(linger=0)
