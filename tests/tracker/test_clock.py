"""Clock comparisons (Phoenix's clock_test, re-expressed)."""

from __future__ import annotations

from whosthere.tracker.clock import (
    append_clock,
    dominates,
    lowerbound,
    replicas_of,
    upperbound,
)

X = {"a": 1, "b": 2, "c": 3}
Y = {"b": 2, "c": 3, "d": 1}
Z = {"a": 1, "b": 2}


def test_dominance():
    assert dominates(X, Z) and not dominates(Z, X)
    assert not dominates(X, Y)
    assert dominates(X, X)


def test_a_clockset_keeps_only_what_adds_knowledge():
    assert append_clock([("y", Y), ("z", Z)], "x", X) == [("y", Y), ("z", Z)]
    assert append_clock([("x", X), ("y", Y)], "z", Z) == [("x", X), ("y", Y)]
    assert append_clock([("x", X), ("y", Y)], "x", X) == [("x", X), ("y", Y)]
    assert append_clock([("x", X), ("y", Y)], "y", Y) == [("x", X), ("y", Y)]
    assert sorted(replicas_of(append_clock([("x", X), ("z", Z)], "y", Y))) == ["x", "y", "z"]
    assert sorted(replicas_of(append_clock([("y", Y), ("z", Z)], "x", X))) == ["y", "z"]
    assert append_clock([("x", X)], "e", {}) == [("x", X)]
    assert append_clock([("z", Z)], "x", X) == [("x", X)]  # dominates the union: alone


def test_bounds():
    c1, c2 = {"a": 1, "b": 2, "c": 2}, {"a": 3, "b": 1, "d": 2}
    assert upperbound([c1, c2]) == {"a": 3, "b": 2, "c": 2, "d": 2}
    assert lowerbound(c1, c2) == {"a": 1, "b": 1, "c": 2, "d": 2}
    assert upperbound([{}, c1]) == c1 and lowerbound({}, c1) == c1
