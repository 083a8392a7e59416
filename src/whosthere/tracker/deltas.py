"""Delta generations: recent history kept in windows, to answer a transfer with less than the
whole state.

Each generation is one contiguous delta ending at the newest change; generation i holds at
most `max_delta_sizes[i]` values and dots, so the smallest covers the shortest window. A peer
that asks for a transfer gets the first generation that starts at or before what it knows
and brings it something new; when none does, it gets a snapshot of the whole state.
"""

from __future__ import annotations

from whosthere.tracker.clock import dominates, dominates_or_equal, lowerbound, upperbound
from whosthere.tracker.state import Delta, ReplicaRef, prune_delta


def merge(older: Delta, newer: Delta) -> Delta | None:
    """The two deltas as one, or None if their ranges do not touch, in either order (merging
    across a gap would lose the changes in it)."""
    if not (
        dominates_or_equal(older.end, newer.start) and dominates_or_equal(newer.end, older.start)
    ):
        return None
    clouds = {r: set(c) for r, c in older.clouds.items()}
    for r, cloud in newer.clouds.items():
        clouds.setdefault(r, set()).update(cloud)
    # an older value stays unless the newer delta saw its dot without keeping it (removed);
    # a newer value joins unless the older delta saw its dot already
    values = {
        dot: value
        for dot, value in older.values.items()
        if dot in newer.values or dot[1] not in newer.clouds.get(dot[0], ())
    }
    for dot, value in newer.values.items():
        if dot not in older.values and dot[1] not in older.clouds.get(dot[0], ()):
            values[dot] = value
    return Delta(
        older.replica,
        lowerbound(older.start, newer.start),
        upperbound([older.end, newer.end]),
        clouds,
        values,
    )


def push(
    generations: list[Delta], delta: Delta, caps: tuple[int, ...], pending: Delta
) -> list[Delta]:
    """The generations after `delta` (a flushed own delta, or one merged from a peer).

    With no generations yet, each starts as `pending` (the replica's fresh pending delta).
    Each generation absorbs the delta while it fits its cap; one that would overflow
    restarts from the window of the generation below it, or empty (from `pending`) when
    that is over its cap too: a generation never holds more than its cap (a burst of 25,000
    joins kept in each of three generations cost more memory than the presences did).
    """
    if not generations:
        generations = [_copy(pending) for _ in caps]
    out: list[Delta] = []
    carry = delta
    for generation, cap in zip(generations, caps, strict=True):
        merged = merge(generation, delta)
        if merged is None:
            out.append(generation)
            carry = generation
        elif merged.size() <= cap:
            out.append(merged)
            carry = merged
        else:
            out.append(carry if carry.size() <= cap else _copy(pending))
            carry = merged
    return out


def for_peer(generations: list[Delta], peer_context: dict[ReplicaRef, int]) -> Delta | None:
    """The first generation that suits a peer with `peer_context`, pruned to the replicas it
    knows; None if none does (send the whole state)."""
    known = peer_context.keys()
    for generation in generations:
        start = {r: n for r, n in generation.start.items() if r in known}
        end = {r: n for r, n in generation.end.items() if r in known}
        if (
            not dominates_or_equal(start, end)  # brings something on the peer's replicas
            and dominates_or_equal(peer_context, start)  # starts where the peer is
            and not dominates(peer_context, end)  # the peer lacks some of it
        ):
            return Delta(
                generation.replica,
                start,
                end,
                {r: set(c) for r, c in generation.clouds.items() if r in known},
                {dot: v for dot, v in generation.values.items() if dot[0] in known},
            )
    return None


def prune(generations: list[Delta], replica: ReplicaRef) -> None:
    """Forget a permdowned replica in every generation."""
    for generation in generations:
        prune_delta(generation, replica)


def _copy(delta: Delta) -> Delta:
    return Delta(
        delta.replica,
        dict(delta.start),
        dict(delta.end),
        {r: set(c) for r, c in delta.clouds.items()},
        dict(delta.values),
    )
