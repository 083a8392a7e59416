"""The subscription sequencer without processes or sockets: frames made by hand go in,
`Message`, `MessagesLost` or nothing come out; time is an argument."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whosthere.errors import MalformedFrame, MessagesLost
from whosthere.sequencer import SYNC_RETRY, Message, Sequencer
from whosthere.transport import codec
from whosthere.transport.messages import MAILBOX_PREFIX, Mark, Published, Sync

MAILBOX = MAILBOX_PREFIX + "test"


def pub(topic: str, seq: int, payload: Any = None, *, epoch: int = 1) -> list[bytes]:
    """What the PubSub actor publishes on `topic`: its frame, then the numbered message."""
    return [codec.topic_frame(topic), codec.encode(Published(epoch, seq, "n", payload))]


def mark(epoch: int, seqs: dict[str, int] | None = None) -> list[bytes]:
    """A `Mark` on the subscription's lifelong inbox."""
    return [codec.inbox_frame(MAILBOX), codec.encode(Mark(epoch, seqs or {}))]


def subscribed(*topics: str, epoch: int = 1, at: int = 0, hwm: int = 1_000) -> Sequencer:
    """A sequencer whose `topics` the actor confirmed in `epoch`, each numbered `at` so far."""
    seq = Sequencer(MAILBOX, hwm)
    confirm(seq, topics, epoch=epoch, at=at)
    return seq


def confirm(seq: Sequencer, topics: tuple[str, ...], *, epoch: int = 1, at: int = 0) -> None:
    frames = seq.new_frames(topics)
    seq.subscribed(frames, [epoch, [at] * len(frames)])


def lost(topic: str, missed: int | None, reason: str) -> tuple[str, int | None, str]:
    return (topic, missed, reason)


def as_tuple(error: object) -> tuple[str, int | None, str]:
    assert isinstance(error, MessagesLost), error
    return (error.topic, error.missed, error.reason)


BEHIND = "the subscriber fell behind"
RESTARTED = "the PubSub actor restarted"


def test_messages_in_order_come_out_as_they_went_in():
    seq = subscribed("room")
    assert [seq.receive(pub("room", n, n)) for n in (1, 2, 3)] == [
        Message("room", "n", 1),
        Message("room", "n", 2),
        Message("room", "n", 3),
    ]
    assert seq.missed == 0 and seq.topics == ["room"]


def test_a_gap_is_reported_once_then_the_message_after_it_is_held():
    seq = subscribed("room")
    assert seq.receive(pub("room", 1)) == Message("room", "n", None)
    assert as_tuple(seq.receive(pub("room", 4, "four"))) == lost("room", 2, BEHIND)
    assert seq.take_held() == Message("room", "n", "four")
    assert seq.take_held() is None
    assert seq.receive(pub("room", 5)) == Message("room", "n", None)
    assert seq.missed == 2


def test_a_number_seen_before_is_skipped():
    seq = subscribed("room")
    assert seq.receive(pub("room", 1, "a")) is not None
    assert seq.receive(pub("room", 2, "b")) == Message("room", "n", "b")
    assert seq.receive(pub("room", 2, "b")) is None
    assert seq.receive(pub("room", 1, "a")) is None
    assert seq.receive(pub("room", 3, "c")) == Message("room", "n", "c")
    assert seq.missed == 0


def test_replays_of_what_was_published_before_the_subscription_are_skipped():
    seq = subscribed("room", at=5)  # the topic had reached 5 when the actor confirmed
    assert [seq.receive(pub("room", n)) for n in (3, 4, 5)] == [None, None, None]
    assert seq.receive(pub("room", 6, "new")) == Message("room", "n", "new")
    assert seq.missed == 0


def test_an_epoch_change_by_message_is_a_restart_and_old_stragglers_are_skipped():
    seq = subscribed("room")
    assert seq.receive(pub("room", 1)) is not None
    got = seq.receive(pub("room", 1, "first of 2", epoch=2))
    assert as_tuple(got) == lost("room", None, RESTARTED)
    assert seq.take_held() == Message("room", "n", "first of 2")
    assert seq.receive(pub("room", 2, "late", epoch=1)) is None  # queued before the restart
    assert seq.receive(pub("room", 2, "second of 2", epoch=2)) == Message(
        "room", "n", "second of 2"
    )
    assert seq.missed == 0  # a restart loses an unknown number: not counted


def test_an_epoch_change_by_mark_is_reported_for_every_topic_as_one():
    seq = subscribed("a", "b")
    assert as_tuple(seq.receive(mark(2))) == lost("*", None, RESTARTED)
    assert seq.take_held() is None  # a mark carries no message
    assert seq.receive(pub("a", 7, "any number starts the new epoch", epoch=2)) is not None
    assert seq.receive(pub("b", 1, epoch=1)) is None  # a straggler of the old epoch
    assert seq.receive(mark(1)) is None  # an old epoch's mark too
    assert seq.receive(pub("b", 3, epoch=2)) == Message("b", "n", None)


def test_a_restart_seen_while_subscribing_more_is_reported_by_the_next_read():
    seq = subscribed("a")
    assert seq.take_restart() is None
    confirm(seq, ("b",), epoch=2, at=4)
    assert as_tuple(seq.take_restart()) == lost("*", None, RESTARTED)
    assert seq.take_restart() is None  # once
    assert seq.receive(pub("a", 1, epoch=1)) is None
    assert seq.receive(pub("b", 5, epoch=2)) == Message("b", "n", None)
    assert seq.receive(pub("a", 1, epoch=2)) == Message("a", "n", None)


