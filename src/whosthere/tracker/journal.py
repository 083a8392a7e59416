"""A shard's journal, as bytes: what lets a restarted shard be the same replica.

A crashed shard comes back with every presence it acknowledged, under the same vsn and
clock, so peers see nothing. `State` tells its `record` hook every change once it took
effect; `Recorder` keeps them, and the shard writes them out (`frame`) before it answers
the call that made them. On restart, the last `dump` of the state is `load`ed and the
frames written since are `replay`ed, in order, into it: `State` is deterministic, so the
same calls rebuild the same replica, dots, context, clouds and pending delta alike.

Besides the state's own operations the journal holds one of the shard's: `("k", pid,
start)`, the start time an owner was linked with (pid reuse is checked against it).

Frames are `<length u32><crc32 u32><msgpack list of operations>`. A frame cut short by a
crash, or one whose checksum fails, ends the journal there: `FrameReader` says where, and
the caller cuts the file at that point.

Pure: bytes in, bytes out; the files are the shard's (`actors.shard_journal`).
"""

from __future__ import annotations

import gc
import mmap
import struct
import sys
import zlib
from collections.abc import Iterator
from typing import Any

from whosthere.tracker import wire
from whosthere.tracker.state import COUNTER_BITS, Delta, Element, ReplicaRef, State
from whosthere.transport import codec
from whosthere.watch.identity import os_pid

_HEADER = struct.Struct("<II")
_COUNTER = (1 << COUNTER_BITS) - 1
FORMAT = 3  # of `dump`; a dump of another format is not loaded
Starts = dict[int, Any]  # own pid -> the start time it was linked with


class CorruptJournal(Exception):
    """A dump that cannot be loaded (a frame's damage is cut off, not raised)."""


