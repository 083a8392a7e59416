"""The tracker's replicated state: Phoenix.Tracker's dot-cloud CRDT, as plain Python objects.

A presence is an element (topic, pid, key, meta) added by one replica; its causal identity is
its *dot* (replica name, vsn, counter). Only the replica that added an element ever removes it
(a leave), so the set is an observed-remove set without tombstones: a replica that has *seen*
a dot (its context covers it) but no longer holds its element knows it was removed.

- `context`: per replica, the highest contiguous counter seen; `clouds`: dots seen beyond it
  (gaps a transfer must fill).
- `delta`: this replica's changes since the last flush (joins as values, and every counter it
  consumed in `dots`, removes included), shipped to peers on the next heartbeat. A replica
  without peers records none (`record_delta=False`): nothing would ever take it.
- `down`: the local opinion of which replicas are down; reads hide their elements.

Compact by measurement (bytes per presence is a figure users compare): an element's dot is one
int, `replica id << 40 | counter`, where this replica is id 0, so its own dots are its
counters; topics and keys are interned (one key tracked on 100 topics is one string);
`topics` maps topic -> key -> list of elements (a key rarely has more than a few); this
replica's elements are also indexed by pid (`pids`: pid -> {dot: element}), which serves
untrack, the exit of a pid and the duplicate check; other replicas' elements are indexed by
replica (`remote`), for their down / permdown and their removes.

Metas are kept as msgpack bytes: the node never looks inside one except to add `phx_ref`, and
bytes are compact and go back on the wire as they are.

No sockets, no clock, no logging here: the shard actor turns messages into these calls.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import NamedTuple

from whosthere.errors import AlreadyTracked, NotTracked

ReplicaRef = tuple[str, int]  # (node name, vsn): a restarted shard is a new replica
Dot = tuple[str, int, int]  # (node name, vsn, counter), as the protocol names it
Topic = str
Key = str
Pid = int

COUNTER_BITS = 40  # counters of one replica incarnation stay below 2**40
_OWN_MAX = 1 << COUNTER_BITS  # dots below this are this replica's own


class Element(NamedTuple):
    """One presence."""

    topic: Topic
    pid: Pid
    key: Key
    meta: bytes  # msgpack map, phx_ref included
    dot: int  # replica id << COUNTER_BITS | counter (see `State.dot_of`)


@dataclass
class Delta:
    """This replica's changes since the last flush."""

    start: int  # own counter when the delta began
    end: int  # own counter now
    values: dict[int, Element] = field(default_factory=dict)  # joins not removed since
    dots: set[int] = field(default_factory=set)  # own counters consumed (joins and removes)

    def __bool__(self) -> bool:
        return bool(self.dots)


