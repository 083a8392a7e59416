"""The tracker's replicated state: Phoenix.Tracker's dot-cloud CRDT, as plain Python objects.

A presence is an element (topic, pid, key, meta) added by one replica, (node name, vsn); its
causal identity is its *dot* (replica, counter). Only the replica that added an element ever
removes it (a leave), so the set is an observed-remove set without tombstones: a replica that
has *seen* a dot (its context covers it) but no longer holds its element knows it was removed.

- `context`: per replica, the highest contiguous counter seen; `clouds`: dots seen beyond it
  (gaps a transfer must fill).
- `delta`: this replica's changes since the last flush (joins as values, every dot consumed in
  `clouds`, removes included, and the removes it learnt from peers, which it re-gossips),
  shipped to peers on the next heartbeat. A replica without peers records none
  (`record_delta=False`): nothing would ever take it.
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

Merging (`merge`) follows Phoenix's algorithm, minus its known defects: a delta costs what it
carries, not a scan of the state; a stale copy of an element never replaces a newer one of the
same replica (phoenix_pubsub#148); a permdowned replica leaves no trace (#179). Two replicas
holding the same (topic, pid, key) keep both elements everywhere: OS pids are per host, so
these are two processes, and every replica converges to the same two (#214).

No sockets, no clock, no logging here: the shard actor turns messages into these calls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from whosthere.errors import AlreadyTracked, NotTracked
from whosthere.watch.identity import describe_owner

ReplicaRef = tuple[str, int]  # (node name, vsn): a restarted shard is a new replica
Dot = tuple[ReplicaRef, int]  # (replica, counter): an element's causal identity on the wire
Value = tuple[str, int, str, bytes]  # (topic, pid, key, meta), as shipped between replicas
Topic = str
Key = str
Pid = int

COUNTER_BITS = 40  # counters of one replica incarnation stay below 2**40
_OWN_MAX = 1 << COUNTER_BITS  # dots below this are this replica's own
_COUNTER = _OWN_MAX - 1  # mask


class Element(NamedTuple):
    """One presence."""

    topic: Topic
    pid: Pid
    key: Key
    meta: bytes  # msgpack map, phx_ref included
    dot: int  # replica id << COUNTER_BITS | counter (see `State.dot_of`)


Elements = list[Element]  # (a name: `State.list` hides the builtin inside the class)
JoinsLeaves = tuple[Elements, Elements]  # what a change or a merge made: (joins, leaves)
PackedMetas = list[bytes]


@dataclass
class Delta:
    """A contiguous stretch of history: what a heartbeat carries, what generations keep.

    `clouds` holds every dot the stretch consumed, joins and removes alike; a dot in `clouds`
    without a value in `values` is a remove marker. `start` / `end` are the clocks the
    stretch runs between (two deltas merge only if they touch: `deltas.merge`).
    """

    replica: ReplicaRef  # whose delta
    start: dict[ReplicaRef, int]
    end: dict[ReplicaRef, int]
    clouds: dict[ReplicaRef, set[int]] = field(default_factory=dict)
    values: dict[Dot, Value] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.clouds.values())

    def size(self) -> int:
        """Values plus dots, as Phoenix counts them against `max_delta_sizes`."""
        return len(self.values) + sum(len(c) for c in self.clouds.values())


@dataclass
class Snapshot:
    """A replica's whole state as extracted for one peer (pruned to what that peer knows)."""

    replica: ReplicaRef
    context: dict[ReplicaRef, int]
    clouds: dict[ReplicaRef, set[int]]
    values: dict[Dot, Value]


def prune_delta(delta: Delta, replica: ReplicaRef) -> None:
    """Drop every trace of `replica` from `delta` (it was permdowned)."""
    delta.start.pop(replica, None)
    delta.end.pop(replica, None)
    delta.clouds.pop(replica, None)
    for dot in [d for d in delta.values if d[0] == replica]:
        del delta.values[dot]


