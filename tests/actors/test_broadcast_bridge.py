"""A peer's stream of broadcasts: delivered once and in order; a loss or a late frame told."""

from __future__ import annotations

from whosthere.actors.broadcast_bridge import Inbound


def receive(inbound, seq, sent_at, now, *, empty=False, epoch=7, sender="a"):
    v = inbound.receive(sender, epoch, seq, sent_at, empty=empty, now=now)
    return v.deliver, v.lost


def test_frames_in_order_are_delivered_once():
    inbound = Inbound(late_after=2.0)
    assert receive(inbound, 5, 0.0, 0.1) == (True, False)  # first contact, whatever its number
    assert receive(inbound, 6, 0.2, 0.3) == (True, False)
    assert receive(inbound, 6, 0.2, 0.3) == (False, False)  # again: delivered already
    assert receive(inbound, 6, 1.2, 1.3, empty=True) == (False, False)  # idle: nothing missed


def test_a_skipped_number_is_a_loss_seen_even_on_an_empty_frame():
    inbound = Inbound(late_after=2.0)
    receive(inbound, 1, 0.0, 0.1)
    assert receive(inbound, 3, 0.5, 0.6) == (True, True)  # 2 never came
    assert receive(inbound, 5, 1.5, 1.6, empty=True) == (False, True)  # 4 never came


def test_a_frame_held_through_a_netsplit_is_not_delivered_late():
    inbound = Inbound(late_after=2.0)
    receive(inbound, 1, 0.0, 0.1)  # the quickest delivery: 0.1 s
    assert receive(inbound, 2, 1.0, 5.0) == (False, True)  # 3.9 s later than the quickest
    assert receive(inbound, 3, 1.1, 5.0) == (False, False)  # late too: told once per run
    assert receive(inbound, 4, 5.0, 5.1) == (True, False)  # the stream goes on
    assert receive(inbound, 4, 6.0, 9.0, empty=True) == (False, False)  # late, nothing lost
    assert receive(inbound, 5, 6.1, 9.0) == (False, True)  # a new run of losses: told again


def test_a_restarted_sender_is_a_new_stream_told_as_a_loss_only_if_its_start_is_missed():
    inbound = Inbound(late_after=2.0)
    receive(inbound, 9, 0.0, 0.1)
    assert receive(inbound, 1, 1.0, 1.1, epoch=8) == (True, False)  # its first frame
    assert receive(inbound, 2, 1.2, 1.3, epoch=8) == (True, False)
    assert receive(inbound, 0, 2.0, 2.1, epoch=6, empty=True) == (False, False)  # idle since
    assert receive(inbound, 3, 3.0, 3.1, epoch=5) == (True, True)  # frames 1 and 2 missed
    assert receive(inbound, 1, 0.0, 0.1, sender="b") == (True, False)  # streams are per sender
