"""Messages over a frame, cut into fragments and put back together (no processes)."""

from __future__ import annotations

import pytest

from whosthere.errors import MalformedFrame, MessageTooLarge
from whosthere.tracker import wire
from whosthere.tracker.state import State
from whosthere.transport import codec, fragments
from whosthere.transport.messages import Fragment, Heartbeat, TransferAck


def big_snapshot(n: int) -> TransferAck:
    state = State(("a", 1))
    for i in range(n):
        state.join(1000 + i % 50, f"t{i % 7}", f"k{i}", codec.pack_meta({"i": i, "pad": "x" * 40}))
    snapshot = state.extract(("b", 1), {("a", 1): 0})
    return TransferAck(1, ["a", 1], None, wire.encode_snapshot(snapshot))


def test_a_small_message_is_one_frame_and_a_big_one_comes_back_whole():
    small = Heartbeat(["a", 1], None, [], 1.0)
    assert fragments.encode(small) == [codec.encode(small)]
    ack = big_snapshot(3000)
    frames = fragments.encode(ack, limit=16 * 1024)
    assert len(frames) > 10 and all(len(f) < 17 * 1024 for f in frames)
    r = fragments.Reassembler()
    results = [r.add("a", codec.decode(f), 0.0) for f in frames]
    assert results[:-1] == [None] * (len(frames) - 1)
    whole = results[-1]
    assert whole == codec.decode(codec.encode(ack))
    merged = State(("b", 1))
    merged.replica_up(("a", 1))
    merged.merge(wire.decode_snapshot(whole.snapshot))
    assert len(merged) == 3000 and r.pending == {} and r.lost == 0


def test_a_lost_piece_loses_that_message_only():
    r = fragments.Reassembler()
    first = [codec.decode(f) for f in fragments.encode(big_snapshot(500), limit=4096)]
    second = [codec.decode(f) for f in fragments.encode(big_snapshot(400), limit=4096)]
    for piece in first[:2] + first[3:]:  # piece 2 lost: the rest is ignored
        assert r.add("a", piece, 0.0) is None
    assert r.lost == 1
    for piece in second[:-1]:
        assert r.add("b", piece, 0.0) is None  # another sender, interleaved: its own message
        assert r.add("a", piece, 0.0) is None
    assert r.add("a", second[-1], 0.0).ref == 1 and r.add("b", second[-1], 0.0).ref == 1


def test_a_new_message_replaces_one_whose_end_was_lost():
    r = fragments.Reassembler()
    first = [codec.decode(f) for f in fragments.encode(big_snapshot(300), limit=4096)]
    second = [codec.decode(f) for f in fragments.encode(big_snapshot(200), limit=4096)]
    for piece in first[:-1]:
        r.add("a", piece, 0.0)
    results = [r.add("a", piece, 0.0) for piece in second]
    assert results[-1] is not None and r.lost == 1


def test_bad_pieces_are_refused_clearly_and_leave_nothing_behind():
    r = fragments.Reassembler(max_bytes=10_000, max_pieces=8)
    with pytest.raises(MalformedFrame, match="count"):
        r.add("a", Fragment(1, 0, 1, b"x"), 0.0)
    r.add("a", Fragment(2, 0, 5, b"x" * 6000), 0.0)
    with pytest.raises(MalformedFrame, match="over 10000"):
        r.add("a", Fragment(2, 1, 5, b"x" * 6000), 0.0)
    assert r.pending == {}
    inner = codec.encode(Fragment(3, 0, 2, b"yy"))
    r.add("a", Fragment(4, 0, 2, inner[:5]), 0.0)
    with pytest.raises(MalformedFrame, match="inside"):
        r.add("a", Fragment(4, 1, 2, inner[5:]), 0.0)
    r.add("a", Fragment(5, 0, 2, b"\xc1"), 0.0)  # not msgpack once whole
    with pytest.raises(MalformedFrame):
        r.add("a", Fragment(5, 1, 2, b"\xc1"), 0.0)


def test_partial_messages_are_bounded_in_age_in_total_size_and_in_pieces():
    r = fragments.Reassembler(max_bytes=10_000, max_pieces=8)
    with pytest.raises(MalformedFrame, match="count 9"):
        r.add("a", Fragment(1, 0, 9, b"x"), 0.0)
    r.add("a", Fragment(1, 0, 4, b"x" * 4000), 0.0)
    r.add("b", Fragment(2, 0, 4, b"x" * 4000), 1.0)
    r.add("c", Fragment(3, 0, 4, b"x" * 4000), 2.0)  # 12,000 held: the oldest (a's) goes
    assert sorted(r.pending) == ["b", "c"] and r.lost == 1
    r.add("c", Fragment(3, 1, 4, b"x" * 10), 30.0)  # c's last piece came at 30 s
    r.expire(61.5)  # b's last piece came 60.5 s ago
    assert sorted(r.pending) == ["c"] and r.lost == 2


def test_a_message_over_what_peers_accept_is_refused_before_it_is_sent(monkeypatch):
    monkeypatch.setattr(fragments, "MAX_MESSAGE_BYTES", 50_000)
    with pytest.raises(MessageTooLarge, match="TransferAck of"):
        fragments.encode(big_snapshot(3000), limit=16 * 1024)
