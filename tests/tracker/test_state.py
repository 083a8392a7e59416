"""The pure state, without processes (Phoenix's state_test, single-replica parts)."""

from __future__ import annotations

import pytest

from whosthere.errors import AlreadyTracked, NotTracked
from whosthere.tracker.state import State
from whosthere.watch import owner_of

A = ("a", 1)


def metas(elements):
    return [(e.topic, e.pid, e.key, e.meta) for e in elements]


def test_join_then_leave():
    s = State(A)
    e = s.join(10, "lobby", "alice", b"m1")
    assert s.dot_of(e) == (A, 1)
    assert metas(s.list("lobby")) == [("lobby", 10, "alice", b"m1")]
    assert s.leave(10, "lobby", "alice") == e
    assert s.list("lobby") == []
    assert s.topics == {} and s.pids == {} and s.remote == {} and len(s) == 0


def test_duplicate_track_is_refused_but_other_topic_or_key_is_fine():
    s = State(A)
    s.join(10, "t", "k", b"")
    with pytest.raises(AlreadyTracked, match=r"^pid 10 is already tracked on topic 't' as 'k'$"):
        s.join(10, "t", "k", b"x")
    s.join(10, "t2", "k", b"")
    s.join(10, "t", "k2", b"")
    assert len(s) == 3


def test_an_owners_refusals_name_its_serial_and_pid_not_its_packed_id():
    s = State(A)
    owner = owner_of(10, 3)
    s.join(owner, "t", "k", b"")
    with pytest.raises(
        AlreadyTracked, match=r"^owner 3 of pid 10 is already tracked on topic 't' as 'k'$"
    ):
        s.join(owner, "t", "k", b"x")
    with pytest.raises(NotTracked, match=r"^owner 4 of pid 10 is not tracked on topic 't'"):
        s.leave_join(owner_of(10, 4), "t", "k", b"")
    with pytest.raises(NotTracked, match=r"^owner 3 of pid 10 is not tracked on topic 'u'"):
        s.tracked(owner, "u", "k")
    assert s.tracked(owner, "t", "k").pid == owner


def test_leave_of_unknown_is_none():
    s = State(A)
    assert s.leave(1, "t", "k") is None


def test_several_pids_on_one_key_are_several_metas():
    s = State(A)
    s.join(1, "t", "user", b"phone")
    s.join(2, "t", "user", b"laptop")
    s.join(2, "t", "other", b"x")
    assert [e.meta for e in s.get_by_key("t", "user")] == [b"phone", b"laptop"]
    assert s.get_by_key("t", "nobody") == []
    assert s.get_by_key("nowhere", "user") == []


def test_update_replaces_in_place_and_consumes_two_counters():
    s = State(A)
    s.join(1, "t", "k", b"v1")
    s.join(2, "t", "k", b"other")
    old, new = s.leave_join(1, "t", "k", b"v2")
    assert old.meta == b"v1" and new.meta == b"v2"
    assert s.dot_of(new) == (A, 4)
    assert [e.meta for e in s.list("t")] == [b"v2", b"other"]  # in its place
    assert s.get(1, "t", "k") == new
    with pytest.raises(NotTracked, match=r"^pid 9 is not tracked on topic 't' as 'k'$"):
        s.leave_join(9, "t", "k", b"")


def test_the_delta_records_every_consumed_counter():
    s = State(A)
    s.join(1, "t", "k", b"v1")  # 1
    s.leave_join(1, "t", "k", b"v2")  # 2, 3
    s.leave(1, "t", "k")  # 4
    delta = s.take_delta()
    assert (delta.start, delta.end) == ({A: 0}, {A: 4})
    assert delta.clouds == {A: {1, 2, 3, 4}}
    assert delta.values == {}
    assert s.context == {A: 4}
    assert not s.delta and (s.delta.start, s.delta.end) == ({A: 4}, {A: 4})


def test_leave_pid_removes_everything_of_that_pid_only():
    s = State(A)
    for topic in ("t1", "t2", "t3"):
        s.join(1, topic, "k", b"")
    s.join(2, "t1", "k", b"")
    left = s.leave_pid(1)
    assert sorted(e.topic for e in left) == ["t1", "t2", "t3"]
    assert [e.pid for e in s.list("t1")] == [2]
    assert s.leave_pid(1) == []
    assert not s.tracks(1) and s.tracks(2)


def test_reads_hide_elements_of_replicas_flagged_down():
    s = State(A)
    s.join(1, "t", "k", b"")
    s.down.add(A)
    assert s.list("t") == []
    assert s.metas_by_key("t") == {}
    assert s.get_by_key("t", "k") == []
    s.down.clear()
    assert len(s.list("t")) == 1
    assert s.metas_by_key("t") == {"k": [b""]}


def test_without_delta_recording_nothing_accumulates():
    """A replica without peers must not keep every change it ever made."""
    s = State(A, record_delta=False)
    s.join(1, "t", "k", b"v1")
    s.leave_join(1, "t", "k", b"v2")
    s.join(2, "t", "k", b"")
    s.leave_pid(1)
    assert not s.delta and s.delta.values == {}
    assert s.context == {A: 5} and len(s) == 1


def test_a_key_tracked_on_many_topics_is_one_string():
    s = State(A)
    for t in range(3):
        s.join(1, f"t{t}", "".join(["us", "er"]), b"")  # a new str object each time
    assert len({id(e.key) for t in range(3) for e in s.list(f"t{t}")}) == 1
