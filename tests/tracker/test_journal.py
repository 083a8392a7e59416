"""The journal rebuilds the same replica: a dump plus the frames written since it, replayed
into a fresh state, give back every presence, dot, clock, cloud and the pending delta."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from whosthere.tracker import journal
from whosthere.tracker.journal import Recorder
from whosthere.tracker.state import State
from whosthere.transport import codec

PIDS = (1, 2, 3)


def read_frames(data: bytes) -> tuple[list, int, str | None]:
    """Every frame's operations, the length of the good part, and why it ends early."""
    reader = journal.FrameReader(data)
    frames = list(reader)
    return frames, reader.good, reader.why


TOPICS = ("t1", "t2")
KEYS = ("k1", "k2")


def meta(n: int) -> bytes:
    return codec.pack_meta({"n": n})


def fingerprint(s: State) -> tuple:
    """Everything a replica is, with replica ids replaced by the replicas they name."""
    ref = s.replica_refs.__getitem__
    elements = sorted(
        (e.topic, e.key, e.pid, e.meta, ref(e.dot >> 40), e.dot & ((1 << 40) - 1))
        for keys in s.topics.values()
        for same in keys.values()
        for e in same
    )
    delta = s.delta
    return (
        s.replica,
        s.counter,
        dict(s.context),
        {r: sorted(c) for r, c in s.clouds.items() if c},
        sorted(s.down),
        elements,
        sorted((pid, sorted(m)) for pid, m in s.pids.items()),
        sorted((ref(rid), sorted(m)) for rid, m in s.remote.items()),
        len(s),
        (delta.start, delta.end, {r: sorted(c) for r, c in delta.clouds.items()}, delta.values),
    )


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("track"),
            st.booleans(),
            st.sampled_from(PIDS),
            st.sampled_from(TOPICS),
            st.sampled_from(KEYS),
            st.integers(0, 9),
        ),
        st.tuples(
            st.just("untrack"),
            st.booleans(),
            st.sampled_from(PIDS),
            st.sampled_from(TOPICS),
            st.sampled_from(KEYS),
        ),
        st.tuples(
            st.just("update"),
            st.booleans(),
            st.sampled_from(PIDS),
            st.sampled_from(TOPICS),
            st.sampled_from(KEYS),
            st.integers(0, 9),
        ),
        st.tuples(st.just("exit"), st.booleans(), st.sampled_from(PIDS)),
        st.tuples(st.just("sync"), st.booleans()),  # a flushed delta to the other replica
        st.tuples(st.just("transfer"), st.booleans()),  # a whole-state snapshot to the other
        st.tuples(st.just("in_parts"), st.booleans()),  # the same, merged a part at a time
        st.tuples(st.just("down"), st.booleans()),
        st.tuples(st.just("up"), st.booleans()),
        st.tuples(st.just("permdown"), st.booleans()),
        st.tuples(
            st.just("dump"),
        ),
        st.tuples(
            st.just("frame"),
        ),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_dump_plus_replayed_frames_rebuild_the_same_replica(program):
    a, b = State(("a", 1)), State(("b", 2))
    a.replica_up(b.replica)
    b.replica_up(a.replica)
    recorder = Recorder()
    a.record = recorder
    starts = {pid: pid * 10 for pid in PIDS}
    dumped, frames = journal.dump(a, starts), []
    for op in program:
        kind, on_a = op[0], (op[1] if len(op) > 1 else True)
        me, other = (a, b) if on_a else (b, a)
        try:
            if kind == "track":
                me.join(op[2], op[3], op[4], meta(op[5]))
            elif kind == "untrack":
                me.leave(op[2], op[3], op[4])
            elif kind == "update":
                me.leave_join(op[2], op[3], op[4], meta(op[5]))
            elif kind == "exit":
                me.leave_pid(op[2])
        except Exception:  # AlreadyTracked / NotTracked: no change, nothing recorded
            pass
        if kind == "sync":
            other.merge(me.take_delta())
        elif kind == "transfer":
            other.merge(me.extract(other.replica, other.context))
        elif kind == "in_parts":
            for _ in other.merge_in_parts(me.extract(other.replica, other.context), 1):
                pass
        elif kind == "down":
            me.replica_down(other.replica)
        elif kind == "up":
            me.replica_up(other.replica)
        elif kind == "permdown" and not on_a:  # a forgets b, which comes back anew
            a.permdown(b.replica)
            b = State(("b", b.vsn + 1))
            a.replica_up(b.replica)
            b.replica_up(a.replica)
        elif kind == "dump":
            frames.append(journal.frame(recorder.take()))
            dumped, frames = journal.dump(a, starts), []
        elif kind == "frame":
            frames.append(journal.frame(recorder.take()))
    frames.append(journal.frame(recorder.take()))

    restored, got_starts = journal.load(dumped, record_delta=True)
    read, good, why = read_frames(b"".join(frames))
    assert why is None and good == sum(map(len, frames))
    for ops_ in read:
        journal.replay(restored, ops_, got_starts)
    assert fingerprint(restored) == fingerprint(a)
    assert set(got_starts) <= set(PIDS)


def test_a_torn_or_damaged_tail_is_cut_where_the_good_part_ends():
    first = journal.frame([("k", 7, 1.5), ("j", 7, "t", "k", meta(1))])
    second = journal.frame([("p", 7)])
    whole = first + second
    assert read_frames(whole)[1:] == (len(whole), None)
    for cut in range(len(first) + 1, len(whole)):
        read, good, why = read_frames(whole[:cut])
        assert len(read) == 1 and good == len(first) and "cut short" in why
    damaged = first + second[:-1] + bytes([second[-1] ^ 1])
    read, good, why = read_frames(damaged)
    assert len(read) == 1 and good == len(first) and "checksum" in why


def test_a_dump_keeps_the_replica_its_owners_and_a_single_nodes_state():
    s = State(("n", 42), record_delta=False)
    s.join(5, "t", "k", meta(1))
    s.join(6, "t", "k2", meta(2))
    s.leave(6, "t", "k2")
    restored, starts = journal.load(journal.dump(s, {5: 123.25, 6: 9.0}), record_delta=False)
    assert restored.replica == ("n", 42) and restored.counter == s.counter
    assert starts == {5: 123.25}  # pid 6 owns nothing any more
    assert [e.meta for e in restored.list("t")] == [meta(1)]
    restored.join(6, "t", "k2", meta(3))  # dots go on from where they were
    assert restored.counter == s.counter + 1