class Recorder:
    """Collects a state's changes until the shard writes them out.

    A merged delta or snapshot is encoded at once: its object may change after the merge
    (delta generations merge in place)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def __call__(self, op: tuple[Any, ...]) -> None:
        if op[0] == "m":
            remote = op[1]
            if isinstance(remote, Delta):
                self.pending.append(("md", wire.encode_delta(remote)))
            else:
                self.pending.append(("ms", wire.encode_snapshot(remote)))
        elif op[0] == "e":  # the end of a snapshot merged in parts
            _, context, clouds, kept = op
            self.pending.append(
                (
                    "e",
                    wire.encode_clock(context),
                    wire.encode_clouds(clouds),
                    wire.encode_clouds(kept),
                )
            )
        else:
            self.pending.append(op)

    def take(self) -> list[Any]:
        pending, self.pending = self.pending, []
        return pending


def frame(ops: list[Any]) -> bytes:
    body = codec.pack_value(ops)
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


class FrameReader:
    """The frames of a journal, one at a time (a long journal is never decoded whole).

    Iterate for each frame's operations; afterwards `good` is the length of the good part
    and `why` says why the journal ended early (None: it did not)."""

    def __init__(self, data: bytes | memoryview | mmap.mmap) -> None:
        self.view = memoryview(data)
        self.good = 0
        self.why: str | None = None

    def __iter__(self) -> Iterator[list[Any]]:
        view, end = self.view, len(self.view)
        at = 0
        while at < end:
            if end - at < _HEADER.size:
                self.why = f"a frame header cut short at byte {at}"
                return
            length, crc = _HEADER.unpack_from(view, at)
            body = view[at + _HEADER.size : at + _HEADER.size + length]
            if len(body) < length:
                self.why = f"a frame cut short at byte {at} ({len(body)} of {length} bytes)"
                return
            if zlib.crc32(body) != crc:
                self.why = f"a frame with a bad checksum at byte {at}"
                return
            try:
                ops = codec.unpack(body)
            except Exception as exc:  # msgpack raises several types on garbage
                self.why = f"a frame that does not decode at byte {at}: {exc}"
                return
            if not isinstance(ops, list):
                self.why = f"a frame that is not a list at byte {at}"
                return
            at += _HEADER.size + length
            yield ops
            self.good = at


def replay(state: State, ops: list[Any], starts: Starts) -> None:
    """Apply journaled operations to `state` (whose `record` hook must be off)."""
    for op in ops:
        kind = op[0]
        if kind == "j":
            state.join_unchecked(op[1], op[2], op[3], op[4], intern_key=False)
        elif kind == "k":
            starts[op[1]] = op[2]
        elif kind == "l":
            state.leave(op[1], op[2], op[3])
        elif kind == "u":
            state.leave_join(op[1], op[2], op[3], op[4])
        elif kind == "p":
            state.leave_pid(op[1])
        elif kind == "t":
            state.take_delta()
        elif kind == "md":
            state.merge(wire.decode_delta(op[1]))
        elif kind == "ms":
            state.merge(wire.decode_snapshot(op[1]))
        elif kind == "e":
            dots = wire.decode_clouds(op[3])
            state.merge_seen(wire.decode_clock(op[1]), wire.decode_clouds(op[2]), dots)
        elif kind == "U":
            state.replica_up(_ref(op[1]))
        elif kind == "D":
            state.replica_down(_ref(op[1]))
        elif kind == "P":
            state.permdown(_ref(op[1]))
        else:
            raise ValueError(f"unknown journal operation {kind!r}")


def own_starts(state: State, starts: Starts) -> Starts:
    """The link start times of the OS processes whose owners still hold presences."""
    return {os_pid(owner): starts.get(os_pid(owner)) for owner in state.pids}


def dump(state: State, starts: Starts) -> bytes:
    """The whole state (and the owners' start times), for `load`."""
    refs = state.replica_refs
    replicas = [
        [rid, list(ref), state.context[ref], sorted(state.clouds.get(ref, ()))]
        for rid, ref in refs.items()
    ]
    # Grouped as the state indexes them, each distinct key written once in a table:
    # [[topic, [[key index, [[pid, meta, dot], ...]], ...]], ...], every replica's elements.
    # `load` then reads each string once and hashes nothing per element (interning a
    # million distinct keys would cost a recovery more than a second).
    key_ids: dict[str, int] = {}
    groups = [
        [
            topic,
            [
                [key_ids.setdefault(key, len(key_ids)), [[e.pid, e.meta, e.dot] for e in same]]
                for key, same in keys.items()
            ],
        ]
        for topic, keys in state.topics.items()
    ]
    body = [
        FORMAT,
        list(state.replica),
        state.counter,
        state._next_id,
        replicas,
        list(key_ids),
        groups,
        [list(r) for r in state.down],
        wire.encode_delta(state.delta) if state.record_delta else None,
        [[pid, start] for pid, start in own_starts(state, starts).items()],
    ]
    return codec.pack_value(body)


def load(data: bytes, *, record_delta: bool) -> tuple[State, Starts]:
    """The state `dump` wrote; `CorruptJournal` if it cannot be read."""
    collecting = gc.isenabled()
    gc.disable()  # a heap growing by a million acyclic objects: the collector would rescan it
    try:
        return _load(data, record_delta)
    finally:
        if collecting:
            gc.enable()


def _load(data: bytes, record_delta: bool) -> tuple[State, Starts]:
    try:
        body = codec.unpack(data)
        fmt, me, counter, next_id, replicas, key_table, groups, down, delta, starts = body
    except Exception as exc:
        raise CorruptJournal(f"a state dump that does not decode: {exc}") from exc
    if fmt != FORMAT:
        raise CorruptJournal(f"a state dump of format {fmt!r}, not {FORMAT}")
    state = State(_ref(me), record_delta=record_delta)
    state.counter = counter
    state._next_id = next_id
    state.context.clear()
    state.replica_ids.clear()
    state.replica_refs.clear()
    for rid, ref, seen, cloud in replicas:
        r = _ref(ref)
        state.replica_ids[r] = rid
        state.replica_refs[rid] = r
        state.context[r] = seen
        if cloud:
            state.clouds[r] = set(cloud)
    topics, pids, held = state.topics, state.pids, state.remote
    make, size = tuple.__new__, 0
    for name, keyed in groups:  # the hot loop of a recovery
        topic = sys.intern(name)
        keys = topics[topic] = {}
        for key_id, entries in keyed:
            key = key_table[key_id]  # one object per distinct key, as interning gives
            same = keys[key] = []
            for pid, meta, dot in entries:
                element = make(Element, (topic, pid, key, meta, dot))
                same.append(element)
                if dot <= _COUNTER:  # this replica's own
                    index = pids.get(pid)
                    if index is None:
                        index = pids[pid] = {}
                    index[dot] = element
                else:
                    index = held.get(dot >> COUNTER_BITS)
                    if index is None:
                        index = held[dot >> COUNTER_BITS] = {}
                    index[dot & _COUNTER] = element
            size += len(same)
    state._size = size
    state.down = {_ref(r) for r in down}
    if record_delta:
        state.delta = wire.decode_delta(delta) if delta is not None else state._fresh_delta()
    return state, {pid: start for pid, start in starts}


def _ref(raw: Any) -> ReplicaRef:
    return (raw[0], raw[1])
