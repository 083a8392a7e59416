"""The tracker's replicated state: Phoenix.Tracker's dot-cloud CRDT, as plain Python objects.

A presence is an element (topic, pid, key, meta) added by one replica; its causal identity is
its *dot* (replica name, vsn, counter). Only the replica that added an element ever removes it
(a leave), so the set is an observed-remove set without tombstones: a replica that has *seen*
a dot (its context covers it) but no longer holds its element knows it was removed.

- `context`: per replica, the highest contiguous counter seen; `clouds`: dots seen beyond it
  (gaps a transfer must fill).
- `delta`: this replica's changes since the last flush (joins as values, and every dot it
  consumed in `delta_dots`, removes included), shipped to peers on the next heartbeat.
- `replicas`: the local opinion of which replicas are up; reads hide elements of down ones.

Indexes make every operation cost what it touches: `elements` by dot; `topics` as
topic -> key -> dots for `list` / `get_by_key`; `local` and `pids` for this replica's own
elements (track, untrack, the exit of a pid); `by_replica` for replica down/permdown.

Metas are kept as msgpack bytes (`meta` below): the node never looks inside one except to add
`phx_ref`, and bytes are compact and go back on the wire as they are.

No sockets, no clock, no logging here: the shard actor turns messages into these calls.
Merging remote deltas and transfers (the cluster) builds on the same structures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from whosthere.errors import AlreadyTracked, NotTracked

ReplicaRef = tuple[str, int]  # (node name, vsn): a restarted shard is a new replica
Dot = tuple[str, int, int]  # (node name, vsn, counter)
Topic = str
Key = str
Pid = int


class Element(NamedTuple):
    """One presence."""

    topic: Topic
    pid: Pid
    key: Key
    meta: bytes  # msgpack map, phx_ref included
    dot: Dot


@dataclass
class Delta:
    """This replica's changes since the last flush."""

    start: int  # own counter when the delta began
    end: int  # own counter now
    values: dict[Dot, Element] = field(default_factory=dict)  # joins not removed since
    dots: set[int] = field(default_factory=set)  # own counters consumed (joins and removes)

    def __bool__(self) -> bool:
        return bool(self.dots)


