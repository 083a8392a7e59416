"""What a client holds for its own process, from the messages it sent (pure)."""

from __future__ import annotations

import os

from whosthere.errors import NodeUnavailable, NotTracked
from whosthere.own_presences import OwnPresences
from whosthere.transport.messages import Track, TrackMany, Untrack, UntrackMany, UntrackPid, Update
from whosthere.watch.identity import owner_of

ME = os.getpid()
TAB = owner_of(ME, 3)
OTHER = owner_of(ME + 1 if ME < 2**22 else ME - 1, 0)


def test_tracks_updates_and_untracks_of_this_process_are_held():
    book = OwnPresences()
    book.observe(Track(TAB, None, "room", "alice", b"m1"), "ref1")
    book.observe(Track(OTHER, None, "room", "bob", b"x"), "ref2")  # another process's
    book.observe(Update(TAB, "room", "alice", b"m2", None), "ref3")
    book.observe(
        TrackMany([[ME, None, "hall", "me", b"p"], [TAB, None, "gone", "a", b"g"]]),
        ["r", ["AlreadyTracked", "..."]],
    )
    assert book.held == {TAB: {("room", "alice"): b"m2"}, ME: {("hall", "me"): b"p"}}
    book.observe(Untrack(TAB, "room", "alice"), None)
    book.observe(UntrackPid(ME), None)
    assert book.held == {} and len(book) == 0


def test_tracking_again_is_one_track_many_per_shard():
    book = OwnPresences()
    for i in range(3):
        book.observe(Track(TAB, None, f"t{i}", "k", b"m"), "ref")
    calls = book.retrack(1)
    assert [type(c.msg) for c in calls] == [TrackMany]
    assert sorted(e[2] for e in calls[0].msg.entries) == ["t0", "t1", "t2"]


def test_an_untrack_the_gone_node_could_not_take_still_holds():
    book = OwnPresences()
    book.observe(Track(TAB, None, "room", "alice", b"m"), "ref")
    book.failed(UntrackMany([TAB]), NodeUnavailable("gone"))
    assert book.held == {}
    book.observe(Track(TAB, None, "room", "alice", b"m"), "ref")
    book.failed(Untrack(TAB, "room", "alice"), NotTracked("no"))  # the node said no: as it was
    assert len(book) == 1
