"""The cluster actor's bookkeeping of its peers, apart from its sockets so it can be tested alone.

Pure like the tracker: time comes in as an argument, and what needs a socket comes back for
the actor to do (addresses to dial, addresses to close). It decides which connection reaches
a peer name, which connection speaks for which name, which addresses are passed on, and what
is forgotten.

A route is where a frame came from and where an answer goes: `("out", address)` is our own
connection to a peer's listen address, `("in", identity)` one the peer made to our listener.

Nothing grows for ever: an address learned from others that has been silent for
`forget_after` goes dormant: no longer passed on (only addresses heard from lately are), still
dialled with back-off so a long split can heal, and only the newest `_MAX_DORMANT` kept. A
name that answers on another's address replaces it (a node restarted under a new name).
At most `_MAX_LEARNED` addresses learned from peers are dialled at once: a buggy or rogue
peer could otherwise make us open thousands of connections (seeds are the user's, not
counted). A conflict (two live names on one address) is remembered, to be logged once,
while both names are known, for `forget_after` at most, and only the newest `_MAX_CONFLICTS`.
It is a conflict only once both names have gone on talking for `_QUIET_S`: a node replaced
under a new name on the same address (a rolling deploy on the same host) greets us while
the old name's last words are still recent, and then the old one falls silent.

Peers found by DNS (`discover`): the addresses DNS names now are dialled, never counted
against the cap, and kept however long they are silent, as seeds are (the name is the
user's; its addresses come and go). With discovery, DNS is how a long split heals, so an
address silent for `forget_after` (its replica permdown) that neither DNS nor a live peer
names any more is closed rather than kept dormant. Our own addresses (`own`: the one we
advertise, and every local one when we listen on a wildcard) are never dialled.
"""

from __future__ import annotations

import logging
from typing import Any

from whosthere.actors.refusals import Refusals

HELLO_EVERY_S = 1.0  # every peer greets each of its connections this often...
_QUIET_S = 3 * HELLO_EVERY_S  # ...so this long without a word, a peer may be replaced
# a connection is told the addresses we know when they changed, and this often anyway: the
# whole list in every hello made the gossip grow as n^2 per node (100 nodes: 40 MB/s in all)
GOSSIP_EVERY_S = 30.0
_MAX_DORMANT = 64  # forgotten addresses still dialled (a long split may heal through them)
_MAX_LEARNED = 256  # addresses learned from peers dialled at once (a cluster's size, and more)
_MAX_CONFLICTS = 256  # conflicts remembered (each is logged once while remembered)

Route = tuple[str, Any]  # ("out", peer listen address) or ("in", listener identity)


