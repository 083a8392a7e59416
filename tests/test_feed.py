"""The shared feed without processes or sockets: one node subscription, many members.

Frames made by hand go in (as the SUB socket hands them over); what each member's `take`
returns or raises comes out. A member must see what a subscription of its own would."""

from __future__ import annotations

from typing import Any

import pytest

from whosthere.errors import MessagesLost, NodeUnavailable
from whosthere.feed import Feed, FeedMember, Handshake
from whosthere.sequencer import Message, Sequencer
from whosthere.transport import codec
from whosthere.transport.messages import MAILBOX_PREFIX, Mark, Published

MAILBOX = MAILBOX_PREFIX + "feed"


def pub(topic: str, seq: int, payload: Any = None, *, epoch: int = 1) -> list[bytes]:
    return [codec.topic_frame(topic), codec.encode(Published(epoch, seq, "n", payload))]


def mark(epoch: int, seqs: dict[str, int]) -> list[bytes]:
    return [codec.inbox_frame(MAILBOX), codec.encode(Mark(epoch, seqs))]


def new_feed() -> Feed:
    return Feed(Sequencer(MAILBOX, 100_000))


def join(feed: Feed, member: FeedMember, *topics: str, at: int = 0, epoch: int = 1) -> None:
    """`member` subscribes to `topics`, the actor confirming each at number `at`."""
    handshake = feed.join(member, topics, "token")
    assert handshake is not None
    feed.confirm(handshake, [epoch, [at] * len(handshake.topics)])


def drain(member: FeedMember) -> list[Any]:
    """Everything `member` can take now: payloads, and losses as ("lost", topic, missed)."""
    out: list[Any] = []
    while True:
        try:
            msg = member.take()
        except MessagesLost as lost:
            out.append(("lost", lost.topic, lost.missed))
            continue
        if msg is None:
            return out
        out.append(msg.payload)


def test_members_of_one_topic_each_get_every_message_and_are_woken():
    feed = new_feed()
    a, b = FeedMember(100), FeedMember(100)
    join(feed, a, "room")
    join(feed, b, "room")
    for n in (1, 2, 3):
        feed.receive(pub("room", n, n))
    assert set(feed.take_woken()) == {a, b}
    assert drain(a) == drain(b) == [1, 2, 3]
    assert feed.take_woken() == []


def test_a_second_member_gets_nothing_published_before_its_confirmation():
    feed = new_feed()
    a, b = FeedMember(100), FeedMember(100)
    join(feed, a, "room")
    handshake = feed.join(b, ["room"], "token")
    assert handshake is not None and handshake.new == {}  # the filter is there already
    feed.receive(pub("room", 1, "old"))  # queued for b while its subscribe is under way
    feed.confirm(handshake, [1, [2]])  # the actor had published 2 when b's token came
    feed.receive(pub("room", 2, "older still queued"))
    feed.receive(pub("room", 3, "new"))
    assert drain(a) == ["old", "older still queued", "new"]
    assert drain(b) == ["new"]


def test_messages_of_a_topic_being_subscribed_are_kept_until_the_confirmation():
    feed = new_feed()
    a = FeedMember(100)
    handshake = feed.join(a, ["room"], "token")
    assert handshake is not None and list(handshake.new.values()) == ["room"]
    feed.receive(pub("room", 5, "before"))  # published before the confirmation: dropped
    feed.receive(pub("room", 6, "after"))  # read by the feed before the reply came
    feed.confirm(handshake, [1, [5]])
    feed.receive(pub("room", 7, "later"))
    assert drain(a) == ["after", "later"]


def test_a_member_that_falls_behind_loses_what_does_not_fit_and_hears_it_in_place():
    feed = new_feed()
    slow, fast = FeedMember(3), FeedMember(100)
    join(feed, slow, "room")
    join(feed, fast, "room")
    for n in range(1, 7):
        feed.receive(pub("room", n, n))
    assert drain(slow) == [1, 2, 3, ("lost", "room", 3)]
    assert slow.missed == 3
    feed.receive(pub("room", 7, 7))
    assert drain(slow) == [7]
    assert drain(fast) == [1, 2, 3, 4, 5, 6, 7]


