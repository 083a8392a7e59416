"""Deltas, snapshots and clocks as msgpack-friendly lists (maps with tuple keys are not).

The one place where the replication state meets the wire; `decode_*` raise `MalformedFrame`
on anything that is not what `encode_*` makes, so a bad peer frame is dropped, never merged.
"""

from __future__ import annotations

from array import array
from typing import Any

from whosthere.errors import MalformedFrame
from whosthere.tracker.state import COUNTER_BITS, Delta, Dot, ReplicaRef, Snapshot, Value
from whosthere.transport import codec


def encode_replica(ref: ReplicaRef) -> list[Any]:
    return [ref[0], ref[1]]


def decode_replica(raw: Any) -> ReplicaRef:
    if not (
        isinstance(raw, list)
        and len(raw) == 2
        and isinstance(raw[0], str)
        and isinstance(raw[1], int)
    ):
        raise MalformedFrame(f"a replica is [name, vsn], got {raw!r:.80}")
    return (raw[0], raw[1])


def encode_clock(clock: dict[ReplicaRef, int]) -> list[Any]:
    return [[r[0], r[1], n] for r, n in clock.items()]


def decode_clock(raw: Any) -> dict[ReplicaRef, int]:
    try:
        return {(name, vsn): n for name, vsn, n in raw if _ints(vsn, n) and isinstance(name, str)}
    except (TypeError, ValueError):
        raise MalformedFrame("a clock is [[name, vsn, counter], ...]") from None


def _ints(*values: Any) -> bool:
    if all(isinstance(v, int) and 0 <= v < _LIMIT for v in values):
        return True
    raise ValueError


_LIMIT = 1 << 62  # vsns are microseconds; counters are checked against COUNTER_BITS too
_COUNTER_LIMIT = 1 << COUNTER_BITS


def encode_clouds(clouds: dict[ReplicaRef, set[int]]) -> list[Any]:
    return [[r[0], r[1], sorted(c)] for r, c in clouds.items() if c]


def decode_clouds(raw: Any) -> dict[ReplicaRef, set[int]]:
    try:
        out = {}
        for name, vsn, dots in raw:
            if not (
                type(name) is str and type(vsn) is int and 0 <= vsn < _LIMIT and type(dots) is list
            ):
                raise ValueError
            counters = array("q", dots)  # ints only, checked in C (a burst has thousands)
            if counters and (min(counters) < 0 or max(counters) >= _COUNTER_LIMIT):
                raise ValueError
            out[(name, vsn)] = set(counters)
        return out
    except (TypeError, ValueError, OverflowError):
        raise MalformedFrame("clouds are [[name, vsn, [counter, ...]], ...]") from None


def _encode_values(values: dict[Dot, Value]) -> list[Any]:
    return [[r[0], r[1], c, *value] for (r, c), value in values.items()]


def _decode_values(raw: Any) -> dict[Dot, Value]:
    """The hottest decode of a burst (a value per presence): checks inlined."""
    is_meta = codec.is_packed_map
    try:
        out = {}
        for name, vsn, counter, topic, pid, key, meta in raw:
            if not (
                type(vsn) is int
                and type(counter) is int
                and type(pid) is int
                and 0 <= vsn < _LIMIT
                and 0 <= counter < _COUNTER_LIMIT
                and 0 <= pid < _LIMIT
                and type(name) is str
                and type(topic) is str
                and type(key) is str
                and type(meta) is bytes
            ):
                raise ValueError
            if not is_meta(meta):  # a stored meta is a map, wherever it came from
                raise ValueError
            out[((name, vsn), counter)] = (topic, pid, key, meta)
        return out
    except (TypeError, ValueError):
        raise MalformedFrame(
            "values are [[name, vsn, counter, topic, pid, key, meta], ...]"
        ) from None


def encode_delta(delta: Delta) -> list[Any]:
    return [
        encode_replica(delta.replica),
        encode_clock(delta.start),
        encode_clock(delta.end),
        encode_clouds(delta.clouds),
        _encode_values(delta.values),
    ]


def decode_delta(raw: Any) -> Delta:
    if not (isinstance(raw, list) and len(raw) == 5):
        raise MalformedFrame("a delta is [replica, start, end, clouds, values]")
    return Delta(
        decode_replica(raw[0]),
        decode_clock(raw[1]),
        decode_clock(raw[2]),
        decode_clouds(raw[3]),
        _decode_values(raw[4]),
    )


def encode_snapshot(snapshot: Snapshot) -> list[Any]:
    return [
        encode_replica(snapshot.replica),
        encode_clock(snapshot.context),
        encode_clouds(snapshot.clouds),
        _encode_values(snapshot.values),
    ]


def decode_snapshot(raw: Any) -> Snapshot:
    if not (isinstance(raw, list) and len(raw) == 4):
        raise MalformedFrame("a snapshot is [replica, context, clouds, values]")
    return Snapshot(
        decode_replica(raw[0]), decode_clock(raw[1]), decode_clouds(raw[2]), _decode_values(raw[3])
    )
