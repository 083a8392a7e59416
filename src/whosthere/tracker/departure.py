"""A graceful permdown's goodbye, waiting for the peers to acknowledge it.

A lost goodbye would leave this replica's presences shown on that peer for `down_period`, so
the goodbye is repeated to the peers that have not acknowledged it, until all have or the
deadline passes. Pure: time comes in as `now` (monotonic seconds); the shard sends.
"""

from __future__ import annotations

from collections.abc import Iterable

GOODBYE_FOR_S = 1.0  # a goodbye is repeated until every peer acknowledges it, or this long


class Departure:
    __slots__ = ("deadline", "waiting")

    def __init__(self, peers: Iterable[str], deadline: float) -> None:
        self.waiting = set(peers)  # peers that have not acknowledged yet
        self.deadline = deadline  # when to give up on them

    @property
    def done(self) -> bool:
        return not self.waiting

    def acked(self, peer: str) -> bool:
        """`peer` acknowledged (again, or never waited for: no matter); True once all have."""
        self.waiting.discard(peer)
        return not self.waiting

    def due(self, now: float) -> bool:
        """True: say goodbye again to `waiting`; False: the deadline has come, give up."""
        return now < self.deadline

    def missing(self) -> list[str]:
        """The peers that have not acknowledged, sorted (for the reply and the log)."""
        return sorted(self.waiting)