class PeerBook(Refusals):
    def __init__(
        self,
        me: str,
        seeds: set[str],
        forget_after: float,
        log: logging.Logger,
        discovering: bool = False,
    ) -> None:
        super().__init__()
        self.me = me
        self.listen = ""  # our own address, once bound
        self.own: set[str] = set()  # every address that reaches us (the listen one too)
        self.seeds = set(seeds)  # never forgotten
        self.discovering = discovering  # peers are found by DNS names too
        self.discovered: set[str] = set()  # the addresses DNS names now
        self.forget_after = forget_after
        self.log = log
        self.dialled_at: dict[str, float] = {}  # peer listen address we dial -> when first
        self.answered: dict[str, float] = {}  # peer listen address -> last heard on it
        self.dormant: set[str] = set()  # addresses forgotten, still dialled, not passed on
        self.address_of: dict[str, str] = {}  # peer name -> its listen address
        self.routes: dict[str, Route] = {}  # peer name -> the route it is reached by
        # route -> the peer name that greeted us on it: a peer's casts count only on the
        # connections it introduced itself on (its `sender` field is not taken on trust)
        self.speaks_for: dict[Route, str] = {}
        self.route_heard: dict[Route, float] = {}  # incoming route -> last frame
        self.heard: dict[str, float] = {}  # peer name -> last heard
        # two live names on one address -> when it was logged (logged again after forget_after)
        self.conflicts: dict[tuple[str, str], float] = {}
        # two names heard on one address, not known to be a conflict yet -> when first seen
        self.suspects: dict[tuple[str, str], float] = {}
        self.capped = False  # the cap on learned addresses was hit and logged, not lifted since
        self.told: dict[Route, tuple[list[str], float]] = {}  # route -> addresses told, when
        self.named: dict[Route, set[str]] = {}  # route -> the addresses its peer last told us

    def listening(self, address: str, own: set[str] | None = None) -> list[str]:
        """Our own address (and every other in `own` that reaches us) is never dialled nor
        passed on, even when given as a seed. Returns the seeds to dial."""
        self.listen = address
        self.own = {address, *(own or ())}
        self.seeds -= self.own
        return sorted(self.seeds)

    def discover(self, addresses: set[str]) -> list[str]:
        """DNS names `addresses` now (those it named before and no longer does are left to
        `forget_silent`). Returns those not dialled yet, to dial."""
        self.discovered = addresses - self.own
        return sorted(a for a in self.discovered if a not in self.dialled_at)

    def dialled(self, address: str, now: float) -> None:
        """The actor dials `address` from now on: its silence is counted from now."""
        self.dialled_at[address] = now

    def heard_on(self, route: Route, now: float) -> None:
        """A frame came on `route`: our connection's address answers (dormant no more); an
        incoming route is kept alive only once a peer greeted on it (anyone may connect)."""
        kind, where = route
        if kind == "out":
            self.answered[where] = now
            self.dormant.discard(where)
        elif route in self.speaks_for:
            self.route_heard[route] = now

    def accepts(self, sender: str, route: Route, now: float) -> bool:
        """Whether a cast from `sender` on `route` counts (it greeted us there)."""
        if self.speaks_for.get(route) != sender:
            return False
        self.heard[sender] = now
        return True

    def hello(
        self, name: str, route: Route, listen: str, peers: list[str], now: float
    ) -> list[str]:
        """A compatible peer greeted us on `route`. Returns the addresses to dial."""
        self.pardon(name)
        for other in [n for n, a in self.address_of.items() if a == listen and n != name]:
            if now - self.heard.get(other, 0.0) > _QUIET_S:
                self.log.info("%s: peer %s is now %s (same address)", self.me, other, name)
                self._forget_name(other)  # restarted under another name
            elif (pair := (min(other, name), max(other, name))) not in self.conflicts:
                self._suspect(pair, listen, now)  # either way round: one conflict
        to_dial = self.learn(name, route, [listen, *peers], now, listen=listen)
        self.address_of[name] = listen
        return to_dial

    def _suspect(self, pair: tuple[str, str], listen: str, now: float) -> None:
        """Both names of `pair` speak for `listen`: a conflict once it lasts `_QUIET_S`
        (logged then, once), and no more than a renamed node if one falls silent first."""
        since = self.suspects.setdefault(pair, now)
        if len(self.suspects) > _MAX_CONFLICTS:
            del self.suspects[next(iter(self.suspects))]  # the oldest
        if now - since <= _QUIET_S:
            return
        del self.suspects[pair]
        self.conflicts[pair] = now
        if len(self.conflicts) > _MAX_CONFLICTS:
            del self.conflicts[next(iter(self.conflicts))]  # the oldest
        self.log.warning("%s: peers %s and %s both say they listen at %s", self.me, *pair, listen)

    def learn(
        self,
        name: str,
        route: Route,
        addresses: list[Any],
        now: float,
        listen: str | None = None,
    ) -> list[str]:
        """`name` introduced itself on `route` (saying it listens at `listen`, in a hello)
        and knows `addresses`. Returns those not dialled yet, to dial."""
        if name == self.me:
            return []
        if route[0] == "out":  # whoever answers on our connection is the one there now
            for old in [n for n, r in self.routes.items() if r == route and n != name]:
                self.log.info("%s: peer %s is now %s (same address)", self.me, old, name)
                self._forget_name(old)
        else:
            self.route_heard[route] = now
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
            or (
                current[0] == "out"
                and listen not in (None, current[1])
                and now - self.answered.get(current[1], 0.0) > _QUIET_S
            )
        ):
            # the peer reconnected (a new identity), or moved: restarted on another address,
            # our connection to the old one silent (its hello just came on this route). A
            # connection that is only slow (a big transfer queued on it) is kept: switching
            # midway would split a fragmented message across two connections.
            self.log.info("%s: peer %s now reached via %s", self.me, name, route[0])
            self.routes[name] = route
        if route[0] == "out":
            self.address_of[name] = route[1]
        self.heard[name] = now
        told = {a for a in addresses if isinstance(a, str) and a != listen}  # from the wire
        if told:  # an empty list in a hello: nothing changed since last time
            self.named[route] = told
        new = list(
            dict.fromkeys(
                a
                for a in addresses
                if isinstance(a, str) and a not in self.own and a not in self.dialled_at
            )
        )
        return self._within_cap(name, new)

    def _within_cap(self, name: str, new: list[str]) -> list[str]:
        """The addresses `name` told us of that we may dial: seeds, and learned ones up to
        _MAX_LEARNED dialled at once. Hitting the cap is logged once until it is lifted."""
        users = self.seeds | self.discovered  # given by the user, or by DNS: not capped
        dialling = sum(1 for a in self.dialled_at if a not in users)
        seeds = [a for a in new if a in users]
        learned = [a for a in new if a not in users]
        room = max(0, _MAX_LEARNED - dialling)
        if len(learned) > room:
            if not self.capped:
                self.capped = True
                self.log.warning(
                    "%s: not dialling %d address(es) learned from %s: at most %d learned "
                    "addresses are dialled (%d already were)",
                    self.me,
                    len(learned) - room,
                    name,
                    _MAX_LEARNED,
                    dialling,
                )
            learned = learned[:room]
        elif room > len(learned):
            self.capped = False  # room again: a later overflow is news
        return seeds + learned

    def passed_on(self, now: float) -> list[str]:
        """The addresses worth telling peers: the seeds, and those that answered lately
        (a dead address would otherwise circulate for ever)."""
        live = {
            a
            for a, t in self.answered.items()
            if now - t < self.forget_after / 2 and a not in self.dormant
        }
        return sorted((self.seeds | live) - self.own)

    def gossip(self, route: Route, addresses: list[str], now: float) -> list[str]:
        """What to tell on `route` of the `addresses` we pass on: all of them if they changed
        since it was last told, or GOSSIP_EVERY_S after; else nothing (the peer has them)."""
        told = self.told.get(route)
        if told is not None and told[0] == addresses and now - told[1] < GOSSIP_EVERY_S:
            return []
        self.told[route] = (addresses, now)
        return addresses

    def forget_silent(self, now: float) -> list[str]:
        """Forget what has been silent for forget_after: names, incoming routes, refusals.
        A silent address goes dormant (still dialled, with back-off, so that a long split
        can heal, but no longer passed on). Returns the addresses to close: with discovery,
        the dormant ones neither DNS nor a live peer names; the oldest beyond _MAX_DORMANT."""
        for route in [r for r in self.named if r not in self.speaks_for]:
            del self.named[route]  # its peer is gone: what it named counts no more
        to_close: list[str] = []
        for address in list(self.dialled_at):
            if address in self.seeds or address in self.discovered:
                continue
            silent = now - self._last_heard(address)
            if silent <= self.forget_after:
                continue
            if address not in self.dormant:
                self.dormant.add(address)
                self.speaks_for.pop(("out", address), None)
                self.named.pop(("out", address), None)
                for name in [n for n, r in self.routes.items() if r == ("out", address)]:
                    self._forget_name(name)
                if not self.discovering:
                    self.log.info(
                        "%s: peer address %s silent %.0f s: dormant", self.me, address, silent
                    )
            if self.discovering and not self._named_by_live_peer(address):
                self.log.info(
                    "%s: peer address %s silent %.0f s and named by neither DNS nor a peer: "
                    "no longer dialled",
                    self.me,
                    address,
                    silent,
                )
                to_close.append(address)
        for address in to_close:
            self._drop_address(address)
        to_close.extend(self._beyond_dormant_cap())
        for route, at in list(self.route_heard.items()):
            if now - at > self.forget_after:
                del self.route_heard[route]
                self.speaks_for.pop(route, None)
        for name, at in list(self.heard.items()):
            via = self.routes.get(name)
            if now - at > self.forget_after and (via is None or via[0] == "in"):
                self._forget_name(name)  # an incoming route only: gone with its peer
        self.forget_refusals(now, self.forget_after)
        for pair, at in list(self.conflicts.items()):
            if now - at > self.forget_after:
                del self.conflicts[pair]
        for pair, at in list(self.suspects.items()):
            if now - at > self.forget_after:
                del self.suspects[pair]
        for route, (_, at) in list(self.told.items()):
            if now - at > GOSSIP_EVERY_S:
                del self.told[route]  # told again in full next time anyway
        return to_close

    def _named_by_live_peer(self, address: str) -> bool:
        """Whether a peer we still hear told us of `address` (when it last told us any)."""
        return any(address in t for r, t in self.named.items() if r in self.speaks_for)

    def _beyond_dormant_cap(self) -> list[str]:
        """The oldest dormant addresses beyond _MAX_DORMANT, forgotten: to close."""
        by_age = sorted(self.dormant, key=self._last_heard)
        to_close = by_age[: max(0, len(self.dormant) - _MAX_DORMANT)]
        for address in to_close:
            self._drop_address(address)
        return to_close

    def _drop_address(self, address: str) -> None:
        """No longer dialled (the actor closes its connection): learned afresh if named."""
        self.dormant.discard(address)
        self.answered.pop(address, None)
        del self.dialled_at[address]

    def _last_heard(self, address: str) -> float:
        return self.answered.get(address, self.dialled_at[address])

    def _forget_name(self, name: str) -> None:
        for route in [r for r, n in self.speaks_for.items() if n == name]:
            del self.speaks_for[route]
            self.told.pop(route, None)  # whoever answers there next is told afresh
        self.routes.pop(name, None)
        self.address_of.pop(name, None)
        self.heard.pop(name, None)
        for pair in [p for p in self.conflicts if name in p]:
            del self.conflicts[pair]
        for pair in [p for p in self.suspects if name in p]:
            del self.suspects[pair]
