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

Between nodes: a cluster-wide broadcast (`Broadcast(local=False)`) is published here, then
forwarded to every peer's PubSub actor through the cluster actors, which publishes it to its
own subscribers; what a peer cannot deliver (lost or late in a netsplit) its subscribers hear
of as `MessagesLost` (`actors.broadcast_bridge`).
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any

import zmq

from whosthere.actors.base import NOREPLY, Actor, ActorSpec, Request
from whosthere.actors.broadcast_bridge import FRAME_BYTES, STREAM_BEAT_S, Inbound
from whosthere.errors import MalformedFrame, MessageTooLarge
from whosthere.topology import Topology
from whosthere.tracker.pool import shard_for
from whosthere.transport import codec, fragments
from whosthere.transport.messages import (
    MAILBOX_PREFIX,
    PUBSUB_INDEX,
    Broadcast,
    ClusterCast,
    Fragment,
    FromPeer,
    Mark,
    PeerBroadcasts,
    PublishMany,
    ShardRestarted,
    Subscribe,
    Sync,
)
from whosthere.transport.sockets import Dealer, bind, socket

_SYNC_TTL = 30.0  # seconds a half-done subscription handshake is kept
RECOVERY_PERIOD = 3.0  # seconds after start during which messages are kept for replay
RECOVERY_LIMIT = 20_000  # messages kept for replay at most (later ones show as gaps)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(t, str) for t in value)


class PubSubActor(Actor):
    handles = (Subscribe, Broadcast, PublishMany, Sync, ShardRestarted, FromPeer)

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
        # the cluster-wide stream of broadcasts, out and in (a clustered node only)
        cluster = Topology(spec.node).cluster
        self.cluster = Dealer(cluster, what="cluster actor", unbounded=True) if cluster else None
        self.inbound = Inbound(spec.node.tracker.down)
        self.outgoing: list[list[Any]] = []  # [topic, event, packed payload] to send
        self.outgoing_bytes = 0
        self.stream_seq = 0  # frames of this incarnation's stream sent
        self.stream_sent_at = -math.inf
        self.reassembler = fragments.Reassembler()
        self.bridged_out = self.bridged_in = self.bridge_losses = 0

    def on_start(self) -> None:
        self.pub_endpoint = bind(self.xpub, self.pub_endpoint)
        self.add_reader(self.xpub, self._on_subscriptions)
        self.call_later(_SYNC_TTL, self._expire_handshakes)
        if self.recovering:
            self.call_later(RECOVERY_PERIOD, self._end_recovery)
        if self.cluster is not None:
            self.call_later(STREAM_BEAT_S, self._stream_beat)

    def on_idle(self) -> None:
        if self.outgoing:  # this wake-up's cluster-wide broadcasts, in one frame
            self._send_stream()

    def stats(self) -> dict[str, Any]:
        return {
            "topics": len(self.subscribed),
            "subscribers": len(self.mailboxes),  # node subscriptions: one per process feed
            "published": self.published,
            **(
                {
                    "bridged_out": self.bridged_out,
                    "bridged_in": self.bridged_in,
                    "bridge_losses": self.bridge_losses,
                    "bridge_late": self.inbound.late,
                }
                if self.cluster is not None
                else {}
            ),
        }

    # -- messages --------------------------------------------------------------------------

    def on_broadcast(self, msg: Broadcast) -> None:
        if msg.local or self.cluster is None:
            self.publish(msg.topic, msg.event, msg.payload)
            return
        packed = codec.pack_value(msg.payload)
        self.publish_packed(msg.topic, msg.event, packed)
        self.forward(msg.topic, msg.event, packed)

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
                    codec.unpack(payload)  # peers' subscribers unpack it
                except Exception:  # msgpack raises several types on garbage
                    bad += 1
                    continue
                self.publish_packed(topic, event, payload)
                self.forward(topic, event, payload)
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
        if not 0 <= msg.shard < msg.pool_size:
            raise MalformedFrame(f"shard {msg.shard} of a pool of {msg.pool_size}")
        seqs = {}
        for topic in self.seqs:
            if shard_for(topic, msg.pool_size) == msg.shard:
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

    def forward(self, topic: str, event: str, payload: bytes) -> None:
        """Queue a cluster-wide broadcast for the peers (none on a single node): it goes out
        with the others of this wake-up (`on_idle`), in the order broadcast."""
        if self.cluster is None:
            return
        self.outgoing.append([topic, event, payload])
        self.outgoing_bytes += len(payload) + len(topic) + len(event)
        if self.outgoing_bytes > FRAME_BYTES:
            self._send_stream()

    def _send_stream(self) -> None:
        """The next frame of this node's stream of broadcasts, to every peer (an empty one:
        the last number again, so that a peer sees what it missed)."""
        assert self.cluster is not None
        items, self.outgoing, self.outgoing_bytes = self.outgoing, [], 0
        if items:
            self.stream_seq += 1
            self.bridged_out += len(items)
        self.stream_sent_at = time.monotonic()
        frame = PeerBroadcasts(self.epoch, self.stream_seq, self.stream_sent_at, items)
        try:
            pieces = fragments.encode(frame)
        except MessageTooLarge as exc:  # each broadcast is far smaller: never in practice
            self.log.error("%s: broadcasts not sent to peers: %s", self.name, exc)
            return
        for piece in pieces:
            self.cluster.cast(ClusterCast("*", PUBSUB_INDEX, piece))

    def _stream_beat(self) -> None:
        self.call_later(STREAM_BEAT_S, self._stream_beat)
        if time.monotonic() - self.stream_sent_at >= STREAM_BEAT_S and not self.outgoing:
            self._send_stream()

    def on_from_peer(self, msg: FromPeer) -> None:
        """A frame of a peer's stream of broadcasts: published here once, in order; what
        cannot be (lost, or late from a netsplit) every subscription hears of."""
        inner = codec.decode(msg.payload)  # MalformedFrame: logged and dropped by the loop
        now = time.monotonic()
        if isinstance(inner, Fragment):
            inner = self.reassembler.add(msg.sender, inner, now)
            if inner is None:
                return  # more pieces to come
        if not isinstance(inner, PeerBroadcasts):
            raise MalformedFrame(f"{type(inner).__name__} is not a peer's broadcasts")
        verdict = self.inbound.receive(
            msg.sender, inner.epoch, inner.seq, inner.sent_at, empty=not inner.items, now=now
        )
        if verdict.lost:
            self.bridge_losses += 1
            self.log.warning(
                "%s: %s; every subscription is told (MessagesLost)", self.name, verdict.why
            )
            self._all_lost()
        if not verdict.deliver:
            return
        bad = 0
        for item in inner.items:
            if not (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and isinstance(item[1], str)
                and isinstance(item[2], bytes)
            ):
                bad += 1
                continue
            self.publish_packed(item[0], item[1], item[2])
            self.bridged_in += 1
        if bad:
            self.log.warning(
                "%s: dropped %d malformed broadcast(s) from %s", self.name, bad, msg.sender
            )

    def _all_lost(self) -> None:
        """Every topic skips a number, and every subscription is told the topics' last
        numbers: each subscriber sees a loss, whatever topics it reads."""
        seqs = {}
        for topic in self.seqs:
            seqs[topic] = self.seqs[topic] = self.seqs[topic] + 1
        for mailbox in self.mailboxes:
            self._mark(mailbox, seqs)

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
        if self.cluster is not None:
            if self.outgoing:
                self._send_stream()
            self.cluster.close()
        self.xpub.close(linger=0)
