"""Property: replicas converge whatever happens to the deltas between them.

Random programs over 2-4 replicas: joins, leaves and updates; deltas flushed and then
delivered in any order, duplicated or dropped; transfers answered from delta generations or
whole snapshots; replicas flagged down, up and permdown. A delivery or a transfer may be
merged in parts (as a busy shard does), with any of the above between two parts. Then the
network heals (everyone up, everything flushed, snapshots exchanged) and every replica must
list the same presences, and each must have reported joins and leaves that add up to what
it lists.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from whosthere.tracker import deltas
from whosthere.tracker.state import Delta, State

CAPS = (2, 5, 10)
TOPICS = ("t1", "t2")
KEYS = ("k1", "k2")
PIDS = (1, 2)


class Replica:
    """A State with what a shard keeps beside it: generations, and the diffs it reported."""

    def __init__(self, ref):
        self.state = State(ref)
        self.generations: list[Delta] = []
        self.view: dict[tuple, tuple] = {}  # dot -> (topic, pid, key, meta), from reports
        self.merging: list = []  # merges in parts under way: each an iterator of parts

    def report(self, joins, leaves):
        for e in leaves:
            dot = self.state.dot_of(e)
            assert self.view.pop(dot) == e[:4], "a leave of something never joined"
        for e in joins:
            dot = self.state.dot_of(e)
            assert dot not in self.view, "a second join of the same element"
            self.view[dot] = e[:4]

    def report_leaves_before_drop(self, leaves, ref):
        for e in leaves:  # permdown: the dots cannot be named after the drop
            self.view = {d: v for d, v in self.view.items() if not (d[0] == ref and v == e[:4])}

    def listed(self):
        s = self.state
        return {(s.dot_of(e), e[:4]) for t in TOPICS for e in s.list(t)}


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("track"),
            st.integers(0, 3),
            st.sampled_from(PIDS),
            st.sampled_from(TOPICS),
            st.sampled_from(KEYS),
            st.binary(max_size=2),
        ),
        st.tuples(
            st.just("untrack"),
            st.integers(0, 3),
            st.sampled_from(PIDS),
            st.sampled_from(TOPICS),
            st.sampled_from(KEYS),
        ),
        st.tuples(
            st.just("update"),
            st.integers(0, 3),
            st.sampled_from(PIDS),
            st.sampled_from(TOPICS),
            st.sampled_from(KEYS),
            st.binary(max_size=2),
        ),
        st.tuples(st.just("exit"), st.integers(0, 3), st.sampled_from(PIDS)),
        st.tuples(st.just("flush"), st.integers(0, 3)),
        st.tuples(st.just("deliver"), st.integers(0, 3), st.integers(0, 50)),
        st.tuples(st.just("duplicate"), st.integers(0, 3), st.integers(0, 50)),
        st.tuples(st.just("drop"), st.integers(0, 3), st.integers(0, 50)),
        st.tuples(st.just("transfer"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("down"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("up"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("permdown"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("in_parts"), st.integers(0, 3), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("part"), st.integers(0, 3)),
    ),
    min_size=20,  # hypothesis favours short lists; short programs rarely race anything
    max_size=120,
)


def transfer(to: Replica, frm: Replica, *, whole: bool = False) -> None:
    clocks = to.state.clocks()
    chosen = None if whole else deltas.for_peer(frm.generations, clocks)
    payload = chosen if chosen is not None else frm.state.extract(to.state.replica, clocks)
    to.report(*to.state.merge(payload))
    if chosen is not None:
        to.generations = deltas.push(to.generations, chosen, CAPS, to.state.delta)
    else:
        to.generations = []


def in_parts(to: Replica, payload, size: int, frm: Replica | None = None):
    """A merge in parts of `size`, each part reported as it is merged (a busy shard's);
    with `frm`, the snapshot is first extracted from it in parts, changes between them."""
    if frm is not None:
        payload = yield from frm.state.extract_in_parts(to.state.replica, to.state.clocks(), size)
    for joins, leaves in to.state.merge_in_parts(payload, size):
        to.report(joins, leaves)
        yield
    if isinstance(payload, Delta):
        to.generations = deltas.push(to.generations, payload, CAPS, to.state.delta)
    else:
        to.generations = []


def finish(x: Replica) -> None:
    while x.merging:
        for _ in x.merging.pop(0):
            pass


def up(x: Replica, ref) -> None:
    x.report(x.state.replica_up(ref), [])


@settings(deadline=None, max_examples=300)
@given(st.integers(2, 4), ops, st.randoms(use_true_random=False))
def test_replicas_converge(n, program, rnd):  # noqa: PLR0915 (one program, read top down)
    replicas = [Replica((f"n{i}", 1)) for i in range(n)]
    refs = [r.state.replica for r in replicas]
    for x in replicas:
        for ref in refs:
            up(x, ref)
    inbox: list[list[Delta]] = [[] for _ in replicas]

    for op in program:
        kind, i = op[0], op[1] % n
        x = replicas[i]
        s = x.state
        if kind == "track":
            _, _, pid, topic, key, meta = op
            if s.get(pid, topic, key) is None:
                x.report([s.join(pid, topic, key, meta)], [])
        elif kind == "untrack":
            _, _, pid, topic, key = op
            left = s.leave(pid, topic, key)
            x.report([], [left] if left else [])
        elif kind == "update":
            _, _, pid, topic, key, meta = op
            if s.get(pid, topic, key) is not None:
                old, new = s.leave_join(pid, topic, key, meta)
                x.report([new], [old])
        elif kind == "exit":
            x.report([], s.leave_pid(op[2]))
        elif kind == "flush":
            if s.delta:
                delta = s.take_delta()
                x.generations = deltas.push(x.generations, delta, CAPS, s.delta)
                for j in range(n):
                    if j != i:
                        inbox[j].append(delta)
        elif kind in ("deliver", "duplicate", "drop") and inbox[i]:
            k = op[2] % len(inbox[i])
            delta = inbox[i][k] if kind == "duplicate" else inbox[i].pop(k)
            if kind != "drop" and delta.replica in s.context and delta.replica not in s.down:
                x.report(*s.merge(delta))
                assert s.merge(delta) == ([], []), "merging a delta again changed something"
                x.generations = deltas.push(x.generations, delta, CAPS, s.delta)
        elif kind == "transfer":
            frm = replicas[op[2] % n]
            if frm is not x and frm.state.replica in s.context:
                transfer(x, frm)
        elif kind in ("down", "up", "permdown"):
            ref = refs[op[2] % n]
            if ref == s.replica:
                continue
            if kind == "down":
                x.report([], s.replica_down(ref))
            elif kind == "up":
                up(x, ref)
            else:
                if ref not in s.down:
                    x.report([], s.replica_down(ref))
                s.permdown(ref)
                x.generations = []
                assert not any(d[0] == ref for d in x.view), "permdown kept elements in view"
        elif kind == "in_parts":  # a transfer or a delivery, merged a part at a time
            frm = replicas[op[2] % n]
            if op[3] and inbox[i]:
                delta = inbox[i].pop(0)
                if delta.replica in s.context and delta.replica not in s.down:
                    x.merging.append(in_parts(x, delta, 1 + op[2] % 3))
            elif frm is not x and frm.state.replica in s.context:
                x.merging.append(in_parts(x, None, 1 + op[2] % 3, frm))
        elif kind == "part" and x.merging and next(x.merging[0], StopIteration) is StopIteration:
            x.merging.pop(0)

    # the network heals: merges under way end, everyone up, every delta delivered, snapshots
    for x in replicas:
        finish(x)
    for x in replicas:
        for ref in refs:
            up(x, ref)
    for i, x in enumerate(replicas):
        if x.state.delta:
            delta = x.state.take_delta()
            for j in range(n):
                if j != i:
                    inbox[j].append(delta)
    for j, x in enumerate(replicas):
        rnd.shuffle(inbox[j])
        for delta in inbox[j]:
            x.report(*x.state.merge(delta))
    for _ in range(2):
        for x in replicas:
            for y in replicas:
                if x is not y:
                    transfer(x, y, whole=True)

    views = [x.listed() for x in replicas]
    assert all(v == views[0] for v in views), "replicas did not converge"
    for x in replicas:
        assert set(x.view.items()) == x.listed(), "reported diffs do not add up to the list"
        assert not x.state.clouds, "a gap is left after the heal"
        for y in replicas:
            if x is not y:
                assert x.state.merge(y.state.extract(x.state.replica, x.state.clocks())) == (
                    [],
                    [],
                )
