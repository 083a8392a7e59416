"""The Redis engine actor: this node's door to its peers when `engine=` names a Redis server.

It stands where the cluster actor stands on the mesh (same name in the tree, same messages,
same stats), so shards, the PubSub actor, `status` and the graceful goodbye work unchanged:
shards and the PubSub actor hand it `ClusterCast`; a cast to one node is published on that
node's channel, a cast to all once on the cluster-wide channel; what is heard goes to shard
`slot` (or the PubSub actor at `PUBSUB_INDEX`) as `FromPeer`. No node accepts a connection
from another: each reaches only Redis, as phoenix_pubsub_redis does, and Redis holds no
presences.

Nodes find each other by a `PeerHello` on the cluster-wide channel every second; one with
another pool_size or wire protocol (`transport.wire_version`) is refused (`PeerRefused` on
its channel), both sides log and report why.
A node serves under its name only while it holds the name's lease on the server (renewed
every broadcast_period, lapsing after down_period): at boot it waits up to down_period for a
live lease of another to lapse, then the node's start fails with `NodeNameTaken`. With a
cookie every frame is signed (`transport.signing`); one unsigned or wrongly signed is dropped
and logged. A message over `_PIECE_BYTES` goes in pieces (`transport.fragments`), paced.

Redis unreachable is a netsplit: this node goes on serving its own presences (nothing here
waits on Redis: `RedisLink` does the I/O in threads), its peers fall silent and go down after
down_period, and when the server is back the link reconnects and replication heals.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import zmq

from whosthere.actors.base import Actor, ActorSpec, routes
from whosthere.actors.engine_peers import EnginePeers, NameLease
from whosthere.actors.peer_book import HELLO_EVERY_S
from whosthere.actors.redis_link import RedisLink
from whosthere.errors import MalformedFrame, NodeNameTaken
from whosthere.topology import Topology
from whosthere.transport import codec, engine_url, fragments, signing
from whosthere.transport.cookie import COOKIE_ENV
from whosthere.transport.messages import (
    PUBSUB_INDEX,
    ActorFailed,
    ClusterCast,
    DropPeers,
    Fragment,
    FromPeer,
    PeerCast,
    PeerHello,
    PeerRefused,
)
from whosthere.transport.sockets import Dealer
from whosthere.transport.wire_version import incompatible, split_version, with_version

# a message is published in pieces of at most this: far below Redis's pub/sub output-buffer
# limits (32 MB at once, 8 MB for 60 s), so a slow subscriber is not cut off mid-transfer
_PIECE_BYTES = 1024 * 1024
_HELLO_BYTES = 4096  # a frame under our name this small may be another node's hello


class RedisEngineActor(Actor):
    handles = (ClusterCast, DropPeers)
    ready_after_start = False  # once the name's lease is held (or Redis is away: alone)

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        config, cluster = spec.node, spec.node.cluster
        assert cluster is not None and cluster.engine, "runs on a node with engine="
        self.me: str = spec.node_name
        self.pool_size = config.pool_size
        # the whole URL (its password) comes by environment, never the command line
        self.url = os.environ.get(engine_url.ENGINE_ENV) or cluster.engine
        self.shown_url = engine_url.redacted(self.url)
        self.key = signing.signing_key(os.environ.get(COOKIE_ENV) or None)
        db = engine_url.database(self.url)
        self.all_channel = engine_url.broadcast_channel(db)
        self.db = db
        tracker = config.tracker
        # one token per node start, kept by a restarted actor: its own lease is no obstacle
        self.token = f"{socket.gethostname()} pid {spec.parent_pid} ({spec.runtime_dir})"
        lease = (engine_url.lease_key(self.me), self.token, tracker.down, tracker.broadcast_period)
        self.link = RedisLink(
            self.url, [self.all_channel, engine_url.node_channel(db, self.me)], lease, self.log
        )
        topology = Topology(config)
        self.shards = [
            Dealer(e, what=f"shard {i}", unbounded=True) for i, e in enumerate(topology.shards)
        ]
        self.pubsub = Dealer(topology.pubsub, what="pubsub actor", unbounded=True)
        self.lease = NameLease(self.me, tracker.down, time.monotonic())
        forget_after = max(tracker.permdown_period, 10 * HELLO_EVERY_S)
        self.peers = EnginePeers(self.me, self.pool_size, forget_after, self.log)
        self.reassembler = fragments.Reassembler(
            max_pieces=fragments.MAX_MESSAGE_BYTES // _PIECE_BYTES + 1
        )
        self.link_up: bool | None = None  # None: not connected yet
        self.sent = self.received = self.dropped = self.rejected = 0
        self.from_peers = routes(self, (PeerCast, PeerHello, PeerRefused))
        self.hello = b""

    # -- setup -----------------------------------------------------------------------------

    def on_start(self) -> None:
        hello = PeerHello(self.me, self.pool_size, self.token, with_version([]))
        self.hello = codec.encode(hello)
        self.add_reader(self.link.inbox, self._on_inbox)
        self.link.start()
        self.call_later(0, self._hello_all)

    def on_stop(self) -> None:
        # a node stopping gives its name back; a crashed actor's successor reclaims it
        self.link.close(release_lease=True)
        for dealer in (*self.shards, self.pubsub):
            dealer.close()

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "listen": self.shown_url,
            "bound": self.shown_url,
            "peers": {
                name: {
                    "address": self.shown_url,
                    "via": "redis",
                    "last_heard_age": round(now - at, 3),
                }
                for name, at in sorted(self.peers.heard.items())
            },
            "refused": dict(self.peers.refused),
            "sent": self.sent,
            "received": self.received,
            "dropped": self.dropped + self.link.dropped_full + self.link.dropped_down,
            "engine": {
                "redis": "up" if self.link_up else "down",
                "lease": self.lease.state,
                "published": self.link.published,
                "published_bytes": self.link.published_bytes,
                "queued": self.link.outbox.qsize(),
                "rejected": self.rejected,
            },
        }

    def _hello_all(self) -> None:
        if self.lease.joined:
            self._publish(self.all_channel, self.hello)
        self.peers.forget_silent(time.monotonic())
        self.reassembler.expire(time.monotonic())
        self.call_later(HELLO_EVERY_S, self._hello_all)

    # -- from shards -----------------------------------------------------------------------

    def on_cluster_cast(self, msg: ClusterCast) -> None:
        body = codec.encode(PeerCast(self.me, msg.slot, msg.payload))
        if msg.to != "*":
            if msg.to in self.peers.dropping:
                self.dropped += 1
            else:
                self._publish(engine_url.node_channel(self.db, msg.to), body)
        elif self.peers.dropping:  # test hook: a cast to all skips the dropped, one by one
            for name in self.peers.reachable():
                self._publish(engine_url.node_channel(self.db, name), body)
        else:
            self._publish(self.all_channel, body)

    def on_drop_peers(self, msg: DropPeers) -> None:
        """Test hook: simulate a netsplit with these peers (their traffic both ways lost)."""
        self.peers.dropping = set(msg.names)
        for name in msg.names:
            self.peers.heard.pop(name, None)  # heard again on their next hello once healed

    def _publish(self, channel: str, body: bytes) -> None:
        """Publish `body` (in pieces if large), sealed; never waits. Nothing leaves before
        the name's lease is held: another node may be serving under this name."""
        if not self.lease.joined:
            self.dropped += 1
            return
        if len(body) > _PIECE_BYTES:
            pieces = fragments.encode(codec.decode(body), limit=_PIECE_BYTES)
        else:
            pieces = [body]
        for piece in pieces:
            if self.link.publish(channel, signing.seal(self.key, self.me, piece)):
                self.sent += 1

    # -- from the link ---------------------------------------------------------------------

    def _on_inbox(self) -> None:
        while True:
            try:
                frames = self.link.inbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = frames[0]
            if kind == b"m" and len(frames) == 2:
                self._heard(frames[1])
            elif kind == b"lease" and len(frames) == 3:
                self._lease_news(frames[1], frames[2].decode(errors="replace"))
            elif kind == b"link" and len(frames) == 3:
                self._link_news(frames[1] == b"up", frames[2].decode(errors="replace"))

    def _link_news(self, up: bool, why: str) -> None:
        if up and self.link_up is None:
            self.log.info("%s: subscribed on %s", self.me, self.shown_url)
        elif up and not self.link_up:
            self.log.warning("%s: Redis reachable again", self.me)
        elif not up and self.link_up is not False:
            self.log.warning("%s: Redis unreachable: %s", self.me, why)
        self.link_up = up

    def _lease_news(self, news: bytes, detail: str) -> None:
        now = time.monotonic()
        if news == b"held":
            if self.lease.claimed():
                self.log.info("%s: holds its name on %s", self.me, self.shown_url)
                self._publish(self.all_channel, self.hello)
            self.report_ready()
        elif news == b"taken":
            decision = self.lease.taken(detail, now)
            if decision == "refuse":
                self._refuse_to_start()
            elif decision == "lost":
                self.log.error(
                    "%s: its name is now held by %s on the Redis engine: this node is apart "
                    "from the cluster until it holds it again",
                    self.me,
                    detail,
                )
        elif news == b"unreachable" and self.lease.unreachable():
            self.log.warning(
                "%s: Redis unreachable at start (%s): serving alone until it is back",
                self.me,
                detail,
            )
            self.report_ready()

    def _refuse_to_start(self) -> None:
        reason = self.lease.refusal()
        self.log.error("%s: %s", self.me, reason)
        if self.supervisor is not None:
            failed = ActorFailed(self.name, os.getpid(), NodeNameTaken.__name__, reason)
            self.supervisor.cast(failed)

    def _heard(self, raw: bytes) -> None:
        try:
            frame = signing.open_frame(self.key, raw)
        except MalformedFrame as exc:
            self.rejected += 1
            self.log.warning("%s: dropped a frame from Redis: %s", self.me, exc)
            return
        if frame.sender == self.me:
            if self.lease.joined and frame.body != self.hello and len(frame.body) < _HELLO_BYTES:
                self._own_name_heard(frame.body)  # our own casts to all come back too
            return
        try:
            msg = codec.decode(frame.body)
            if isinstance(msg, Fragment):
                msg = self.reassembler.add(frame.sender, msg, time.monotonic())
                if msg is None:
                    return
        except MalformedFrame as exc:
            self.rejected += 1
            self.log.warning("%s: dropped a bad frame from %s: %s", self.me, frame.sender, exc)
            return
        handler = self.from_peers.get(type(msg))
        if handler is None:
            self.log.warning("%s: unexpected %s from Redis", self.me, type(msg).__name__)
            return
        handler(frame.sender, msg)

    def _own_name_heard(self, body: bytes) -> None:
        """A frame under our name that is not ours: another node uses it (logged)."""
        try:
            msg = codec.decode(body)
        except MalformedFrame:
            return
        if isinstance(msg, PeerHello) and msg.listen != self.token:
            self.log.error(
                "%s: another node greets under this node's name (%s): names on one Redis "
                "must be unique",
                self.me,
                msg.listen,
            )

    # Frames from peers, by the actors' one routing rule, with the sender that signed them.

    def on_peer_hello(self, sender: str, msg: PeerHello) -> None:
        if not self.lease.joined:
            return
        new = sender not in self.peers.heard
        mismatch = incompatible(sender, split_version(msg.peers)[1], self.me)
        reason = self.peers.hello(sender, msg.pool_size, time.monotonic(), mismatch)
        if reason is not None:
            body = codec.encode(PeerRefused(self.me, reason))
            self._publish(engine_url.node_channel(self.db, sender), body)
        elif new and sender in self.peers.heard:
            # greet a newcomer at once, on its channel: it need not wait for our next hello
            self._publish(engine_url.node_channel(self.db, sender), self.hello)

    def on_peer_refused(self, sender: str, msg: PeerRefused) -> None:
        if self.peers.refuse(sender, msg.reason, time.monotonic()):
            self.log.error("%s: peer %s refused this node: %s", self.me, sender, msg.reason)

    def on_peer_cast(self, sender: str, msg: PeerCast) -> None:
        if not self.lease.joined or not self.peers.accepts(sender, time.monotonic()):
            self.dropped += 1
            return
        self.received += 1
        if 0 <= msg.slot < len(self.shards):
            self.shards[msg.slot].cast(FromPeer(sender, msg.payload))
        elif msg.slot == PUBSUB_INDEX:
            self.pubsub.cast(FromPeer(sender, msg.payload))
