"""Merging replicas (Phoenix's state_test, multi-replica parts, and its open defects)."""

from __future__ import annotations

from whosthere.tracker.state import Delta, Snapshot, State

A, B, C = ("a", 1), ("b", 1), ("c", 1)


def cluster(*refs):
    """Replicas that know each other (each saw the others' first heartbeat)."""
    states = [State(r) for r in refs]
    for s in states:
        for r in refs:
            s.replica_up(r)
    return states


def keys(s: State, topic: str = "t") -> list[str]:
    return sorted(e.key for e in s.list(topic))


def names(elements) -> list[str]:
    return sorted(e.key for e in elements)


def sync(into: State, source: State) -> tuple[list[str], list[str]]:
    """A full transfer from `source` to `into`: the keys that joined and left there."""
    joins, leaves = into.merge(source.extract(into.replica, into.clocks()))
    return names(joins), names(leaves)


def test_a_snapshot_merge_reports_joins_once():
    a, b = cluster(A, B)
    a.join(1, "t", "alice", b"")
    b.join(2, "t", "bob", b"")
    assert sync(a, b) == (["bob"], [])
    assert keys(a) == ["alice", "bob"]
    assert sync(a, b) == ([], [])  # idempotent
    assert sync(b, a) == (["alice"], [])


def test_removes_and_updates_are_observed():
    a, b = cluster(A, B)
    a.join(1, "t", "alice", b"v1")
    b.join(2, "t", "carol", b"c1")
    sync(b, a)
    sync(a, b)
    a.leave(1, "t", "alice")
    assert sync(b, a) == ([], ["alice"])
    assert sync(b, a) == ([], [])
    b.leave_join(2, "t", "carol", b"c2")
    joins, leaves = a.merge(b.extract(A, a.clocks()))
    assert [(e.key, e.meta) for e in joins] == [("carol", b"c2")]
    assert [(e.key, e.meta) for e in leaves] == [("carol", b"c1")]
    assert keys(a) == keys(b) == ["carol"]


def test_deltas_advance_the_context_without_gaps():
    a, b = cluster(A, B)
    a.join(1, "t", "alice", b"")
    assert names(b.merge(a.take_delta())[0]) == ["alice"]
    a.leave(1, "t", "alice")
    assert names(b.merge(a.take_delta())[1]) == ["alice"]
    a.join(1, "t", "alice", b"")
    b.merge(a.take_delta())
    assert b.context[A] == 3 and not b.clouds


def test_a_lost_delta_leaves_a_gap_that_a_transfer_fills():
    a, b = cluster(A, B)
    a.join(1, "t", "k1", b"")
    a.take_delta()  # lost on the way
    a.join(1, "t", "k2", b"")
    b.merge(a.take_delta())
    assert keys(b) == ["k2"] and b.context[A] == 0 and b.clouds == {A: {2}}
    assert sync(b, a) == (["k1"], [])
    assert b.context[A] == 2 and not b.clouds