class State:
    """One replica's view of the presences of one shard."""

    def __init__(self, replica: ReplicaRef, *, record_delta: bool = True) -> None:
        self.replica = replica
        self.name, self.vsn = replica
        self.counter = 0  # own dots issued so far
        self.context: dict[ReplicaRef, int] = {replica: 0}  # the replicas known here
        self.clouds: dict[ReplicaRef, set[int]] = {}  # other replicas' dots beyond context
        self.replica_ids: dict[ReplicaRef, int] = {replica: 0}
        self.replica_refs: dict[int, ReplicaRef] = {0: replica}
        self._next_id = 1  # never reused: a dot's id names one incarnation for good
        self.topics: dict[Topic, dict[Key, Elements]] = {}
        self.pids: dict[Pid, dict[int, Element]] = {}  # own elements by pid, then dot
        self.remote: dict[int, dict[int, Element]] = {}  # replica id -> counter -> element
        self.down: set[ReplicaRef] = set()  # replicas flagged down (hidden from reads)
        self.record_delta = record_delta
        self.delta = self._fresh_delta()
        self._size = 0
        # told every change as (operation, *arguments) once it took effect, so that a
        # journal can replay them into a fresh state (`tracker.journal`)
        self.record: Callable[[tuple[Any, ...]], None] | None = None

    def __len__(self) -> int:
        return self._size

    def dot_of(self, element: Element) -> Dot:
        """The element's dot as the protocol names it: (replica, counter)."""
        return (self.replica_refs[element.dot >> COUNTER_BITS], element.dot & _COUNTER)

    # -- local operations (this replica's own elements) -----------------------------------

    def join(self, pid: Pid, topic: Topic, key: Key, meta: bytes) -> Element:
        """Add an element; `AlreadyTracked` if (topic, pid, key) is tracked here."""
        if self.get(pid, topic, key) is not None:
            raise AlreadyTracked(
                f"{describe_owner(pid)} is already tracked on topic {topic!r} as {key!r}"
            )
        return self.join_unchecked(pid, topic, key, meta)

    def join_unchecked(
        self, pid: Pid, topic: Topic, key: Key, meta: bytes, *, intern_key: bool = True
    ) -> Element:
        """`join` without the duplicate check: for a journal's replay of joins that passed it
        (which interns no key: a million distinct keys would cost a recovery a second).

        The hottest path of tracking and of a recovery: `_index` is inlined, and the tuple
        made without the named tuple's Python-level constructor."""
        topic, dot = sys.intern(topic), self._bump()
        if intern_key:
            key = sys.intern(key)
        element = _make(Element, (topic, pid, key, meta, dot))
        keys = self.topics.get(topic)
        if keys is None:
            self.topics[topic] = {key: [element]}
        else:
            same = keys.get(key)
            if same is None:
                keys[key] = [element]
            else:
                same.append(element)
        self._size += 1
        mine = self.pids.get(pid)
        if mine is None:
            self.pids[pid] = {dot: element}
        else:
            mine[dot] = element
        if self.record_delta:
            self.delta.values[(self.replica, element.dot)] = (topic, pid, key, meta)
        if self.record is not None:
            self.record(("j", pid, topic, key, meta))
        return element

    def leave(self, pid: Pid, topic: Topic, key: Key) -> Element | None:
        """Remove an element; None if it is not tracked."""
        element = self.get(pid, topic, key)
        if element is None:
            return None
        self._remove_own(element)
        self._bump()
        if self.record is not None:
            self.record(("l", pid, topic, key))
        return element

    def leave_join(self, pid: Pid, topic: Topic, key: Key, meta: bytes) -> tuple[Element, Element]:
        """Replace an element's meta (an update): (old, new). `NotTracked` if absent.

        The new element takes the old one's place in the indexes, so a reader never sees
        the key missing (phoenix_pubsub#172). Consumes two counters, as upstream.
        """
        old = self.tracked(pid, topic, key)
        self._forget_in_delta(self.replica, old.dot)
        self._bump()
        new = old._replace(meta=meta, dot=self._bump())
        same = self.topics[topic][key]
        same[same.index(old)] = new
        mine = self.pids[pid]
        del mine[old.dot]
        mine[new.dot] = new
        if self.record_delta:
            self.delta.values[(self.replica, new.dot)] = (topic, pid, key, meta)
        if self.record is not None:
            self.record(("u", pid, topic, key, meta))
        return old, new

    def leave_pid(self, pid: Pid) -> Elements:
        """Remove every element of `pid` (it exited, or `untrack(pid)`)."""
        mine = self.pids.get(pid)
        if not mine:
            return []
        left = list(mine.values())
        for element in left:
            self._remove_own(element)
            self._bump()
        if self.record is not None:
            self.record(("p", pid))
        return left

    # -- reads -----------------------------------------------------------------------------

    def tracked(self, pid: Pid, topic: Topic, key: Key) -> Element:
        """This replica's own element for (topic, pid, key); `NotTracked` if there is none."""
        element = self.get(pid, topic, key)
        if element is None:
            raise NotTracked(f"{describe_owner(pid)} is not tracked on topic {topic!r} as {key!r}")
        return element

    def get(self, pid: Pid, topic: Topic, key: Key) -> Element | None:
        """This replica's own element for (topic, pid, key)."""
        mine = self.pids.get(pid)
        if mine is None:
            return None
        same: Elements | None = self.topics.get(topic, _EMPTY).get(key)
        if same is None:
            return None
        if len(same) <= len(mine):  # the shorter side: a key held by a thousand owners,
            for e in same:  # or an owner in a thousand topics, costs neither a scan of all
                if e.pid == pid and e.dot < _OWN_MAX:
                    return e
            return None
        for e in mine.values():
            if e.key == key and e.topic == topic and e.dot < _OWN_MAX:
                return e
        return None

    def list(self, topic: Topic) -> Elements:
        """Every element of `topic` whose replica is not flagged down."""
        keys = self.topics.get(topic)
        if not keys:
            return []
        if not self.down:
            return [e for same in keys.values() for e in same]
        hidden = self._hidden()
        return [e for same in keys.values() for e in same if e.dot >> COUNTER_BITS not in hidden]

    def metas_by_key(self, topic: Topic) -> dict[Key, PackedMetas]:
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

    def get_by_key(self, topic: Topic, key: Key) -> Elements:
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

    def replica_elements(self, replica: ReplicaRef) -> Elements:
        """Every element `replica` added, as held here (hidden or not)."""
        rid = self.replica_ids.get(replica)
        if rid is None:
            return []
        if rid == 0:
            return [e for mine in self.pids.values() for e in mine.values()]
        return list(self.remote.get(rid, _EMPTY).values())

    # -- replication -----------------------------------------------------------------------

    def clocks(self) -> dict[ReplicaRef, int]:
        """The context advertised to peers: down replicas left out (phoenix_pubsub#135)."""
        return {r: n for r, n in self.context.items() if r not in self.down}

    def take_delta(self) -> Delta:
        """The pending delta, replaced by an empty one (after a flush)."""
        delta = self.delta
        self.delta = self._fresh_delta()
        if self.record is not None:
            self.record(("t",))
        return delta

    def replica_up(self, replica: ReplicaRef) -> Elements:
        """Know `replica` (its heartbeat came) and show it: retained elements rejoin."""
        if self.record is not None and (replica not in self.context or replica in self.down):
            self.record(("U", replica))
        if replica not in self.context:
            self.context[replica] = 0
            rid = self.replica_ids[replica] = self._next_id
            self.replica_refs[rid] = replica
            self._next_id += 1
            return []
        if replica in self.down:
            self.down.discard(replica)
            return self.replica_elements(replica)
        return []

    def replica_down(self, replica: ReplicaRef) -> Elements:
        """Hide `replica`'s elements, kept for a return before permdown: they leave."""
        if replica == self.replica or replica not in self.context or replica in self.down:
            return []
        self.down.add(replica)
        if self.record is not None:
            self.record(("D", replica))
        return self.replica_elements(replica)

    def permdown(self, replica: ReplicaRef) -> Elements:
        """Forget `replica` entirely (elements, context, clouds, down flag, id: nothing grows
        with restarts, phoenix_pubsub#179). Returns the dropped elements that were visible."""
        if replica == self.replica or replica not in self.context:
            return []
        visible = replica not in self.down
        rid = self.replica_ids.pop(replica)
        del self.replica_refs[rid]
        dropped = list(self.remote.pop(rid, _EMPTY).values())
        for element in dropped:
            self._unindex(element)
        del self.context[replica]
        self.clouds.pop(replica, None)
        self.down.discard(replica)
        if self.record_delta:
            prune_delta(self.delta, replica)
        if self.record is not None:
            self.record(("P", replica))
        return dropped if visible else []

    def extract(self, peer: ReplicaRef, peer_context: dict[ReplicaRef, int]) -> Snapshot:
        """The whole state for `peer`, pruned to the replicas it knows (it learns of others
        from their own heartbeats); `peer`'s own elements are left out."""
        parts = self.extract_in_parts(peer, peer_context, sys.maxsize)
        while True:
            try:
                next(parts)
            except StopIteration as done:
                snapshot: Snapshot = done.value  # a generator's return value
                return snapshot

    def extract_in_parts(
        self, peer: ReplicaRef, peer_context: dict[ReplicaRef, int], size: int
    ) -> Generator[None, None, Snapshot]:
        """`extract`, pausing after every `size` elements (the snapshot is its return value):
        a shard answers its heartbeats between parts. Other changes may come between parts:
        the context is taken first, so what is removed meanwhile reads as removed (the
        peer's copy leaves, rightly), and what is added meanwhile is newer than it (taken
        as an element beyond the context, or from the next heartbeat)."""
        known = [r for r in self.context if r in peer_context]
        context = {r: self.context[r] for r in known}
        clouds = {r: set(self.clouds[r]) for r in known if self.clouds.get(r)}
        values: dict[Dot, Value] = {}
        for r in known:
            if r == peer:
                continue
            elements = self.replica_elements(r)
            for i in range(0, len(elements), size):
                for e in elements[i : i + size]:
                    values[(r, e.dot & _COUNTER)] = (e.topic, e.pid, e.key, e.meta)
                if i + size < len(elements):
                    yield
        return Snapshot(self.replica, context, clouds, values)

    def merge(self, remote: Delta | Snapshot) -> JoinsLeaves:
        """Merge a peer's delta or snapshot: the (joins, leaves) it makes here.

        Only replicas known here count (a replica is known from its own heartbeat), and a
        peer never removes this replica's elements. A delta costs what it carries; only a
        snapshot is compared with every element held, as it must be. Idempotent, and the
        result does not depend on the order of merges. Changes of replicas flagged down are
        applied but not reported (`replica_up` reports what is held then), so the joins and
        leaves reported always add up to what `list` shows.
        """
        if self.record is not None:  # first: the caller may change `remote` afterwards
            self.record(("m", remote))
        if isinstance(remote, Snapshot):
            leaves: Elements = []
            joins = self._admit(remote.values, leaves)
            end = self._merge_seen(remote.context, remote.clouds, remote.values)
            return self._shown(joins, leaves + end)
        leaves = self._observe_removes(remote)
        joins = self._admit(remote.values, leaves)
        self._merge_clouds(remote.clouds)
        return self._shown(joins, leaves)

    def merge_in_parts(self, remote: Delta | Snapshot, size: int) -> Iterator[JoinsLeaves]:
        """`merge`, about `size` values or dots at a time, each part's (joins, leaves) as it
        is merged: a shard serves its heartbeats between parts. Other changes may come
        between parts (merges commute); together the parts make `merge(remote)`.

        A snapshot's values go in as deltas; then what it has seen without holding it
        leaves, and its context is taken (`merge_seen`), for the replicas known when it
        began and still are: one that came up since (or was forgotten and came up again) was
        skipped by the first parts, and must not be counted as seen."""
        if isinstance(remote, Delta):
            if remote.size() <= size:
                yield self.merge(remote)
                return
            for part in _delta_parts(remote, size):
                yield self.merge(part)
            return
        ids = {r: self.replica_ids[r] for r in remote.context if r in self.context}
        values = [(dot, v) for dot, v in remote.values.items() if dot[0] in ids]
        kept: dict[ReplicaRef, set[int]] = {}
        for i in range(0, len(values), size):
            chunk = dict(values[i : i + size])
            clouds: dict[ReplicaRef, set[int]] = {}
            for r, c in chunk:
                clouds.setdefault(r, set()).add(c)
            for r, cloud in clouds.items():
                kept.setdefault(r, set()).update(cloud)
            yield self.merge(Delta(remote.replica, {}, {}, clouds, chunk))
        # replicas known since the start only: one permdowned and up again meanwhile is
        # another incarnation of our knowledge (its elements were dropped)
        known = {r for r, rid in ids.items() if self.replica_ids.get(r) == rid}
        yield self.merge_seen(
            {r: n for r, n in remote.context.items() if r in known},
            {r: c for r, c in remote.clouds.items() if r in known},
            kept,
        )

    def merge_seen(
        self,
        context: dict[ReplicaRef, int],
        clouds: dict[ReplicaRef, set[int]],
        kept: dict[ReplicaRef, set[int]],
    ) -> JoinsLeaves:
        """The end of a snapshot merged in parts: elements the peer has seen (its `context`
        and `clouds`) but does not hold (not in `kept`) leave; its context is taken."""
        if self.record is not None:
            self.record(("e", context, clouds, kept))
        dots = {(r, c) for r, cs in kept.items() for c in cs}
        return self._shown([], self._merge_seen(context, clouds, dots))

    def _merge_seen(
        self, context: dict[ReplicaRef, int], clouds: dict[ReplicaRef, set[int]], held: Any
    ) -> Elements:
        """A snapshot's removes (every element it has seen and not in `held`, a collection
        of dots), its context and clouds; the elements that left."""
        leaves: Elements = []
        for r, seen in context.items():
            rid = self.replica_ids.get(r)
            mine = self.remote.get(rid) if rid else None
            if not rid or not mine:
                continue
            cloud = clouds.get(r, _EMPTY)
            for c in [c for c in mine if (c <= seen or c in cloud) and (r, c) not in held]:
                element = mine[c]
                self._drop_remote(element, rid, c)
                self._forget_in_delta(r, c)  # re-gossiped in this replica's next heartbeat
                leaves.append(element)
        for r, n in context.items():
            if r != self.replica and n > self.context.get(r, n):
                self.context[r] = n
        self._merge_clouds(clouds)
        return leaves

    def _merge_clouds(self, clouds: dict[ReplicaRef, set[int]]) -> None:
        for r, cloud in clouds.items():
            if r != self.replica and r in self.context and cloud:
                self.clouds.setdefault(r, set()).update(cloud)
        self._compact()

    def _shown(self, joins: Elements, leaves: Elements) -> JoinsLeaves:
        """A hidden replica's changes show when it comes back up, not now."""
        if self.down:
            hidden = self._hidden()
            joins = [e for e in joins if e.dot >> COUNTER_BITS not in hidden]
            leaves = [e for e in leaves if e.dot >> COUNTER_BITS not in hidden]
        return joins, leaves

    # -- internals: merging ----------------------------------------------------------------

    def _seen(self, replica: ReplicaRef, counter: int) -> bool:
        return counter <= self.context[replica] or counter in self.clouds.get(replica, _EMPTY)

    def _observe_removes(self, remote: Delta) -> Elements:
        """Elements the peer has seen but no longer holds were removed: they leave. Only the
        delta's own markers are looked at: O(delta)."""
        leaves = []
        values = remote.values
        for r, cloud in remote.clouds.items():
            rid = self.replica_ids.get(r)
            if not rid or rid not in self.remote:
                continue
            for c in cloud:
                if (r, c) in values:
                    continue
                element = self.remote.get(rid, _EMPTY).get(c)
                if element is not None:
                    self._drop_remote(element, rid, c)
                    self._forget_in_delta(r, c)  # re-gossiped in this replica's next heartbeat
                    leaves.append(element)
        return leaves

    def _admit(self, values: dict[Dot, Value], leaves: Elements) -> Elements:
        """Elements of known replicas not seen here yet become joins."""
        joins = []
        for (replica, counter), (topic, pid, key, meta) in values.items():
            seen = self.context.get(replica)
            if seen is None or replica == self.replica or self._seen(replica, counter):
                continue
            rid = self.replica_ids[replica]
            held = self._held(topic, pid, key, rid)
            if held is not None:
                held_counter = held.dot & _COUNTER
                if held_counter > counter:
                    # a stale copy (an old transfer after a newer delta): the newer element
                    # replaced it, so it was removed (phoenix_pubsub#148)
                    self.clouds.setdefault(replica, set()).add(counter)
                    continue
                # an older element whose remove marker has not arrived yet: replaced
                self._drop_remote(held, rid, held_counter)
                self.clouds.setdefault(replica, set()).add(held_counter)
                self._forget_in_delta(replica, held_counter)
                leaves.append(held)
            element = Element(
                sys.intern(topic), pid, sys.intern(key), meta, rid << COUNTER_BITS | counter
            )
            self._index(element)
            self.remote.setdefault(rid, {})[counter] = element
            self.clouds.setdefault(replica, set()).add(counter)
            joins.append(element)
        return joins

    def _held(self, topic: Topic, pid: Pid, key: Key, rid: int) -> Element | None:
        """The element of replica `rid` for (topic, pid, key), if held."""
        held: Elements = self.topics.get(topic, _EMPTY).get(key, [])
        for e in held:
            if e.pid == pid and e.dot >> COUNTER_BITS == rid:
                return e
        return None

    def _drop_remote(self, element: Element, rid: int, counter: int) -> None:
        mine = self.remote[rid]
        del mine[counter]
        if not mine:
            del self.remote[rid]
        self._unindex(element)

    def _compact(self) -> None:
        """Fold each cloud's dots that continue the context into it."""
        for r in list(self.clouds):
            cloud = self.clouds[r]
            n = self.context[r]
            while n + 1 in cloud:
                n += 1
            if n != self.context[r]:
                self.context[r] = n
            cloud.difference_update([c for c in cloud if c <= n])
            if not cloud:
                del self.clouds[r]

    # -- internals: indexes and own history ------------------------------------------------

    def _index(self, element: Element) -> None:
        keys = self.topics.get(element.topic)
        if keys is None:
            keys = self.topics[element.topic] = {}
        same = keys.get(element.key)
        if same is None:
            keys[element.key] = [element]
        else:
            same.append(element)
        self._size += 1

    def _unindex(self, element: Element) -> None:
        keys = self.topics[element.topic]
        same = keys[element.key]
        if len(same) == 1:
            del keys[element.key]
            if not keys:
                del self.topics[element.topic]
        else:
            same.remove(element)
        self._size -= 1

    def _remove_own(self, element: Element) -> None:
        self._unindex(element)
        mine = self.pids[element.pid]
        del mine[element.dot]
        if not mine:
            del self.pids[element.pid]
        self._forget_in_delta(self.replica, element.dot)

    def _hidden(self) -> set[int]:
        return {self.replica_ids[r] for r in self.down if r in self.replica_ids}

    def _fresh_delta(self) -> Delta:
        return Delta(self.replica, {self.replica: self.counter}, {self.replica: self.counter})

    def _bump(self) -> int:
        self.counter += 1
        if self.counter >= _OWN_MAX:
            raise OverflowError("a replica incarnation ran out of counters")
        self.context[self.replica] = self.counter
        if self.record_delta:
            self.delta.clouds.setdefault(self.replica, set()).add(self.counter)
            self.delta.end[self.replica] = self.counter
        return self.counter

    def _forget_in_delta(self, replica: ReplicaRef, counter: int) -> None:
        """In the delta, the dot stays seen but its value goes: the remove marker."""
        if self.record_delta:
            self.delta.values.pop((replica, counter), None)
            self.delta.clouds.setdefault(replica, set()).add(counter)


def _delta_parts(delta: Delta, size: int) -> Iterator[Delta]:
    """`delta` cut in parts of about `size` dots: each value goes with its own dot (a dot
    without its value would be read as the value's remove), the remove markers after."""
    values = list(delta.values.items())
    with_value: dict[ReplicaRef, set[int]] = {}
    for i in range(0, len(values), size):
        part = dict(values[i : i + size])
        clouds: dict[ReplicaRef, set[int]] = {}
        for r, c in part:
            cloud = clouds.get(r)
            if cloud is None:
                clouds[r] = {c}
            else:
                cloud.add(c)
        for r, cloud in clouds.items():
            with_value.setdefault(r, set()).update(cloud)
        yield Delta(delta.replica, delta.start, delta.end, clouds, part)
    for r, cloud in delta.clouds.items():
        markers = list(cloud - with_value.get(r, set()))
        for i in range(0, len(markers), size):
            yield Delta(delta.replica, delta.start, delta.end, {r: set(markers[i : i + size])}, {})


_EMPTY: dict[Any, Any] = {}  # read only: what `get` falls back on
_make = tuple.__new__
