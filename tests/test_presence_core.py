"""The presence client core without processes: each call's messages, routing, retries and
result assembly, driven step by step by a scripted node; the clock is an argument."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgpack
import pytest

import whosthere
from whosthere.errors import NodeUnavailable, RefChanged
from whosthere.presence_core import BATCH, PresenceCore, fetchers_of
from whosthere.steps import Call, Gather, Pause, Settle, Step, Steps, run
from whosthere.tracker.pool import shard_for
from whosthere.transport import codec
from whosthere.transport.messages import (
    GetByKey,
    GetMeta,
    ListTopic,
    ListTopics,
    Track,
    TrackMany,
    Untrack,
    UntrackMany,
    UntrackPid,
    Update,
)

PID = os.getpid()


def drive(steps: Steps[Any], node: Callable[[Any], Any]) -> tuple[Any, list[Step]]:
    """Run `steps` as the clients do (`steps.run`) against `node`: a step -> its result, or
    an exception to raise where the call waits. The call's result and every step it took."""
    taken: list[Step] = []

    def perform(step: Step) -> Any:
        taken.append(step)
        result = node(step)
        if isinstance(result, Exception):
            raise result
        return result

    return run(steps, perform), taken


async def settled(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def ticking(*times: float) -> Callable[[], float]:
    """A clock that reads `times`, one per call."""
    it: Iterator[float] = iter(times)
    return lambda: next(it)


def packed_meta(meta: dict[str, Any]) -> bytes:
    return msgpack.packb(meta)


def test_a_track_goes_to_its_topics_shard_as_one_batchable_call():
    core = PresenceCore(pool_size=4, meta_limit=1024, timeout=5.0)
    call = core.track((PID, "room:7", 12, {"s": 1}))
    assert call.shard == shard_for("room:7", 4) == core.shard_of("room:7")
    assert call.batchable
    assert isinstance(call.msg, Track)
    assert (call.msg.pid, call.msg.topic, call.msg.key) == (PID, "room:7", "12")
    assert codec.unpack(call.msg.meta) == {"s": 1}
    by_channel = core.track((whosthere.Channel(PID, "room:7"), "k", {}))
    assert by_channel.shard == call.shard and by_channel.msg.topic == "room:7"
    assert PresenceCore(1, 1024, 5.0).track((PID, "room:7", "k", {})).shard == 0


def test_arguments_are_refused_before_anything_is_built():
    core = PresenceCore(2, 16, 5.0)
    with pytest.raises(TypeError, match="track takes"):
        core.track((PID, "t"))
    with pytest.raises(whosthere.InvalidMeta):
        core.track((PID, "t", "k", {"big": "x" * 100}))
    with pytest.raises(TypeError, match="pid must be"):
        core.untrack((0, "t", "k"))


def test_an_update_by_dict_is_one_unconditional_call():
    core = PresenceCore(2, 1024, 5.0)
    call = core.update((PID, "t", "k", {"v": 2}), ticking())
    assert isinstance(call, Call) and call.batchable
    assert call.msg == Update(PID, "t", "k", packed_meta({"v": 2}), None)


def test_an_update_by_function_reads_then_writes_only_over_what_it_read():
    core = PresenceCore(2, 1024, 5.0)
    steps = core.update((PID, "t", "k", lambda m: {**m, "v": m["v"] + 1}), ticking(0.0))
    assert not isinstance(steps, Call)
    current = {"v": 1, "phx_ref": "r1"}

    def node(step: Step) -> Any:
        assert isinstance(step, Call) and step.batchable
        if isinstance(step.msg, GetMeta):
            return packed_meta(current)
        return "r2"

    ref, taken = drive(steps, node)
    assert ref == "r2"
    shard = core.shard_of("t")
    assert taken == [
        Call(shard, GetMeta(PID, "t", "k"), True),
        Call(shard, Update(PID, "t", "k", packed_meta({"v": 2}), "r1"), True),
    ]


def test_an_update_that_loses_a_race_backs_off_and_runs_on_the_newer_meta():
    core = PresenceCore(1, 1024, 5.0)
    metas = iter([{"v": 1, "phx_ref": "r1"}, {"v": 5, "phx_ref": "r9"}])
    seen: list[dict[str, Any]] = []

    def fn(meta: dict[str, Any]) -> dict[str, Any]:
        seen.append(meta)
        return {"v": meta["v"] * 10}

    def node(step: Step) -> Any:
        if isinstance(step, Pause):
            assert 0 <= step.seconds <= 0.05
            return None
        assert isinstance(step, Call)
        if isinstance(step.msg, GetMeta):
            return packed_meta(next(metas))
        return RefChanged("lost") if step.msg.expect_ref == "r1" else "r10"

    ref, taken = drive(core.update((PID, "t", "k", fn), ticking(0.0, 1.0)), node)
    assert ref == "r10"
    assert seen == [{"v": 1, "phx_ref": "r1"}, {"v": 5, "phx_ref": "r9"}]
    assert [type(s).__name__ for s in taken] == ["Call", "Call", "Pause", "Call", "Call"]


def test_an_update_that_keeps_losing_past_the_timeout_raises_ref_changed():
    core = PresenceCore(1, 1024, 2.0)

    def node(step: Step) -> Any:
        if isinstance(step, Pause):
            return None
        assert isinstance(step, Call)
        if isinstance(step.msg, GetMeta):
            return packed_meta({"phx_ref": "r"})
        return RefChanged("lost")

    steps = core.update((PID, "t", "k", dict), ticking(10.0, 11.0, 12.0))
    with pytest.raises(
        RefChanged, match=r"^update of 'k' on 't' kept losing races to other writers for 2 s$"
    ):
        drive(steps, node)


def test_an_update_function_that_is_an_async_def_is_settled_by_the_driver():
    core = PresenceCore(1, 1024, 5.0)

    async def fn(meta: dict[str, Any]) -> dict[str, Any]:
        return {"async": True}

    def node(step: Step) -> Any:
        if isinstance(step, Settle):
            return asyncio.run(settled(step.value))
        assert isinstance(step, Call)
        return packed_meta({"phx_ref": "r"}) if isinstance(step.msg, GetMeta) else "new"

    ref, taken = drive(core.update((PID, "t", "k", fn), ticking(0.0)), node)
    assert ref == "new"
    assert isinstance(taken[1], Settle)
    write = taken[2]
    assert isinstance(write, Call) and isinstance(write.msg, Update)
    assert codec.unpack(write.msg.meta) == {"async": True}


def test_an_error_the_node_sends_back_reaches_the_caller_through_the_steps():
    core = PresenceCore(1, 1024, 5.0)
    steps = core.update((PID, "t", "k", dict), ticking(0.0))
    with pytest.raises(whosthere.NotTracked):
        drive(steps, lambda step: whosthere.NotTracked("no"))


def test_track_many_batches_per_shard_and_puts_each_reply_in_its_place():
    core = PresenceCore(2, 1024, 5.0)
    entries = [(PID, f"t{i}", "k", {"i": i}) for i in range(2 * BATCH + 10)]
    on_shard = [core.shard_of(topic) for _, topic, _, _ in entries]

    def node(step: Step) -> Any:
        assert isinstance(step, Gather)
        replies = []
        for call in step.calls:
            assert isinstance(call.msg, TrackMany) and not call.batchable
            replies.append([f"ref:{item[2]}" for item in call.msg.entries])
        return replies

    refs, taken = drive(core.track_many(entries, False), node)
    assert refs == [f"ref:t{i}" for i in range(len(entries))]
    (gather,) = taken
    assert isinstance(gather, Gather)
    for shard in (0, 1):
        sizes = [len(c.msg.entries) for c in gather.calls if c.shard == shard]
        assert sum(sizes) == on_shard.count(shard) and max(sizes) <= BATCH


def test_track_many_errors_stay_in_place_or_raise_the_first_in_input_order():
    core = PresenceCore(1, 1024, 5.0)
    entries = [(PID, "t", f"k{i}", {}) for i in range(4)]

    def node(step: Step) -> Any:
        assert isinstance(step, Gather)
        return [["r0", ["AlreadyTracked", "k1 is tracked"], "r2", ["NotTracked", "no k3"]]]

    results, _ = drive(core.track_many(entries, True), node)
    assert results[0] == "r0" and results[2] == "r2"
    assert isinstance(results[1], whosthere.AlreadyTracked) and str(results[1]) == "k1 is tracked"
    assert isinstance(results[3], whosthere.NotTracked)
    with pytest.raises(whosthere.AlreadyTracked, match="k1"):
        drive(core.track_many(entries, False), node)


def test_a_track_many_batch_that_fails_whole_fails_each_of_its_entries():
    core = PresenceCore(2, 1024, 5.0)
    entries = [(PID, topic, "k", {}) for topic in ("a", "b", "c", "d", "e", "f")]
    failing = core.shard_of("a")
    down = NodeUnavailable("shard down")

    def node(step: Step) -> Any:
        assert isinstance(step, Gather)
        return [down if c.shard == failing else ["ok"] * len(c.msg.entries) for c in step.calls]

    results, _ = drive(core.track_many(entries, True), node)
    for (_, topic, _, _), result in zip(entries, results, strict=True):
        assert result is (down if core.shard_of(topic) == failing else result)
        assert result == "ok" or result is down


def test_track_many_checks_every_entry_before_sending_any():
    core = PresenceCore(2, 1024, 5.0)
    entries = [(PID, "t", "k", {}), (PID, "t", "k", "not a dict")]
    with pytest.raises(whosthere.InvalidMeta):
        drive(core.track_many(entries, False), lambda step: pytest.fail("sent"))


def test_list_unpacks_the_shards_reply_then_runs_fetch_unless_empty():
    core = PresenceCore(2, 1024, 5.0)
    listed = {"k": {"metas": [{"phx_ref": "r"}]}}
    calls: list[str] = []

    def fetch(topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        calls.append(topic)
        return {k: {**v, "fetched": True} for k, v in presences.items()}

    def node(step: Step) -> Any:
        assert step == Call(core.shard_of("room"), ListTopic("room"))
        return msgpack.packb(listed)

    result, _ = drive(core.list("room", fetch), node)
    assert result == {"k": {"metas": [{"phx_ref": "r"}], "fetched": True}}
    assert drive(core.list(whosthere.Channel(PID, "room"), None), node)[0] == listed
    empty, _ = drive(core.list("room", fetch), lambda step: msgpack.packb({}))
    assert empty == {} and calls == ["room"]


def test_list_through_an_async_fetch_takes_a_settle_step():
    core = PresenceCore(1, 1024, 5.0)

    async def fetch(topic: str, presences: dict[str, Any]) -> dict[str, Any]:
        return {"fetched": {}}

    def node(step: Step) -> Any:
        if isinstance(step, Settle):
            return asyncio.run(settled(step.value))
        return msgpack.packb({"k": {"metas": []}})

    result, taken = drive(core.list("t", fetch), node)
    assert result == {"fetched": {}} and isinstance(taken[-1], Settle)


def test_get_by_key_is_that_keys_entry_through_fetch_or_none():
    core = PresenceCore(2, 1024, 5.0)
    metas = [packed_meta({"phx_ref": "a"}), packed_meta({"phx_ref": "b"})]

    def node(step: Step) -> Any:
        assert step == Call(core.shard_of("t"), GetByKey("t", "7"), True)
        return metas

    entry, _ = drive(core.get_by_key("t", 7, None), node)
    assert entry == {"metas": [{"phx_ref": "a"}, {"phx_ref": "b"}]}
    fetched, _ = drive(core.get_by_key("t", 7, lambda t, p: {"7": {"n": 2}}), node)
    assert fetched == {"n": 2}
    assert drive(core.get_by_key("t", "k", None), lambda step: [])[0] is None


def test_untrack_goes_to_one_shard_or_for_a_whole_owner_to_every_shard():
    core = PresenceCore(3, 1024, 5.0)
    call = core.untrack((PID, "t", 5))
    assert call == Call(core.shard_of("t"), Untrack(PID, "t", "5"), True)
    _, (gather,) = drive(core.untrack_owner(PID), lambda step: [None, None, None])
    assert gather == Gather([Call(i, UntrackPid(PID), True) for i in range(3)])
    with pytest.raises(NodeUnavailable):
        drive(core.untrack_owner(PID), lambda step: [None, NodeUnavailable("down"), None])


def test_owners_closed_together_go_in_untrack_many_frames_to_every_shard():
    core = PresenceCore(2, 1024, 5.0)
    owners = list(range(1, 25_001))
    _, (gather,) = drive(core.untrack_owners(owners), lambda step: [None] * len(step.calls))
    assert isinstance(gather, Gather)
    assert [(c.shard, len(c.msg.pids)) for c in gather.calls] == [
        (0, 10_000),
        (1, 10_000),
        (0, 10_000),
        (1, 10_000),
        (0, 5_000),
        (1, 5_000),
    ]
    assert all(isinstance(c.msg, UntrackMany) for c in gather.calls)


def test_topics_are_every_shards_busiest_merged_most_first():
    core = PresenceCore(2, 1024, 5.0)

    def node(step: Step) -> Any:
        assert step == Gather([Call(0, ListTopics(3)), Call(1, ListTopics(3))])
        return [[["a", 5], ["b", 1]], [["c", 9], ["d", 2]]]

    assert drive(core.topics(3), node)[0] == [("c", 9), ("a", 5), ("d", 2)]


def test_the_fetchers_are_named_in_the_nodes_status():
    status = {"actors": [{"name": "shard.0", "pid": 1}, {"name": "fetcher.0", "pid": 2}]}
    assert fetchers_of(status) == [2]
