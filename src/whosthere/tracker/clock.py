"""Version-vector helpers for replication: which peer knows more, and whom to ask.

A clock maps a replica ref to the highest contiguous counter seen from it (a `State.context`).
Phoenix compares clocks to decide which peers to ask for a transfer; the rules here follow
its `Clock` module, asymmetries included, because they decide how often transfers happen.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

R = TypeVar("R", bound=Hashable)  # what names a replica: a replica ref in the shard


def dominates(c1: Mapping[R, int], c2: Mapping[R, int]) -> bool:
    """c1 has seen everything c2 has (and c1 names at least as many replicas)."""
    if len(c1) < len(c2):
        return False
    return all(c1.get(r, 0) >= n for r, n in c2.items())


def dominates_or_equal(c1: Mapping[R, int], c2: Mapping[R, int]) -> bool:
    """Every replica of c1 is at least as far as in c2 (only c1's replicas are checked)."""
    if not c1:
        return not c2
    return all(n >= c2.get(r, 0) for r, n in c1.items())


def upperbound(clocks: Iterable[Mapping[R, int]]) -> dict[R, int]:
    """Element-wise max over the union of replicas."""
    out: dict[R, int] = {}
    for clock in clocks:
        for r, n in clock.items():
            if n > out.get(r, -1):
                out[r] = n
    return out


def lowerbound(c1: Mapping[R, int], c2: Mapping[R, int]) -> dict[R, int]:
    """Element-wise min where both name the replica; elsewhere the one value there is."""
    out = dict(c1)
    for r, n in c2.items():
        out[r] = min(out[r], n) if r in out else n
    return out


ClockSet = list[tuple[R, dict[R, int]]]  # [(replica, its clock), ...]


def append_clock(clockset: ClockSet[R], replica: R, clock: Mapping[R, int]) -> ClockSet[R]:
    """Keep the smallest set of peers whose clocks together cover the most knowledge.

    An empty clock is ignored. A clock that dominates the union of the set replaces it; one
    the union dominates changes nothing; otherwise members it dominates go, and it joins if
    it replaced any or some remaining member does not dominate it.
    """
    if not clock:
        return clockset
    union = upperbound(c for _, c in clockset)
    if dominates(clock, union):
        return [(replica, dict(clock))]
    if dominates(union, clock):
        return clockset
    kept = [(r, c) for r, c in clockset if not dominates(clock, c)]
    if len(kept) < len(clockset) or not all(dominates(c, clock) for _, c in kept):
        return [*kept, (replica, dict(clock))]
    return kept


def replicas_of(clockset: ClockSet[R]) -> list[R]:
    return [r for r, _ in clockset]
