"""Delta generations (Phoenix's delta_generation_test and its extraction cases, re-expressed)."""

from __future__ import annotations

from whosthere.tracker import deltas
from whosthere.tracker.state import Delta, State

S1, S2, S3 = ("s1", 1), ("s2", 1), ("s3", 1)
CAPS = (2, 5, 6)


def keys(delta: Delta) -> list[str]:
    return sorted(v[2] for v in delta.values.values())


def dots(delta: Delta) -> list[tuple]:
    return sorted((r, c) for r, cloud in delta.clouds.items() for c in cloud)


def flush(s: State, generations, caps=CAPS):
    delta = s.take_delta()
    return deltas.push(generations, delta, caps, s.delta), delta


def test_generations_slide_over_recent_history():
    s1, s2 = State(S1), State(S2)
    s1.join(1, "lobby", "user1", b"")
    gens, d1 = flush(s1, [])
    assert [keys(g) for g in gens] == [["user1"]] * 3
    assert deltas.push(gens, d1, CAPS, s1.delta) == gens  # a duplicate changes nothing
    s1.join(2, "lobby", "user2", b"")
    gens, _ = flush(s1, gens)
    assert [keys(g) for g in gens] == [["user2"], ["user1", "user2"], ["user1", "user2"]]
    s1.join(3, "lobby", "user3", b"")
    gens, d3 = flush(s1, gens)
    assert gens[0] == d3
    assert [keys(g) for g in gens] == [["user3"], ["user2", "user3"], ["user1", "user2", "user3"]]
    assert dots(gens[2]) == [(S1, 1), (S1, 2), (S1, 3)]
    s1.join(4, "lobby", "user4", b"")
    gens, _ = flush(s1, gens)
    assert [keys(g) for g in gens] == [["user4"], ["user3", "user4"], ["user2", "user3", "user4"]]
    s2.join(5, "lobby", "user5", b"")  # a peer's delta goes in too
    gens = deltas.push(gens, s2.take_delta(), CAPS, s1.delta)
    assert [keys(g) for g in gens] == [["user5"], ["user4", "user5"], ["user3", "user4", "user5"]]
    s2.leave(5, "lobby", "user5")  # its remove
    gens = deltas.push(gens, s2.take_delta(), CAPS, s1.delta)
    assert [keys(g) for g in gens] == [[], ["user4"], ["user3", "user4"]]
    assert dots(gens[0]) == [(S2, 1), (S2, 2)]
    assert dots(gens[2]) == [(S1, 3), (S1, 4), (S2, 1), (S2, 2)]


def test_a_delta_after_a_gap_is_not_absorbed():
    s1, s3 = State(S1), State(S3)
    s1.join(1, "lobby", "user1", b"")
    s3.join(3, "lobby", "a", b"")
    first = s3.take_delta()
    s3.join(4, "lobby", "b", b"")
    s3.take_delta()  # never pushed
    s3.join(5, "lobby", "c", b"")
    third = s3.take_delta()
    gens = deltas.push([], first, (5, 10, 15), s1.delta)
    assert deltas.push(gens, third, (5, 10, 15), s1.delta) == gens
    assert deltas.merge(third, first) is None


def test_permdown_prunes_the_generations():
    s1, s2 = State(S1), State(S2)
    s2.join(2, "lobby", "user2", b"")
    gens = deltas.push([], s2.take_delta(), CAPS, s1.delta)
    deltas.prune(gens, S2)
    fresh = State(("fresh", 1))
    fresh.replica_up(S2)
    assert fresh.merge(gens[0]) == ([], [])
    assert fresh.list("lobby") == []


def test_no_generation_means_the_whole_state():
    assert deltas.for_peer([], {S1: 1}) is None


def test_the_first_generation_that_suits_the_peer_wins():
    s1 = State(S1)
    s1.join(1, "t", "a", b"")
    d1 = s1.take_delta()  # S1 0 -> 1
    s1.join(2, "t", "b", b"")
    d2 = s1.take_delta()  # S1 1 -> 2
    assert deltas.for_peer([d1, d2], {S1: 1}) == d2
    assert deltas.for_peer([d1, d2], {S1: 0}) == d1
    assert deltas.for_peer([d1, d2], {S1: 2}) is None  # knows it all


def test_empty_generations_are_skipped_and_the_result_is_pruned():
    s1, s2 = State(S1), State(S2)
    empty = s1.take_delta()
    s1.join(1, "t", "a", b"")
    s2.join(2, "t", "b", b"")
    both = deltas.merge(s1.take_delta(), s2.take_delta())
    assert both is not None
    chosen = deltas.for_peer([empty, both], {S2: 0})
    assert chosen is not None
    assert keys(chosen) == ["b"] and chosen.start == {S2: 0} and chosen.end == {S2: 1}
    assert set(chosen.clouds) == {S2}


def test_a_generation_never_holds_more_than_its_cap():
    """A burst bigger than every cap is kept by none (a peer that lost it gets the whole
    state); each generation used to keep a copy of it, more memory than the presences."""
    s1 = State(S1)
    s1.join(1, "lobby", "before", b"")
    gens, _ = flush(s1, [])
    for i in range(10):
        s1.join(1, "lobby", f"burst{i}", b"")
    gens, _ = flush(s1, gens)
    assert [g.size() <= cap for g, cap in zip(gens, CAPS, strict=True)] == [True] * 3
    assert [keys(g) for g in gens] == [[], [], []]
    s1.join(1, "lobby", "after", b"")
    gens, _ = flush(s1, gens)
    assert [keys(g) for g in gens] == [["after"]] * 3  # a transfer from here on is a delta