def test_a_loss_reaches_the_members_of_its_topics_with_their_own_counts():
    feed = new_feed()
    on_a, on_b, on_both = FeedMember(100), FeedMember(100), FeedMember(100)
    join(feed, on_a, "a")
    join(feed, on_b, "b")
    join(feed, on_both, "a", "b")
    feed.receive(pub("a", 1, "a1"))
    feed.receive(pub("a", 4, "a4"))  # 2 and 3 lost
    feed.receive(mark(1, {"b": 5}))  # b's 1..5 lost
    assert drain(on_a) == ["a1", ("lost", "a", 2), "a4"]
    assert drain(on_b) == [("lost", "b", 5)]
    assert drain(on_both) == ["a1", ("lost", "a", 2), "a4", ("lost", "b", 5)]


def test_a_restart_is_one_loss_for_every_member_and_numbers_start_again():
    feed = new_feed()
    a, b = FeedMember(100), FeedMember(100)
    join(feed, a, "room", at=10)
    join(feed, b, "hall", at=10)
    feed.receive(mark(2, {}))  # the restarted actor's first word: a new epoch
    feed.receive(pub("room", 1, "fresh", epoch=2))
    assert drain(a) == [("lost", "room", None), "fresh"]
    assert drain(b) == [("lost", "hall", None)]


def test_leaving_a_topic_skips_what_was_queued_and_the_last_member_frees_the_filter():
    feed = new_feed()
    a, b = FeedMember(100), FeedMember(100)
    join(feed, a, "room", "hall")
    join(feed, b, "room")
    feed.receive(pub("room", 1, "r1"))
    feed.receive(pub("hall", 1, "h1"))
    assert feed.leave(a, "room") == []  # b still takes it
    assert drain(a) == ["h1"]
    assert feed.leave(b) == [codec.topic_frame("room")]
    assert feed.leave(a) == [codec.topic_frame("hall")]
    feed.receive(pub("room", 2, "r2"))
    assert feed.take_woken() == []


def test_a_failed_subscribe_keeps_a_topic_another_member_is_subscribing():
    feed = new_feed()
    a, b = FeedMember(100), FeedMember(100)
    first = feed.join(a, ["room"], "t1")
    second = feed.join(b, ["room"], "t2")
    assert first is not None and second is not None
    assert feed.fail(first) == []  # b is still on it: the filter stays
    feed.receive(pub("room", 3, "kept"))
    feed.confirm(second, [1, [2]])
    assert drain(b) == ["kept"]
    assert drain(a) == []


def test_the_nodes_end_comes_after_what_was_queued_and_stays():
    feed = new_feed()
    a = FeedMember(100)
    join(feed, a, "room")
    feed.receive(pub("room", 1, "last"))
    feed.end(NodeUnavailable("gone"))
    assert a in feed.take_woken()
    assert a.take() == Message("room", "n", "last")
    for _ in range(2):
        with pytest.raises(NodeUnavailable):
            a.take()


def test_joining_with_nothing_new_needs_no_handshake():
    feed = new_feed()
    a = FeedMember(100)
    join(feed, a, "room")
    assert feed.join(a, ["room"], "token") is None
    handshake = feed.join(a, ["room", "hall", "hall"], "token")
    assert isinstance(handshake, Handshake) and handshake.topics == ["hall"]


