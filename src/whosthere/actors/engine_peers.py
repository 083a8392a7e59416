"""The Redis engine actor's bookkeeping of its peers and of its own name, apart from Redis so
it can be tested alone (pure: time comes in as an argument).

On Redis there are no connections to keep: a peer is a name heard greeting (`PeerHello`) on
the cluster-wide channel. `EnginePeers` decides whose frames count (greeted with our
pool_size, not refused, not dropped by the test hook), what is refused and logged, and what
is forgotten after `forget_after` of silence. `NameLease` decides what the node does about
its name's lease on the server: serve once it holds it; wait while another holds it, then
refuse to start; serve alone while the server cannot be reached at boot (a netsplit: it
joins once the server is back).
"""

from __future__ import annotations

import logging

from whosthere.actors.refusals import Refusals


class EnginePeers(Refusals):
    def __init__(self, me: str, pool_size: int, forget_after: float, log: logging.Logger) -> None:
        super().__init__()
        self.me = me
        self.pool_size = pool_size
        self.forget_after = forget_after
        self.log = log
        self.heard: dict[str, float] = {}  # peer name -> last frame from it that counted
        self.dropping: set[str] = set()  # test hook: peers whose traffic is lost both ways

    def hello(
        self, name: str, pool_size: object, now: float, mismatch: str | None = None
    ) -> str | None:
        """`name` greeted every node (`mismatch`: why its wire protocol cannot join us, as
        `transport.wire_version.incompatible` says). Returns why it is refused (to tell
        it), or None."""
        reason = mismatch
        if reason is None and pool_size != self.pool_size:
            reason = (
                f"pool_size mismatch: {name} has {pool_size}, {self.me} has "
                f"{self.pool_size}; every node of a cluster needs the same"
            )
        if reason is not None:
            if self.refuse(name, reason, now):
                self.log.error("%s: refused peer %s: %s", self.me, name, reason)
            self.heard.pop(name, None)
            return reason
        self.pardon(name)
        if name not in self.heard and name not in self.dropping:
            self.log.info("%s: peer %s joined through Redis", self.me, name)
        if name not in self.dropping:
            self.heard[name] = now
        return None

    def accepts(self, sender: str, now: float) -> bool:
        """Whether a cast from `sender` counts: it greeted us, compatible, and is not dropped."""
        if sender not in self.heard or sender in self.dropping:
            return False
        self.heard[sender] = now
        return True

    def reachable(self) -> list[str]:
        """The peers a cast to all goes to one by one while the test hook drops some."""
        return sorted(n for n in self.heard if n not in self.dropping)

    def forget_silent(self, now: float) -> None:
        """Forget peers and refusals silent for `forget_after` (the shards decide up and
        down; this only keeps the book from growing)."""
        for name, at in list(self.heard.items()):
            if now - at > self.forget_after:
                del self.heard[name]
        self.forget_refusals(now, self.forget_after)


class NameLease:
    """What to do about the name's lease, from what the server answers.

    States: "claiming" (boot: not serving yet), "held" (joined), "alone" (serving, the
    server unreachable since boot or the name taken since: not joined), "refused"."""

    def __init__(self, name: str, wait_s: float, started_at: float) -> None:
        self.name = name
        self.wait_s = wait_s
        self.started_at = started_at
        self.state = "claiming"
        self.holder = ""  # who holds the name, when another does
        self.loss_logged = False  # the name taken while serving was logged

    @property
    def joined(self) -> bool:
        return self.state == "held"

    def claimed(self) -> bool:
        """The server gave us the lease (or renewed it). True if this is news."""
        news = self.state != "held"
        self.state = "held"
        self.loss_logged = False
        self.holder = ""
        return news

    def taken(self, holder: str, now: float) -> str:
        """Another holds the name: "wait" (booting, within wait_s), "refuse" (booting, waited
        long enough), or "lost" (we served: this is news to log) / "still" (logged before)."""
        self.holder = holder
        if self.state == "claiming":
            if now - self.started_at < self.wait_s:
                return "wait"
            self.state = "refused"
            return "refuse"
        if self.state == "refused":
            return "still"
        news = self.state == "held" or not self.loss_logged
        self.state = "alone"
        self.loss_logged = True
        return "lost" if news else "still"

    def unreachable(self) -> bool:
        """The server cannot be reached. True if the node should start serving now (booting:
        a netsplit from the start; it joins when the server answers)."""
        if self.state == "claiming":
            self.state = "alone"
            return True
        return False

    def refusal(self) -> str:
        return (
            f"node name {self.name!r} is taken on the Redis engine (held by {self.holder}); "
            f"waited {self.wait_s:g} s (down_period) for its lease to lapse. Node names on "
            f"one Redis must be unique: give this node another name"
        )