class _CountingDict(dict):
    """Counts every walk over it (a merge must not walk the held elements)."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()

    def items(self):
        type(self).walks += 1
        return super().items()

    def values(self):
        type(self).walks += 1
        return super().values()

    def keys(self):
        type(self).walks += 1
        return super().keys()


def test_a_merge_costs_the_delta_not_the_state():
    a, b = cluster(A, B)
    for i in range(2000):
        a.join(1, f"t{i}", "k", b"")
    b.merge(a.take_delta())
    rid = b.replica_ids[A]
    b.remote[rid] = _CountingDict(b.remote[rid])
    b.topics = _CountingDict(b.topics)
    a.join(2, "t", "new", b"")
    a.leave(1, "t7", "k")
    _CountingDict.walks = 0
    joins, leaves = b.merge(a.take_delta())
    assert names(joins) == ["new"] and [e.topic for e in leaves] == ["t7"]
    assert _CountingDict.walks == 0 and len(b) == 2000
    b.merge(a.extract(B, b.clocks()))  # a snapshot must look at everything: it does
    assert _CountingDict.walks > 0


def test_netsplit_hides_then_shows_again():
    a, b = cluster(A, B)
    b.join(2, "t", "bob", b"")
    sync(a, b)
    a.join(1, "t", "carol", b"")
    assert names(a.replica_down(B)) == ["bob"]
    assert keys(a) == ["carol"]
    assert a.clocks() == {A: 1}
    assert sync(a, b) == ([], [])  # still hidden
    assert names(a.replica_up(B)) == ["bob"]
    assert keys(a) == ["bob", "carol"]


def test_joins_and_removes_relayed_through_a_third_replica():
    a, b, c = cluster(A, B, C)
    a.join(1, "t", "alice", b"")
    sync(c, a)
    assert names(c.replica_down(A)) == ["alice"]
    a.join(1, "t", "bob", b"")
    assert sync(b, a) == (["alice", "bob"], [])
    assert sync(c, b) == ([], [])  # C's clock leaves A out while A is down: nothing of A's
    assert names(c.replica_up(A)) == ["alice"]
    assert sync(c, b) == (["bob"], [])
    a.leave(1, "t", "bob")
    assert sync(b, a) == ([], ["bob"])
    assert sync(c, b) == ([], ["bob"])


def test_a_peer_never_removes_this_replicas_elements():
    a, _b = cluster(A, B)
    a.join(1, "t", "mine", b"")
    forged = Delta(B, {B: 0}, {B: 1}, {A: {1}, B: {1}}, {})
    assert a.merge(forged) == ([], [])
    assert keys(a) == ["mine"]


def test_unknown_replicas_are_learnt_from_their_own_heartbeat_only():
    a, b = State(A), State(B)
    b.join(2, "t", "bob", b"")
    assert a.merge(b.take_delta()) == ([], [])
    a.replica_up(B)
    assert sync(a, b) == (["bob"], [])


def test_extraction_is_pruned_to_the_replicas_the_peer_knows():
    _a, b, c = cluster(A, B, C)
    lone = State(("lone", 1))
    lone.replica_up(B)
    b.replica_up(("lone", 1))
    c.join(3, "t", "carol", b"")
    sync(b, c)
    snapshot = b.extract(lone.replica, lone.clocks())
    assert set(snapshot.context) == {B, ("lone", 1)}
    assert snapshot.values == {}


def test_permdown_forgets_the_replica_entirely():
    """phoenix_pubsub#179: no replica bookkeeping survives a permdown."""
    a, _b = cluster(A, B)
    for round_ in range(50):  # B restarts 50 times: a new vsn each time
        peer = State(("b", round_ + 2))
        peer.join(2, "t", "bob", b"")
        a.replica_up(peer.replica)
        peer.replica_up(A)
        sync(a, peer)
        a.replica_down(peer.replica)
        assert a.permdown(peer.replica) == []  # its leave was reported at down
    a.replica_down(B)
    a.permdown(B)
    assert a.context == {A: 0} and a.replica_ids == {A: 0} and a.replica_refs == {0: A}
    assert not a.down and not a.remote and not a.clouds and len(a) == 0
    assert a.replica_up(B) == []  # back with the same vsn after a permdown: a new replica


def test_a_stale_transfer_does_not_resurrect_an_older_meta():
    """phoenix_pubsub#148: C has A's newest alice from a delta, then B's older snapshot."""
    a, b, c = cluster(A, B, C)
    a.join(1, "t", "alice", b"meta0")
    sync(b, a)
    a.take_delta()
    a.leave_join(1, "t", "alice", b"meta1")  # B misses both updates
    a.take_delta()
    a.leave_join(1, "t", "alice", b"meta2")
    c.merge(a.take_delta())  # newest alice (dot 5), gap 1..4
    joins, _ = c.merge(b.extract(C, c.clocks()))  # B still holds alice at dot 1
    assert joins == []
    assert [e.meta for e in c.list("t")] == [b"meta2"]
    sync(c, a)
    assert [e.meta for e in c.list("t")] == [b"meta2"] and not c.clouds