class State:
    """One replica's view of the presences of one shard."""

    def __init__(self, replica: ReplicaRef) -> None:
        self.replica = replica
        self.name, self.vsn = replica
        self.counter = 0  # own dots issued so far
        self.context: dict[ReplicaRef, int] = {replica: 0}
        self.clouds: dict[ReplicaRef, set[int]] = {}
        self.elements: dict[Dot, Element] = {}
        self.topics: dict[Topic, dict[Key, dict[Dot, None]]] = {}
        self.by_replica: dict[ReplicaRef, set[Dot]] = {}
        self.local: dict[tuple[Topic, Pid, Key], Dot] = {}  # own elements
        self.pids: dict[Pid, dict[tuple[Topic, Key], None]] = {}  # own pid -> its (topic, key)
        self.down: set[ReplicaRef] = set()  # replicas flagged down (hidden from reads)
        self.delta = Delta(0, 0)

    def __len__(self) -> int:
        return len(self.elements)

    # -- local operations (this replica's own elements) -----------------------------------

    def join(self, pid: Pid, topic: Topic, key: Key, meta: bytes) -> Element:
        """Add an element; `AlreadyTracked` if (topic, pid, key) is tracked here."""
        if (topic, pid, key) in self.local:
            raise AlreadyTracked(f"pid {pid} is already tracked on topic {topic!r} as {key!r}")
        element = Element(topic, pid, key, meta, self._bump())
        self._insert(element)
        self.delta.values[element.dot] = element
        return element

    def leave(self, pid: Pid, topic: Topic, key: Key) -> Element | None:
        """Remove an element; None if it is not tracked."""
        dot = self.local.get((topic, pid, key))
        if dot is None:
            return None
        element = self.elements[dot]
        self._remove(element)
        self._forget_in_delta(dot)
        self._bump()
        return element

    def leave_join(self, pid: Pid, topic: Topic, key: Key, meta: bytes) -> tuple[Element, Element]:
        """Replace an element's meta (an update): (old, new). `NotTracked` if absent.

        The new element takes the old one's place in the indexes, so a reader never sees
        the key missing (phoenix_pubsub#172). Consumes two counters, as upstream.
        """
        dot = self.local.get((topic, pid, key))
        if dot is None:
            raise NotTracked(f"pid {pid} is not tracked on topic {topic!r} as {key!r}")
        old = self.elements.pop(dot)
        self._forget_in_delta(dot)
        self._bump()
        new = Element(topic, pid, key, meta, self._bump())
        self.elements[new.dot] = new
        dots = self.topics[topic][key]
        del dots[dot]
        dots[new.dot] = None
        mine = self.by_replica[self.replica]
        mine.discard(dot)
        mine.add(new.dot)
        self.local[(topic, pid, key)] = new.dot
        self.delta.values[new.dot] = new
        return old, new

    def leave_pid(self, pid: Pid) -> list[Element]:
        """Remove every element of `pid` (it exited, or `untrack(pid)`)."""
        entries = self.pids.get(pid)
        if not entries:
            return []
        left = []
        for topic, key in list(entries):
            element = self.leave(pid, topic, key)
            if element is not None:
                left.append(element)
        return left

    # -- reads -----------------------------------------------------------------------------

    def get(self, pid: Pid, topic: Topic, key: Key) -> Element | None:
        """This replica's own element for (topic, pid, key)."""
        dot = self.local.get((topic, pid, key))
        return None if dot is None else self.elements[dot]

    def list(self, topic: Topic) -> list[Element]:
        """Every element of `topic` whose replica is not flagged down."""
        keys = self.topics.get(topic)
        if not keys:
            return []
        elements = self.elements
        if not self.down:
            return [elements[dot] for dots in keys.values() for dot in dots]
        return [
            e
            for dots in keys.values()
            for dot in dots
            if (e := elements[dot]) and (dot[0], dot[1]) not in self.down
        ]

    def get_by_key(self, topic: Topic, key: Key) -> list[Element]:
        """The elements of one key of `topic` (several pids: several metas)."""
        dots = self.topics.get(topic, {}).get(key)
        if not dots:
            return []
        return [self.elements[d] for d in dots if (d[0], d[1]) not in self.down]

    def pid_count(self) -> int:
        """How many distinct local pids own elements (each is linked)."""
        return len(self.pids)

    def tracks(self, pid: Pid) -> bool:
        return pid in self.pids

    # -- delta -----------------------------------------------------------------------------

    def take_delta(self) -> Delta:
        """The pending delta, replaced by an empty one (after a flush)."""
        delta = self.delta
        self.delta = Delta(self.counter, self.counter)
        return delta

    # -- internals -------------------------------------------------------------------------

    def _bump(self) -> Dot:
        self.counter += 1
        self.context[self.replica] = self.counter
        self.delta.dots.add(self.counter)
        self.delta.end = self.counter
        return (self.name, self.vsn, self.counter)

    def _forget_in_delta(self, dot: Dot) -> None:
        """In the delta, the dot stays seen but its value goes: the remove marker."""
        self.delta.values.pop(dot, None)
        self.delta.dots.add(dot[2])

    def _insert(self, element: Element) -> None:
        dot = element.dot
        self.elements[dot] = element
        self.topics.setdefault(element.topic, {}).setdefault(element.key, {})[dot] = None
        self.by_replica.setdefault((dot[0], dot[1]), set()).add(dot)
        if (dot[0], dot[1]) == self.replica:
            self.local[(element.topic, element.pid, element.key)] = dot
            self.pids.setdefault(element.pid, {})[(element.topic, element.key)] = None

    def _remove(self, element: Element) -> None:
        dot = element.dot
        del self.elements[dot]
        keys = self.topics[element.topic]
        dots = keys[element.key]
        del dots[dot]
        if not dots:
            del keys[element.key]
            if not keys:
                del self.topics[element.topic]
        replica = (dot[0], dot[1])
        mine = self.by_replica[replica]
        mine.discard(dot)
        if not mine:
            del self.by_replica[replica]
        if replica == self.replica:
            del self.local[(element.topic, element.pid, element.key)]
            entries = self.pids[element.pid]
            del entries[(element.topic, element.key)]
            if not entries:
                del self.pids[element.pid]
