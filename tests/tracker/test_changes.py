"""A message's changes, gathered into one diff per topic (and split where they must be)."""

from __future__ import annotations

from whosthere.tracker.changes import Gathering, by_topic, group
from whosthere.tracker.state import Element


def el(topic: str, key: str, dot: int, meta: bytes = b"m") -> Element:
    return Element(topic, 1, key, meta, dot)


def test_by_topic_and_group():
    a, b, c = el("t1", "k", 1), el("t2", "k", 2), el("t1", "j", 3)
    assert by_topic([a, b], [c]) == {"t1": ([a], [c]), "t2": ([b], [])}
    assert group([a, c, el("t1", "k", 4, b"n")]) == {"k": [b"m", b"n"], "j": [b"m"]}


def test_a_messages_changes_make_one_diff_per_topic_in_order():
    g = Gathering()
    j1, j2, l1 = el("t", "a", 1), el("t", "b", 2), el("t", "c", 3)
    assert g.add({"t": ([j1], [])}) == {}
    assert g.add({"t": ([j2], [l1]), "u": ([el("u", "x", 4)], [])}) == {}
    taken = g.take()
    assert taken["t"] == ([j1, j2], [l1])
    assert list(taken) == ["t", "u"]
    assert g.take() == {}  # a fresh start


def test_an_update_gathers_its_join_and_its_leave():
    g = Gathering()
    old, new = el("t", "a", 1), el("t", "a", 2)
    assert g.add({"t": ([new], [old])}) == {}
    assert g.take() == {"t": ([new], [old])}


def test_a_presence_back_after_leaving_splits_the_diff():
    """A peer's presence leaves (the peer went down) and joins again (it is up) in one
    message: joins apply before leaves in a diff, so its leave must go out first."""
    g = Gathering()
    p = el("t", "a", 7)
    other = el("t", "b", 8)
    assert g.add({"t": ([other], [p])}) == {}
    now = g.add({"t": ([p], [])})
    assert now == {"t": ([other], [p])}  # what came before, reported at once
    assert g.take() == {"t": ([p], [])}  # the rejoin starts the next diff


def test_leaves_gathered_after_the_dots_were_read_still_split():
    g = Gathering()
    p, q = el("t", "a", 7), el("t", "b", 9)
    g.add({"t": ([], [p])})
    assert g.add({"t": ([el("t", "c", 10)], [])}) == {}  # reads the leaves' dots: {7}
    g.add({"t": ([], [q])})  # a later leave joins that set
    assert g.add({"t": ([q], [])}) == {"t": ([el("t", "c", 10)], [p, q])}
    assert g.take() == {"t": ([q], [])}


def test_other_topics_are_not_split():
    g = Gathering()
    p = el("t", "a", 7)
    g.add({"t": ([], [p])})
    assert g.add({"u": ([el("u", "a", 7)], [])}) == {}
    assert set(g.take()) == {"t", "u"}