def test_the_same_pid_and_key_from_two_replicas_converges_everywhere():
    """phoenix_pubsub#214. OS pids are per host: the same (topic, pid, key) tracked on two
    nodes is two processes, so both presences stay, on every replica alike."""
    a, b, c = cluster(A, B, C)
    a.join(7, "t", "k", b"from-a")
    b.join(7, "t", "k", b"from-b")
    for x, y in [(c, a), (c, b), (a, b), (b, a)]:
        sync(x, y)
    views = [sorted(e.meta for e in s.list("t")) for s in (a, b, c)]
    assert views == [[b"from-a", b"from-b"]] * 3


def test_a_newer_element_replaces_an_older_one_whose_remove_was_lost():
    a, b = cluster(A, B)
    a.join(1, "t", "alice", b"v1")
    b.merge(a.take_delta())
    a.leave_join(1, "t", "alice", b"v2")
    delta = a.take_delta()
    delta.clouds[A].discard(1)  # the remove marker of v1 went missing
    joins, leaves = b.merge(delta)
    assert [e.meta for e in joins] == [b"v2"] and [e.meta for e in leaves] == [b"v1"]
    assert [e.meta for e in b.list("t")] == [b"v2"]


def test_snapshot_round_trip_of_an_empty_replica():
    a = State(A)
    assert a.extract(A, a.clocks()) == Snapshot(A, {A: 0}, {}, {})


def test_removes_learnt_from_a_peer_are_gossiped_on():
    """Partial partition: A and C cannot talk; B relays C's remove to A in its own delta."""
    a, b, c = cluster(A, B, C)
    c.join(3, "t", "carol", b"")
    delta = c.take_delta()
    a.merge(delta)
    b.merge(delta)
    c.leave(3, "t", "carol")
    b.merge(c.take_delta())  # A never gets this one
    assert keys(b) == [] and keys(a) == ["carol"]
    _, leaves = a.merge(b.take_delta())
    assert names(leaves) == ["carol"] and keys(a) == []


def test_a_merge_in_parts_adds_up_to_the_merge():
    b, c = cluster(B, C)
    for i in range(7):
        b.join(2, "t", f"b{i}", b"")
    early = b.take_delta()  # a has it: the snapshot's removes must reach b3 and b4
    b.leave(2, "t", "b3")
    for i in range(5):
        c.join(3, "t", f"c{i}", b"")
    b.merge(c.take_delta())
    b.leave(2, "t", "b4")
    whole, parts = State(A), State(A)
    for s in (whole, parts):
        for r in (B, C):
            s.replica_up(r)
        s.merge(early)
    snapshot = b.extract(A, whole.clocks())
    joins, leaves = whole.merge(snapshot)
    reported = [(names(j), names(lv)) for j, lv in parts.merge_in_parts(snapshot, 2)]
    assert len(reported) > 3, "merged in several parts"
    assert sorted(k for j, _ in reported for k in j) == names(joins)
    assert sorted(k for _, lv in reported for k in lv) == names(leaves) == ["b3", "b4"]
    assert (
        keys(parts) == keys(whole) == ["b0", "b1", "b2", "b5", "b6", "c0", "c1", "c2", "c3", "c4"]
    )
    assert parts.context == whole.context and parts.clouds == whole.clouds


def test_a_replica_known_only_midway_through_a_merge_in_parts_is_not_counted_as_seen():
    """b's snapshot names c, unknown to a when the merge begins: its elements are skipped
    by the first parts. If c comes up meanwhile, the merge must not take c's context (the
    elements skipped would then count as seen, and never come)."""
    a = State(A)
    b, c = cluster(B, C)
    a.replica_up(B)
    for i in range(6):
        c.join(3, "t", f"c{i}", b"")
    b.merge(c.take_delta())
    snapshot = b.extract(A, {A: 0, B: 0, C: 0})  # as if a had known c when it asked
    parts = a.merge_in_parts(snapshot, 2)
    next(parts)
    a.replica_up(C)  # c's own heartbeat, between two parts
    for _ in parts:
        pass
    a.merge(c.extract(A, a.clocks()))  # c's transfer brings what the merge skipped
    assert keys(a) == [f"c{i}" for i in range(6)]
