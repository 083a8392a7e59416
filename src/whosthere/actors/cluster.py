"""The cluster actor: this node's one door to its peers.

It listens on the node's `listen` endpoint (tcp) and connects to every peer it knows of; the
peers it hears of from others (`PeerHello` carries the addresses a node knows) it connects to
as well, so nodes given one another's address form a full mesh. Shards hand it their
replication messages (`ClusterCast`); it routes them, unopened, to shard i of the named node
or of every node, and hands what comes in to the local shard (`FromPeer`). The PubSub actor's
cluster-wide broadcasts take the same way, at index `PUBSUB_INDEX`.

With a cookie, every connection is ZeroMQ CURVE with keys derived from it: a node without the
cookie cannot complete the handshake. Without a cookie the node listens on loopback only.
Peers of another wire protocol (`transport.wire_version`) or pool_size are refused, and both
sides log and report why.

A peer that is not up yet or goes away never blocks anything: sends never wait (ZeroMQ
reconnects by itself; what cannot be sent now is dropped, and replication repairs the loss
with transfers). Hellos are repeated every second until answered.

Peers given as DNS names (`dns:NAME:PORT`, `srv:NAME`) are resolved every
`discovery_period` by `DnsWatch`'s threads, never on this loop; what each name said is
`DiscoveryBook`'s (shown in `stats()`, so `whosthere status` tells what DNS said and when),
and the addresses are dialled as seeds are while DNS names them.

This actor owns the sockets; which connection reaches which peer, what is passed on and what
is forgotten (after `forget_after`, the permdown period, at least 10 s) is `PeerBook`'s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

from whosthere.actors.base import Actor, ActorSpec, routes
from whosthere.actors.discovery_book import DiscoveryBook
from whosthere.actors.dns_watch import DnsWatch
from whosthere.actors.peer_book import HELLO_EVERY_S, PeerBook, Route
from whosthere.errors import MalformedFrame
from whosthere.topology import Topology
from whosthere.transport import codec
from whosthere.transport.cookie import COOKIE_ENV, curve_keys
from whosthere.transport.dns_names import dns_name
from whosthere.transport.endpoints import advertised, own_endpoints, valid_endpoint
from whosthere.transport.messages import (
    PUBSUB_INDEX,
    ClusterCast,
    DropPeers,
    FromPeer,
    PeerCast,
    PeerHello,
    PeerRefused,
    PeerWelcome,
)
from whosthere.transport.sockets import Dealer, bind, socket
from whosthere.transport.wire_version import incompatible, split_version, with_version

_PEER_HWM = 10_000  # frames queued for one peer before they are dropped
_BOUND_FILE = "cluster.bound"  # the endpoint bound, kept for a restarted cluster actor


class ClusterActor(Actor):
    handles = (ClusterCast, DropPeers)

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        config, cluster = spec.node, spec.node.cluster
        assert cluster is not None, "the cluster actor runs on a node with listen="
        self.me: str = spec.node_name
        self.pool_size: int = config.pool_size
        # from the environment, never the command line (other users can read argv)
        self.cookie: str | None = os.environ.get(COOKIE_ENV) or None
        self.listen_endpoint: str = cluster.listen  # once bound: the address peers are told
        self.advertise: str | None = cluster.advertise
        topology = Topology(config)
        self.shards = [
            Dealer(e, what=f"shard {i}", unbounded=True) for i, e in enumerate(topology.shards)
        ]
        self.pubsub = Dealer(topology.pubsub, what="pubsub actor", unbounded=True)
        self.bound = ""
        self.listener = socket(zmq.ROUTER)
        self.listener.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # IPv6 only when asked for: with it, an IPv4 bind reports an IPv4-mapped address
        self.listener.ipv6 = "[" in self.listen_endpoint
        self.outgoing: dict[str, zmq.Socket[Any]] = {}  # peer listen address -> our DEALER
        # seeds are never forgotten; others are after as long as the shards keep a silent
        # peer, but long enough for many missed hellos
        names = list(dict.fromkeys(n for p in cluster.peers if (n := dns_name(p)) is not None))
        seeds = {p for p in cluster.peers if p and dns_name(p) is None}
        forget_after = max(config.tracker.permdown_period, 10 * HELLO_EVERY_S)
        self.book = PeerBook(self.me, seeds, forget_after, self.log, discovering=bool(names))
        self.discovery = DiscoveryBook(self.me, names, self.log)
        self.dns = DnsWatch(names, cluster.discovery_period) if names else None
        self.dropping: set[str] = set()  # test hook: peers whose traffic is dropped
        self.sent = self.received = self.dropped = 0
        self.from_peers = routes(self, (PeerCast, PeerHello, PeerWelcome, PeerRefused))

    # -- setup -----------------------------------------------------------------------------

    def on_start(self) -> None:
        if self.cookie:
            public, secret = curve_keys(self.cookie)
            self.listener.curve_server = True
            self.listener.curve_publickey = public
            self.listener.curve_secretkey = secret
        self.bound = self._bind_listener()
        self.listen_endpoint = advertised(self.bound, self.advertise)
        self.add_reader(self.listener, self._on_listener)
        now = time.monotonic()
        local = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs]
        own = own_endpoints(self.listen_endpoint, self.bound, local)
        for address in self.book.listening(self.listen_endpoint, own):
            self._connect(address, now)
        if self.dns is not None:
            self.add_reader(self.dns.fd, self._on_resolved)
            self.dns.start()
        self.call_later(0, self._hello_all)

    def _on_resolved(self) -> None:
        """Names resolved (in `DnsWatch`'s threads): dial what DNS names that is new."""
        assert self.dns is not None
        changed = False
        for name, result, at in self.dns.drain():
            if isinstance(result, str):
                self.discovery.failed(name, result, at)
            else:
                changed |= self.discovery.resolved(name, result, at)
        if changed:
            now = time.monotonic()
            for address in self.book.discover(self.discovery.addresses()):
                self._connect(address, now)

    def _bind_listener(self) -> str:
        """Bind where the previous incarnation was bound, if any: with port 0 a restart would
        take another port, and peers would go on dialling the old one."""
        remembered = Path(self.spec.runtime_dir) / _BOUND_FILE
        try:
            earlier = remembered.read_text().strip()
        except OSError:
            earlier = ""
        bound = ""
        if earlier:
            try:
                bound = bind(self.listener, earlier)
            except zmq.ZMQError as exc:
                self.log.warning(
                    "%s: cannot bind %s again (%s); binding %s, so peers must "
                    "learn the new address",
                    self.name,
                    earlier,
                    exc,
                    self.listen_endpoint,
                )
        if not bound:
            bound = bind(self.listener, self.listen_endpoint)
            tmp = remembered.with_name(remembered.name + ".tmp")
            tmp.write_text(bound)
            os.replace(tmp, remembered)
        return bound

    def on_stop(self) -> None:
        if self.dns is not None:
            self.dns.stop()
        for sock in self.outgoing.values():
            sock.close(linger=500)  # a departing shard's goodbye may still be queued
        for dealer in (*self.shards, self.pubsub):
            dealer.close()

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        book = self.book
        return {
            "listen": self.listen_endpoint,
            "bound": self.bound,
            "peers": {
                name: {
                    "address": book.address_of.get(name, ""),
                    "via": book.routes[name][0],
                    "last_heard_age": round(now - book.heard.get(name, now), 3),
                }
                for name in sorted(book.routes)
            },
            "refused": dict(book.refused),
            "dialling": sorted(self.outgoing),
            **({"discovery": self.discovery.stats(now)} if self.dns is not None else {}),
            "sent": self.sent,
            "received": self.received,
            "dropped": self.dropped,
        }

    def _connect(self, address: str, now: float) -> None:
        """Dial a peer's listen address (logged and skipped if it is not a usable endpoint)."""
        if not valid_endpoint(address):
            self.log.warning("%s: ignored peer address %r (not tcp://host:port)", self.me, address)
            return
        sock = socket(zmq.DEALER, hwm=_PEER_HWM)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a peer that is not there
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)  # back off to 1 s for an absent peer
        sock.ipv6 = "[" in address
        if self.cookie:
            public, secret = curve_keys(self.cookie)
            sock.curve_serverkey = public
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self.log.warning("%s: cannot dial peer %r: %s", self.me, address, exc)
            return
        self.outgoing[address] = sock
        self.book.dialled(address, now)
        self.add_reader(sock, lambda: self._on_outgoing(address))

    def _hello_all(self) -> None:
        """Greet every peer connection, every second: a restarted peer learns of us again,
        and the mesh fills in as addresses spread."""
        now = time.monotonic()
        for address in self.book.forget_silent(now):
            sock = self.outgoing.pop(address)
            self.remove_reader(sock)
            sock.close(linger=0)
        known = self.book.passed_on(now)
        hellos: dict[bool, bytes] = {}  # with the addresses or without: each encoded once
        for address in self.outgoing:
            route = ("out", address)
            told = self.book.gossip(route, known, now)
            if bool(told) not in hellos:
                said = with_version(told)  # every hello says our version
                hello = PeerHello(self.me, self.pool_size, self.listen_endpoint, said)
                hellos[bool(told)] = codec.encode(hello)
            self._reply(route, hellos[bool(told)])
        self.call_later(HELLO_EVERY_S, self._hello_all)

    # -- from shards -----------------------------------------------------------------------

    def on_cluster_cast(self, msg: ClusterCast) -> None:
        body = codec.encode(PeerCast(self.me, msg.slot, msg.payload))
        if msg.to != "*":
            self._send_to(msg.to, body)
            return
        sent = set()
        for name, route in list(self.book.routes.items()):
            if route not in sent:  # two names on one route (a renamed node): send once
                sent.add(route)
                self._send_to(name, body)

    def on_drop_peers(self, msg: DropPeers) -> None:
        """Test hook: simulate a netsplit with these peers (their traffic both ways lost)."""
        self.dropping = set(msg.names)

    def _send_to(self, name: str, body: bytes) -> None:
        route = self.book.routes.get(name)
        if route is None or name in self.dropping:
            self.dropped += 1
            return
        self._reply(route, body)

    # -- from peers ------------------------------------------------------------------------

    def _on_listener(self) -> None:
        while True:
            try:
                frames = self.listener.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 2:
                route = ("in", frames[0])
                self.book.heard_on(route, time.monotonic())
                self._from_peer(frames[1], route)

    def _on_outgoing(self, address: str) -> None:
        sock = self.outgoing[address]
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 1:
                route = ("out", address)
                self.book.heard_on(route, time.monotonic())
                self._from_peer(frames[0], route)

    def _from_peer(self, body: bytes, route: Route) -> None:
        try:
            msg = codec.decode(body)
        except MalformedFrame as exc:
            self.log.warning("%s: dropped a malformed frame from a peer: %s", self.me, exc)
            return
        handler = self.from_peers.get(type(msg))
        if handler is None:
            self.log.warning("%s: unexpected %s from a peer", self.me, type(msg).__name__)
            return
        handler(msg, route)

    # Frames from peers, by the actors' one routing rule; `route` is where the frame came.

    def on_peer_cast(self, msg: PeerCast, route: Route) -> None:
        now = time.monotonic()
        if msg.sender in self.dropping or not self.book.accepts(msg.sender, route, now):
            self.dropped += 1
            return
        self.received += 1
        if 0 <= msg.slot < len(self.shards):
            self.shards[msg.slot].cast(FromPeer(msg.sender, msg.payload))
        elif msg.slot == PUBSUB_INDEX:
            self.pubsub.cast(FromPeer(msg.sender, msg.payload))

    def on_peer_welcome(self, msg: PeerWelcome, route: Route) -> None:
        now = time.monotonic()
        peers, version = split_version(msg.peers)
        reason = incompatible(msg.name, version, self.me)
        if reason is not None:  # it should have refused us: a node that does not check
            if self.book.refuse(msg.name, reason, now):
                self.log.error("%s: refused peer %s: %s", self.me, msg.name, reason)
            return
        for address in self.book.learn(msg.name, route, peers, now):
            self._connect(address, now)

    def on_peer_refused(self, msg: PeerRefused, route: Route) -> None:
        if self.book.refuse(msg.name, msg.reason, time.monotonic()):
            self.log.error("%s: peer %s refused this node: %s", self.me, msg.name, msg.reason)

    def on_peer_hello(self, msg: PeerHello, route: Route) -> None:
        if msg.name == self.me:
            return
        now = time.monotonic()
        peers, version = split_version(msg.peers)
        reason = incompatible(msg.name, version, self.me)
        if reason is None and msg.pool_size != self.pool_size:
            reason = (
                f"pool_size mismatch: {msg.name} has {msg.pool_size}, "
                f"{self.me} has {self.pool_size}; every node of a cluster needs the same"
            )
        if reason is not None:
            if self.book.refuse(msg.name, reason, now):
                self.log.error("%s: refused peer %s: %s", self.me, msg.name, reason)
            self._reply(route, codec.encode(PeerRefused(self.me, reason)))
            return
        for address in self.book.hello(msg.name, route, msg.listen, peers, now):
            self._connect(address, now)
        told = self.book.gossip(route, self.book.passed_on(now), now)
        self._reply(route, codec.encode(PeerWelcome(self.me, with_version(told))))

    def _reply(self, route: Route, body: bytes) -> None:
        """Send on a route without ever waiting: a frame that cannot go now is dropped
        (not connected yet, queue full, peer gone); replication repairs losses."""
        kind, where = route
        try:
            if kind == "out":
                self.outgoing[where].send(body, zmq.NOBLOCK)
            else:
                self.listener.send_multipart((where, body), zmq.NOBLOCK)
            self.sent += 1
        except zmq.ZMQError:
            self.dropped += 1
