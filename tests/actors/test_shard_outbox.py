"""The shard's outbox: one frame per wake-up, the publish gap, the journal first."""

from __future__ import annotations

from typing import Any

from whosthere.actors.base import Timer
from whosthere.actors.shard_outbox import MAX_BYTES, ShardOutbox
from whosthere.topology import EXITS_TOPIC
from whosthere.tracker.state import Element
from whosthere.transport import codec


class FakePubSub:
    def __init__(self, log: list[str]) -> None:
        self.frames: list[Any] = []
        self.log = log

    def cast(self, msg: Any) -> None:
        self.log.append("send")
        self.frames.append(msg.items)


class Clock:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Timer]] = []

    def call_later(self, delay: float, callback: Any) -> Timer:
        timer = Timer(delay, callback)
        self.timers.append((delay, timer))
        return timer

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for _, timer in timers:
            if not timer.cancelled:
                timer.callback()


def make() -> tuple[ShardOutbox, FakePubSub, Clock, list[str]]:
    log: list[str] = []
    pubsub, clock = FakePubSub(log), Clock()
    outbox = ShardOutbox(pubsub, clock.call_later, lambda: log.append("journal"))  # type: ignore[arg-type]
    return outbox, pubsub, clock, log


def test_a_turns_diffs_go_in_one_frame_after_the_journal():
    outbox, pubsub, _, log = make()
    outbox.add("a", "presence_diff", b"1")
    outbox.add("b", "presence_diff", b"2")
    outbox.end_of_turn(now=100.0)  # long after the last send: at once
    assert pubsub.frames == [[["a", "presence_diff", b"1"], ["b", "presence_diff", b"2"]]]
    assert log == ["journal", "send"]
    outbox.end_of_turn(now=100.5)
    assert len(pubsub.frames) == 1  # nothing new: nothing sent


def test_diffs_right_after_a_send_wait_out_the_gap_and_go_together():
    outbox, pubsub, clock, _ = make()
    outbox.add("a", "presence_diff", b"1")
    outbox.end_of_turn(now=100.0)
    outbox.sent_at = 100.0
    outbox.add("a", "presence_diff", b"2")
    outbox.end_of_turn(now=100.0002)
    outbox.add("a", "presence_diff", b"3")
    outbox.end_of_turn(now=100.0004)  # the timer is set already: no second one
    assert len(pubsub.frames) == 1 and len(clock.timers) == 1
    assert abs(clock.timers[0][0] - 0.0008) < 1e-9
    clock.fire()
    outbox.end_of_turn(now=100.002)  # the turn the timer ran in ends: both go
    assert [len(f) for f in pubsub.frames] == [1, 2]


def test_a_large_outbox_goes_before_the_turn_ends():
    outbox, pubsub, _, _ = make()
    outbox.add("a", "presence_diff", b"x" * (MAX_BYTES + 1))
    assert len(pubsub.frames) == 1 and outbox.items == []


def test_send_cancels_a_waiting_gap():
    outbox, pubsub, clock, _ = make()
    outbox.sent_at = 100.0
    outbox.add("a", "presence_diff", b"1")
    outbox.end_of_turn(now=100.0001)
    outbox.send()  # the shard stops
    assert len(pubsub.frames) == 1 and clock.timers[0][1].cancelled


def test_an_exit_notice_names_the_process_and_its_topics():
    outbox, pubsub, _, _ = make()
    left = [Element(f"t{i:02}", 7, "k", b"", i) for i in range(30)] + [
        Element("t00", 7, "j", b"", 99)
    ]
    outbox.add_exit(7, left, seen_at=1.5, left_at=2.0)
    outbox.send()
    ((topic, event, payload),) = pubsub.frames[0]
    told = codec.unpack(payload)
    assert (topic, event) == (EXITS_TOPIC, "exit")
    assert told["pid"] == 7 and told["presences"] == 31
    assert told["topics"] == [f"t{i:02}" for i in range(20)]  # at most 20, sorted
    assert told["seen_at"] == 1.5 and told["left_at"] == 2.0


def test_an_exits_leaves_wait_for_no_gap_even_one_already_waiting():
    """An owner killed right after its join's diff went out: its leave goes at the end of
    this wake-up, with whatever waited for the gap, not a millisecond later."""
    outbox, pubsub, clock, _ = make()
    outbox.sent_at = 100.0
    outbox.add("a", "presence_diff", b"join")
    outbox.end_of_turn(now=100.0001)  # waits out the gap
    assert pubsub.frames == [] and len(clock.timers) == 1
    outbox.add("a", "presence_diff", b"leave")
    outbox.add_exit(7, [Element("a", 7, "k", b"", 1)], seen_at=1.0, left_at=1.0)
    outbox.end_of_turn(now=100.0002)
    assert [[item[0] for item in frame] for frame in pubsub.frames] == [["a", "a", EXITS_TOPIC]]
    assert clock.timers[0][1].cancelled and not outbox.urgent
    outbox.sent_at = 100.0002
    outbox.add("a", "presence_diff", b"later")
    outbox.end_of_turn(now=100.0003)  # a plain diff waits for the gap again
    assert len(pubsub.frames) == 1
