"""Deltas and snapshots on the wire: they round-trip, and bad ones are refused, never merged."""

from __future__ import annotations

import pytest

from whosthere.errors import MalformedFrame
from whosthere.tracker import wire
from whosthere.tracker.state import State
from whosthere.transport import codec

A, B = ("a", 1), ("b", 2)


def test_deltas_and_snapshots_round_trip_through_msgpack():
    a, b = State(A), State(B)
    a.replica_up(B)
    b.replica_up(A)
    a.join(10, "t", "k", b"\x81\xa1v\x01")
    a.join(11, "u", "k2", b"\x80")
    a.leave(11, "u", "k2")
    delta = a.take_delta()
    raw = codec.unpack(codec.pack_value(wire.encode_delta(delta)))
    assert wire.decode_delta(raw) == delta
    b.merge(delta)
    snapshot = b.extract(A, a.clocks())
    raw = codec.unpack(codec.pack_value(wire.encode_snapshot(snapshot)))
    assert wire.decode_snapshot(raw) == snapshot
    assert wire.decode_clock(wire.encode_clock(a.clocks())) == a.clocks()


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        [["a", 1], [], [], [], "x"],
        [["a", "1"], [], [], [], []],
        [["a", 1], [["a", 1, -1]], [], [], []],
        [["a", 1], [], [], [["a", 1, "x"]], []],
        [["a", 1], [], [], [], [["a", 1, 1, "t", 5, "k"]]],
        [["a", 1], [], [], [], [["a", 1, 1, "t", 5, "k", "not bytes"]]],
        [["a", 1], [], [], [], [["a", 1, 1, "t", 5, "k", b"\x80\x80"]]],  # two maps
        [["a", 1], [], [], [], [["a", 1, 1, "t", 5, "k", b"\x93\x01\x02\x03"]]],  # no map
        [["a", 1], [], [], [], [["a", 1, 1, "t", 5, "k", b"\x81"]]],  # truncated
        [["a", 1], [], [], [], [["a", 1, 2**40, "t", 5, "k", b"\x80"]]],  # counter too big
    ],
)
def test_malformed_deltas_are_refused(raw):
    with pytest.raises(MalformedFrame):
        wire.decode_delta(raw)


@pytest.mark.parametrize(
    "dots",
    [[1.5], [-1], [1 << 40], [1 << 70], b"\x00" * 8, ["x"], [None], "12"],
    ids=["float", "negative", "past-40-bits", "past-64-bits", "bytes", "str-dot", "none", "str"],
)
def test_clouds_with_anything_but_counters_are_refused(dots):
    with pytest.raises(MalformedFrame):
        wire.decode_clouds([["a", 1, dots]])
    with pytest.raises(MalformedFrame):
        wire.decode_clouds([[1, 1, [1]]])  # a replica is named by a str
    assert wire.decode_clouds([["a", 1, [1, 2, 3]]]) == {("a", 1): {1, 2, 3}}