def test_a_node_back_at_its_address_is_one_loss_held_until_clients_can_call_it():
    feed = new_feed()
    a = FeedMember(100)
    join(feed, a, "room", at=3)
    feed.interrupt(NodeUnavailable("gone"))
    with pytest.raises(NodeUnavailable):
        a.take()
    assert a.take() is None  # read on: nothing yet
    feed.receive(mark(2, {}))  # the new node's PubSub, before the client re-armed
    feed.receive(pub("room", 1, "new", epoch=2))
    assert a.take() is None  # held: a list now would still fail
    feed.resume()
    assert drain(a) == [("lost", "room", None), "new"]
    feed.receive(pub("room", 2, "next", epoch=2))
    assert drain(a) == ["next"]


def test_a_bad_topic_among_good_ones_joins_none_of_them():
    feed = new_feed()
    a = FeedMember(100)
    with pytest.raises(TypeError):
        feed.join(a, ["room", 5], "token")  # type: ignore[list-item]
    assert a.topics == {} and feed.by_topic == {}


def test_a_restart_seen_first_on_a_message_delivers_that_message():
    feed = new_feed()
    a = FeedMember(100)
    join(feed, a, "room", at=500)
    feed.receive(pub("room", 1, "first", epoch=2))  # the new actor's replay, before its mark
    feed.receive(pub("room", 2, "second", epoch=2))
    assert drain(a) == [("lost", "room", None), "first", "second"]


def test_concurrent_subscribes_to_a_new_topic_each_get_their_own_start():
    feed = new_feed()
    a, b = FeedMember(100), FeedMember(100)
    first = feed.join(a, ["room"], "t1")  # sets the filter
    second = feed.join(b, ["room"], "t2")
    assert first is not None and second is not None
    for n in (11, 12, 13):  # kept while the topic is pending
        feed.receive(pub("room", n, n))
    feed.confirm(second, [1, [12]])  # b's reply comes first: the topic is still a's to confirm
    feed.confirm(first, [1, [10]])
    assert drain(a) == [11, 12, 13]
    assert drain(b) == [13]


def test_a_reply_from_an_actor_already_replaced_does_not_turn_the_epoch_back():
    feed = new_feed()
    a, b = FeedMember(100), FeedMember(100)
    join(feed, a, "room", epoch=1)
    late = feed.join(b, ["hall"], "t")
    assert late is not None
    feed.receive(mark(2, {}))  # the new actor
    feed.confirm(late, [1, [40]])  # answered by the old one
    feed.receive(pub("hall", 1, "h", epoch=2))
    feed.receive(pub("room", 1, "r", epoch=2))
    assert drain(a) == [("lost", "room", None), "r"]
    assert drain(b) == ["h"]


def test_the_nodes_end_forgets_the_mark_asked_for():
    feed = new_feed()
    a = FeedMember(100)
    join(feed, a, "room")
    for n in range(1, 1001):
        feed.receive(pub("room", n, n))
    assert feed.drained(0.0) is not None  # a Sync after a long run
    assert feed.sequencer.awaiting_mark
    feed.interrupt(NodeUnavailable("gone"))
    assert not feed.sequencer.awaiting_mark  # no timer for a mark that cannot come


def test_closing_a_member_wakes_its_reader_with_an_error():
    woken: list[bool] = []
    a = FeedMember(100)
    a.wake = lambda: woken.append(True)
    a.close()
    assert woken == [True]
    with pytest.raises(NodeUnavailable, match="closed"):
        a.take()


def test_a_gap_before_a_members_subscribe_is_not_its_loss():
    feed = new_feed()
    a, b = FeedMember(100), FeedMember(100)
    join(feed, a, "room", at=0)
    join(feed, b, "room", at=3)  # b takes 4 on
    feed.receive(pub("room", 1, 1))
    feed.receive(pub("room", 5, 5))  # 2, 3 and 4 lost
    assert drain(a) == [1, ("lost", "room", 3), 5]
    assert drain(b) == [("lost", "room", 1), 5]  # only 4 was b's
    join(feed, b, "hall", at=9)
    feed.receive(mark(1, {"hall": 8}))  # nothing of b's: b takes 10 on
    assert drain(b) == []