class State:
    """One replica's view of the presences of one shard."""

    def __init__(self, replica: ReplicaRef, *, record_delta: bool = True) -> None:
        self.replica = replica
        self.name, self.vsn = replica
        self.counter = 0  # own dots issued so far
        self.context: dict[ReplicaRef, int] = {replica: 0}
        self.clouds: dict[ReplicaRef, set[int]] = {}
        self.replica_ids: dict[ReplicaRef, int] = {replica: 0}
        self.replica_refs: list[ReplicaRef] = [replica]
        self.topics: dict[Topic, dict[Key, list[Element]]] = {}
        self.pids: dict[Pid, dict[int, Element]] = {}  # own elements by pid, then dot
        self.remote: dict[int, dict[int, Element]] = {}  # replica id -> dot -> element
        self.down: set[ReplicaRef] = set()  # replicas flagged down (hidden from reads)
        self.record_delta = record_delta
        self.delta = Delta(0, 0)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def dot_of(self, element: Element) -> Dot:
        """The element's dot as the protocol names it: (node name, vsn, counter)."""
        name, vsn = self.replica_refs[element.dot >> COUNTER_BITS]
        return (name, vsn, element.dot & (_OWN_MAX - 1))

    # -- local operations (this replica's own elements) -----------------------------------

    def join(self, pid: Pid, topic: Topic, key: Key, meta: bytes) -> Element:
        """Add an element; `AlreadyTracked` if (topic, pid, key) is tracked here."""
        if self.get(pid, topic, key) is not None:
            raise AlreadyTracked(f"pid {pid} is already tracked on topic {topic!r} as {key!r}")
        element = Element(sys.intern(topic), pid, sys.intern(key), meta, self._bump())
        keys = self.topics.get(topic)
        if keys is None:
            keys = self.topics[element.topic] = {}
        same = keys.get(key)
        if same is None:
            keys[element.key] = [element]
        else:
            same.append(element)
        mine = self.pids.get(pid)
        if mine is None:
            self.pids[pid] = {element.dot: element}
        else:
            mine[element.dot] = element
        self._size += 1
        if self.record_delta:
            self.delta.values[element.dot] = element
        return element

    def leave(self, pid: Pid, topic: Topic, key: Key) -> Element | None:
        """Remove an element; None if it is not tracked."""
        element = self.get(pid, topic, key)
        if element is None:
            return None
        self._remove_own(element)
        self._bump()
        return element

    def leave_join(self, pid: Pid, topic: Topic, key: Key, meta: bytes) -> tuple[Element, Element]:
        """Replace an element's meta (an update): (old, new). `NotTracked` if absent.

        The new element takes the old one's place in the indexes, so a reader never sees
        the key missing (phoenix_pubsub#172). Consumes two counters, as upstream.
        """
        old = self.get(pid, topic, key)
        if old is None:
            raise NotTracked(f"pid {pid} is not tracked on topic {topic!r} as {key!r}")
        self._forget_in_delta(old.dot)
        self._bump()
        new = old._replace(meta=meta, dot=self._bump())
        same = self.topics[topic][key]
        same[same.index(old)] = new
        mine = self.pids[pid]
        del mine[old.dot]
        mine[new.dot] = new
        if self.record_delta:
            self.delta.values[new.dot] = new
        return old, new

    def leave_pid(self, pid: Pid) -> list[Element]:
        """Remove every element of `pid` (it exited, or `untrack(pid)`)."""
        mine = self.pids.get(pid)
        if not mine:
            return []
        left = list(mine.values())
        for element in left:
            self._remove_own(element)
            self._bump()
        return left

    # -- reads -----------------------------------------------------------------------------

    def get(self, pid: Pid, topic: Topic, key: Key) -> Element | None:
        """This replica's own element for (topic, pid, key)."""
        if pid not in self.pids:
            return None
        same = self.topics.get(topic, _EMPTY).get(key)
        if same is not None:
            for e in same:
                if e.pid == pid and e.dot < _OWN_MAX:
                    return e
        return None

    def list(self, topic: Topic) -> list[Element]:
        """Every element of `topic` whose replica is not flagged down."""
        keys = self.topics.get(topic)
        if not keys:
            return []
        if not self.down:
            return [e for same in keys.values() for e in same]
        hidden = self._hidden()
        return [e for same in keys.values() for e in same if e.dot >> COUNTER_BITS not in hidden]

    def metas_by_key(self, topic: Topic) -> dict[Key, list[bytes]]:
        """`list` grouped by key, metas only: what a packed list reply is made of."""
        keys = self.topics.get(topic)
        if not keys:
            return {}
        if not self.down:
            return {key: [e.meta for e in same] for key, same in keys.items()}
        hidden = self._hidden()
        out = {}
        for key, same in keys.items():
            metas = [e.meta for e in same if e.dot >> COUNTER_BITS not in hidden]
            if metas:
                out[key] = metas
        return out

    def get_by_key(self, topic: Topic, key: Key) -> list[Element]:
        """The elements of one key of `topic` (several pids: several metas)."""
        same = self.topics.get(topic, _EMPTY).get(key)
        if not same:
            return []
        if not self.down:
            return list(same)
        hidden = self._hidden()
        return [e for e in same if e.dot >> COUNTER_BITS not in hidden]

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

    def _hidden(self) -> set[int]:
        return {self.replica_ids[r] for r in self.down if r in self.replica_ids}

    def _bump(self) -> int:
        self.counter += 1
        if self.counter >= _OWN_MAX:
            raise OverflowError("a replica incarnation ran out of counters")
        self.context[self.replica] = self.counter
        if self.record_delta:
            self.delta.dots.add(self.counter)
            self.delta.end = self.counter
        return self.counter

    def _forget_in_delta(self, dot: int) -> None:
        """In the delta, the dot stays seen but its value goes: the remove marker."""
        if self.record_delta:
            self.delta.values.pop(dot, None)
            self.delta.dots.add(dot)

    def _remove_own(self, element: Element) -> None:
        keys = self.topics[element.topic]
        same = keys[element.key]
        if len(same) == 1:
            del keys[element.key]
            if not keys:
                del self.topics[element.topic]
        else:
            same.remove(element)
        mine = self.pids[element.pid]
        del mine[element.dot]
        if not mine:
            del self.pids[element.pid]
        self._size -= 1
        self._forget_in_delta(element.dot)


_EMPTY: dict = {}
