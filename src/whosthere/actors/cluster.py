"""The cluster actor: this node's one door to its peers.

It listens on the node's `listen` endpoint (tcp) and connects to every peer it knows of; the
peers it hears of from others (`PeerHello` carries the addresses a node knows) it connects to
as well, so nodes given one another's address form a full mesh. Shards hand it their
replication messages (`ClusterCast`); it routes them, unopened, to shard i of the named node
or of every node, and hands what comes in to the local shard (`FromPeer`).

With a cookie, every connection is ZeroMQ CURVE with keys derived from it: a node without the
cookie cannot complete the handshake. Without a cookie the node listens on loopback only.
Peers with another pool_size are refused, and both sides log and report why.

A peer that is not up yet or goes away never blocks anything: sends never wait (ZeroMQ
reconnects by itself; what cannot be sent now is dropped, and replication repairs the loss
with transfers). Hellos are repeated every second until answered.

Nothing grows for ever: an address learned from others that has been silent for
`forget_after` (the permdown period, at least 10 s) goes dormant: no longer passed on (only
addresses heard from lately are), still dialled with back-off so a long split can heal, and
only the newest `_MAX_DORMANT` kept. A name that answers on another's address replaces it
(a node restarted under a new name).
"""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from whosthere.actors.base import Actor, ActorSpec, routes
from whosthere.errors import MalformedFrame
from whosthere.topology import Topology
from whosthere.transport import codec
from whosthere.transport.cookie import COOKIE_ENV, curve_keys
from whosthere.transport.endpoints import advertised, valid_endpoint
from whosthere.transport.messages import (
    ClusterCast,
    DropPeers,
    FromPeer,
    PeerCast,
    PeerHello,
    PeerRefused,
    PeerWelcome,
)
from whosthere.transport.sockets import Dealer, bind, socket