def test_the_first_subscribe_and_the_first_mark_are_no_restart():
    seq = Sequencer(MAILBOX, 1_000)
    assert seq.receive(mark(3)) is None  # the actor greets a new inbox: its epoch, no seqs
    confirm(seq, ("a",), epoch=3)
    assert seq.take_restart() is None
    fresh = Sequencer(MAILBOX, 1_000)
    confirm(fresh, ("a",), epoch=3)
    assert fresh.take_restart() is None


def test_a_mark_naming_numbers_not_seen_reports_them_dropped():
    seq = subscribed("room")
    for n in (1, 2, 3):
        assert seq.receive(pub("room", n)) is not None
    assert as_tuple(seq.receive(mark(1, {"room": 7}))) == lost("room", 4, BEHIND)
    assert seq.missed == 4
    assert seq.receive(pub("room", 5)) is None  # counted lost: not delivered late
    assert seq.receive(pub("room", 8, "next")) == Message("room", "n", "next")
    assert seq.receive(mark(1, {"room": 8})) is None  # all seen: no loss


def test_a_mark_naming_drops_on_several_topics_reports_them_together():
    seq = subscribed("a", "b", "c")
    assert seq.receive(pub("a", 1)) is not None
    got = seq.receive(mark(1, {"a": 3, "b": 2, "c": 0, "unknown": 9}))
    assert as_tuple(got) == lost("*", 4, BEHIND)  # a: 2, 3; b: 1, 2; c: nothing yet
    assert seq.receive(pub("b", 3)) == Message("b", "n", None)


def test_a_mark_is_asked_for_after_a_long_run_and_again_if_it_goes_missing():
    seq = subscribed("a", "b", hwm=10)  # a Sync after every hwm/2 = 5 messages read
    for n in range(1, 5):
        assert seq.receive(pub("a", n)) is not None
    assert seq.drained(now=100.0) is None and not seq.awaiting_mark
    assert seq.receive(pub("a", 5)) is not None
    assert seq.drained(now=100.0) == Sync(MAILBOX, ["a", "b"])
    assert seq.awaiting_mark
    assert seq.drained(now=100.0 + SYNC_RETRY / 2) is None
    assert seq.drained(now=100.0 + SYNC_RETRY) == Sync(MAILBOX, ["a", "b"])  # went missing
    assert seq.receive(mark(1, {"a": 5, "b": 0})) is None
    assert not seq.awaiting_mark
    assert seq.drained(now=200.0) is None


def test_a_subscription_of_no_topic_asks_for_no_mark():
    seq = Sequencer(MAILBOX, 2)
    assert seq.drained(now=0.0) is None


def test_an_unsubscribed_topic_with_messages_still_queued_is_skipped():
    seq = subscribed("a", "b")
    assert seq.receive(pub("a", 1)) is not None
    assert seq.unsubscribe("a") == codec.topic_frame("a")
    assert seq.unsubscribe("a") is None  # not subscribed any more
    assert seq.receive(pub("a", 2)) is None
    assert seq.receive(pub("a", 9)) is None  # nor a gap on it
    assert seq.receive(pub("b", 1)) == Message("b", "n", None)
    assert seq.topics == ["b"]
    assert seq.receive(mark(1, {"a": 9})) is None


def test_new_frames_are_the_topics_not_subscribed_yet_each_once():
    seq = subscribed("a")
    not_a_str: list[Any] = [1]
    assert seq.new_frames(["a", "b", "b", "c"]) == {
        codec.topic_frame("b"): "b",
        codec.topic_frame("c"): "c",
    }
    with pytest.raises(TypeError, match="^topic must be a str, got int$"):
        seq.new_frames(not_a_str)
    with pytest.raises(ValueError, match="over the"):
        seq.new_frames(["x" * (codec.MAX_NAME_BYTES + 1)])


def test_a_malformed_frame_raises_and_changes_nothing():
    seq = subscribed("room")
    with pytest.raises(MalformedFrame):
        seq.receive([codec.topic_frame("room"), b"\xc1 not msgpack"])
    with pytest.raises(MalformedFrame):
        seq.receive([codec.inbox_frame(MAILBOX), b"\xc1"])
    assert seq.receive([codec.topic_frame("room")]) is None  # not two frames
    assert seq.receive([codec.topic_frame("room"), codec.encode(Mark(1, {}))]) is None
    assert seq.receive(pub("room", 1)) == Message("room", "n", None)
    assert seq.missed == 0


@given(st.lists(st.integers(1, 200), unique=True, max_size=60).map(sorted))
def test_any_pattern_of_drops_is_told_exactly_once(arrived: list[int]):
    """Of the messages numbered 1..N, the subscriber receives `arrived` (in order): it gets
    each of them, and the losses it is told of add up to every number it never got."""
    seq = subscribed("t")
    got, told = [], 0
    for n in arrived:
        out = seq.receive(pub("t", n, n))
        if isinstance(out, MessagesLost):
            assert out.missed is not None
            told += out.missed
            out = seq.take_held()
        assert isinstance(out, Message)
        got.append(out.payload)
    last = max(arrived, default=0)
    out = seq.receive(mark(1, {"t": last + 3}))  # three more dropped at the tail
    tail = 0 if out is None else out.missed
    assert got == arrived
    assert told + (tail or 0) == seq.missed == last + 3 - len(arrived)