_HELLO_EVERY_S = 1.0
_QUIET_S = 3 * _HELLO_EVERY_S  # a peer silent this long may be replaced by another name
_MAX_DORMANT = 64  # forgotten addresses still dialled (a long split may heal through them)
_PEER_HWM = 10_000  # frames queued for one peer before they are dropped


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
        self.seeds: set[str] = {p for p in cluster.peers if p}  # never forgotten
        # as long as the shards keep a silent peer, but long enough for many missed hellos
        self.forget_after = max(config.tracker.permdown_period, 10 * _HELLO_EVERY_S)
        self.shards = [Dealer(e, what=f"shard {i}", unbounded=True)
                       for i, e in enumerate(Topology(config).shards)]  # fmt: skip
        self.bound = ""
        self.listener = socket(zmq.ROUTER)
        self.listener.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # IPv6 only when asked for: with it, an IPv4 bind reports an IPv4-mapped address
        self.listener.ipv6 = "[" in self.listen_endpoint
        self.outgoing: dict[str, zmq.Socket] = {}  # peer listen address -> our DEALER
        self.answered: dict[str, float] = {}  # peer listen address -> last heard on it
        self.dialled: dict[str, float] = {}  # peer listen address -> when first dialled
        self.dormant: set[str] = set()  # addresses forgotten, still dialled, not passed on
        self.address_of: dict[str, str] = {}  # peer name -> its listen address
        self.routes: dict[str, tuple[str, Any]] = {}  # peer name -> ("out", addr) / ("in", id)
        # route -> the peer name that greeted us on it: a peer's casts count only on the
        # connections it introduced itself on (its `sender` field is not taken on trust)
        self.speaks_for: dict[tuple[str, Any], str] = {}
        self.route_heard: dict[tuple[str, Any], float] = {}  # incoming route -> last frame
        self.refused: dict[str, str] = {}  # peer name -> why
        self.refused_at: dict[str, float] = {}
        self.heard: dict[str, float] = {}  # peer name -> monotonic time last heard
        self.dropping: set[str] = set()  # test hook: peers whose traffic is dropped
        self.conflicts: set[tuple[str, str]] = set()  # two live names on one address, logged
        self.sent = self.received = self.dropped = 0
        self.from_peers = routes(self, (PeerCast, PeerHello, PeerWelcome, PeerRefused))

    # -- setup -----------------------------------------------------------------------------

    def on_start(self) -> None:
        if self.cookie:
            public, secret = curve_keys(self.cookie)
            self.listener.curve_server = True
            self.listener.curve_publickey = public
            self.listener.curve_secretkey = secret
        self.bound = bind(self.listener, self.listen_endpoint)
        self.listen_endpoint = advertised(self.bound, self.advertise)
        self.seeds.discard(self.listen_endpoint)
        self.add_reader(self.listener, self._on_listener)
        for address in sorted(self.seeds):
            self._connect(address)
        self.call_later(0, self._hello_all)

    def on_stop(self) -> None:
        for sock in self.outgoing.values():
            sock.close(linger=500)  # a departing shard's goodbye may still be queued
        for dealer in self.shards:
            dealer.close()

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "listen": self.listen_endpoint,
            "bound": self.bound,
            "peers": {
                name: {
                    "address": self.address_of.get(name, ""),
                    "via": self.routes[name][0],
                    "last_heard_age": round(now - self.heard.get(name, now), 3),
                }
                for name in sorted(self.routes)
            },
            "refused": dict(self.refused),
            "sent": self.sent,
            "received": self.received,
            "dropped": self.dropped,
        }

    def _connect(self, address: str) -> bool:
        """Dial a peer's listen address; False (logged) if it is not a usable endpoint."""
        if address in self.outgoing or address == self.listen_endpoint:
            return True
        if not valid_endpoint(address):
            self.log.warning("%s: ignored peer address %r (not tcp://host:port)", self.me, address)
            return False
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
            return False
        self.outgoing[address] = sock
        self.dialled[address] = time.monotonic()
        self.add_reader(sock, lambda: self._on_outgoing(address))
        return True

    def _passed_on(self) -> list[str]:
        """The addresses worth telling peers: the seeds, and those that answered lately
        (a dead address would otherwise circulate for ever)."""
        now = time.monotonic()
        live = {a for a, t in self.answered.items()
                if now - t < self.forget_after / 2 and a not in self.dormant}  # fmt: skip
        return sorted((self.seeds | live) - {self.listen_endpoint})

    def _hello(self) -> bytes:
        return codec.encode(
            PeerHello(self.me, self.pool_size, self.listen_endpoint, self._passed_on())
        )

    def _hello_all(self) -> None:
        """Greet every peer connection, every second: a restarted peer learns of us again,
        and the mesh fills in as addresses spread."""
        self._forget_silent(time.monotonic())
        hello = self._hello()
        for address in self.outgoing:
            self._reply(("out", address), hello)
        self.call_later(_HELLO_EVERY_S, self._hello_all)

    def _forget_silent(self, now: float) -> None:
        """Forget what has been silent for forget_after: names, incoming routes, refusals.
        A silent address goes dormant (still dialled, with back-off, so that a long split
        can heal, but no longer passed on); only the oldest beyond _MAX_DORMANT are closed."""
        for address in list(self.outgoing):
            if address in self.seeds or address in self.dormant:
                continue
            silent = now - self.answered.get(address, self.dialled[address])
            if silent > self.forget_after:
                self.log.info("%s: peer address %s silent %.0f s: dormant", self.me, address,
                              silent)  # fmt: skip
                self.dormant.add(address)
                self.speaks_for.pop(("out", address), None)
                for name in [n for n, r in self.routes.items() if r == ("out", address)]:
                    self._forget_name(name)
        if len(self.dormant) > _MAX_DORMANT:
            by_age = sorted(self.dormant, key=lambda a: self.answered.get(a, self.dialled[a]))
            for address in by_age[: len(self.dormant) - _MAX_DORMANT]:
                self.dormant.discard(address)
                self.answered.pop(address, None)
                del self.dialled[address]
                sock = self.outgoing.pop(address)
                self.remove_reader(sock)
                sock.close(linger=0)
        for route, at in list(self.route_heard.items()):
            if now - at > self.forget_after:
                del self.route_heard[route]
                self.speaks_for.pop(route, None)
        for name, at in list(self.heard.items()):
            route = self.routes.get(name)
            if now - at > self.forget_after and (route is None or route[0] == "in"):
                self._forget_name(name)  # an incoming route only: gone with its peer
        for name, at in list(self.refused_at.items()):
            if now - at > self.forget_after:
                del self.refused[name], self.refused_at[name]

    def _forget_name(self, name: str) -> None:
        for route in [r for r, n in self.speaks_for.items() if n == name]:
            del self.speaks_for[route]
        self.routes.pop(name, None)
        self.address_of.pop(name, None)
        self.heard.pop(name, None)

    # -- from shards -----------------------------------------------------------------------

    def on_cluster_cast(self, msg: ClusterCast) -> None:
        body = codec.encode(PeerCast(self.me, msg.index, msg.payload))
        if msg.to != "*":
            self._send_to(msg.to, body)
            return
        sent = set()
        for name, route in list(self.routes.items()):
            if route not in sent:  # two names on one route (a renamed node): send once
                sent.add(route)
                self._send_to(name, body)

    def on_drop_peers(self, msg: DropPeers) -> None:
        """Test hook: simulate a netsplit with these peers (their traffic both ways lost)."""
        self.dropping = set(msg.names)

    def _send_to(self, name: str, body: bytes) -> None:
        route = self.routes.get(name)
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
                if route in self.speaks_for:
                    self.route_heard[route] = time.monotonic()
                self._from_peer(frames[1], route)

    def _on_outgoing(self, address: str) -> None:
        sock = self.outgoing[address]
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 1:
                self.answered[address] = time.monotonic()
                self.dormant.discard(address)
                self._from_peer(frames[0], ("out", address))

    def _from_peer(self, body: bytes, route: tuple[str, Any]) -> None:
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

    def on_peer_cast(self, msg: PeerCast, route: tuple[str, Any]) -> None:
        if msg.sender in self.dropping or self.speaks_for.get(route) != msg.sender:
            self.dropped += 1
            return
        self.received += 1
        self.heard[msg.sender] = time.monotonic()
        if 0 <= msg.index < len(self.shards):
            self.shards[msg.index].cast(FromPeer(msg.sender, msg.payload))

    def on_peer_welcome(self, msg: PeerWelcome, route: tuple[str, Any]) -> None:
        self._learn(msg.name, route, msg.peers)

    def on_peer_refused(self, msg: PeerRefused, route: tuple[str, Any]) -> None:
        if self.refused.get(msg.name) != msg.reason:
            self.log.error("%s: peer %s refused this node: %s", self.me, msg.name, msg.reason)
        self._refuse(msg.name, msg.reason)

    def on_peer_hello(self, msg: PeerHello, route: tuple[str, Any]) -> None:
        if msg.name == self.me:
            return
        if msg.pool_size != self.pool_size:
            reason = (
                f"pool_size mismatch: {msg.name} has {msg.pool_size}, "
                f"{self.me} has {self.pool_size}; every node of a cluster needs the same"
            )
            if self.refused.get(msg.name) != reason:
                self.log.error("%s: refused peer %s: %s", self.me, msg.name, reason)
            self._refuse(msg.name, reason)
            self._reply(route, codec.encode(PeerRefused(self.me, reason)))
            return
        self.refused.pop(msg.name, None)
        self.refused_at.pop(msg.name, None)
        now = time.monotonic()
        for other in [n for n, a in self.address_of.items() if a == msg.listen and n != msg.name]:
            if now - self.heard.get(other, 0.0) > _QUIET_S:
                self.log.info("%s: peer %s is now %s (same address)", self.me, other, msg.name)
                self._forget_name(other)  # restarted under another name
            elif (other, msg.name) not in self.conflicts:
                self.conflicts.add((other, msg.name))
                self.log.warning("%s: peers %s and %s both say they listen at %s",
                                 self.me, other, msg.name, msg.listen)  # fmt: skip
        self._learn(msg.name, route, [msg.listen, *msg.peers], listen=msg.listen)
        self.address_of[msg.name] = msg.listen
        self._reply(route, codec.encode(PeerWelcome(self.me, self._passed_on())))

    def _quiet(self, route: tuple[str, Any]) -> bool:
        """Nothing came on `route` lately (its peer greets on every route every second)."""
        kind, where = route
        last = self.answered.get(where, 0.0) if kind == "out" else self.route_heard.get(route, 0.0)
        return time.monotonic() - last > _QUIET_S

    def _refuse(self, name: str, reason: str) -> None:
        self.refused[name] = reason
        self.refused_at[name] = time.monotonic()

    def _reply(self, route: tuple[str, Any], body: bytes) -> None:
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

    def _learn(
        self, name: str, route: tuple[str, Any], addresses: list[str], listen: str | None = None
    ) -> None:
        if name == self.me:
            return
        if route[0] == "out":  # whoever answers on our connection is the one there now
            for old in [n for n, r in self.routes.items() if r == route and n != name]:
                self.log.info("%s: peer %s is now %s (same address)", self.me, old, name)
                self._forget_name(old)
        else:
            self.route_heard[route] = time.monotonic()
        self.speaks_for[route] = name  # a peer may reach us on several routes
        current = self.routes.get(name)
        if current is None or (current[0] == "in" and route[0] == "out"):
            if current is None:
                self.log.info("%s: connected to peer %s", self.me, name)
            # prefer our own connection (it reconnects by itself), and then keep it: one
            # connection per peer keeps the peer's messages in order
            self.routes[name] = route
        elif current != route and (
            current[0] == route[0] == "in"
            or (current[0] == "out" and listen not in (None, current[1]) and self._quiet(current))
        ):
            # the peer reconnected (a new identity), or moved: restarted on another address,
            # our connection to the old one silent (its hello just came on this route). A
            # connection that is only slow (a big transfer queued on it) is kept: switching
            # midway would split a fragmented message across two connections.
            self.log.info("%s: peer %s now reached via %s", self.me, name, route[0])
            self.routes[name] = route
        if route[0] == "out":
            self.address_of[name] = route[1]
        self.heard[name] = time.monotonic()
        for address in addresses:
            if isinstance(address, str) and address != self.listen_endpoint:
                self._connect(address)
