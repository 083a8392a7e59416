"""Replication bookkeeping without processes: time is an argument, messages come back."""

from __future__ import annotations

import itertools

from whosthere.tracker import wire
from whosthere.tracker.options import TrackerOptions
from whosthere.tracker.replication import Replication
from whosthere.tracker.state import State
from whosthere.transport.messages import GoodbyeAck, Heartbeat, TransferReq

OPTS = TrackerOptions(
    broadcast_period=1.0,
    down_period=5.0,
    permdown_period=20.0,
    max_silent_periods=3,
    clock_sample_periods=2,
)


def replica(name: str, vsn: int = 1) -> Replication:
    return Replication(State((name, vsn)), OPTS)


def heartbeat(r: Replication, with_delta: bool = False, sent_at: float | None = None) -> Heartbeat:
    delta = wire.encode_delta(r.state.take_delta()) if with_delta else None
    return Heartbeat(r.me, delta, wire.encode_clock(r.state.clocks()), sent_at)


def beats(outs) -> list:
    return [m for to, m in outs if isinstance(m, Heartbeat)]


def test_a_new_peer_hears_from_us_at_the_next_tick():
    a, b, c = replica("a"), replica("b"), replica("c")
    a.on_heartbeat(heartbeat(c), 0.0)
    assert beats(a.tick(0.5)[0])  # the first tick announces
    assert not beats(a.tick(1.0)[0])  # then silent: nothing changed
    a.on_heartbeat(heartbeat(c), 1.2)
    a.on_heartbeat(heartbeat(b), 1.5)
    assert beats(a.tick(2.0)[0]), "a newcomer must learn of this replica without waiting"


def test_down_then_permdown_by_silence_and_back_up():
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "bob", b"\x80")
    a.on_heartbeat(heartbeat(b, with_delta=True), 0.0)
    assert [e.key for e in a.state.list("t")] == ["bob"]
    assert a.tick(5.5)[1][1][0].key == "bob"  # down: bob leaves, kept
    assert a.status(5.5)["b"]["status"] == "down"
    joins, _ = a.on_heartbeat(heartbeat(b), 6.0)  # back with the same vsn
    assert [e.key for e in joins] == ["bob"]
    _, (_, leaves) = a.tick(30.0)  # silent past permdown: down and forgotten
    assert [e.key for e in leaves] == ["bob"] and a.peers == {} and len(a.state) == 0


def test_a_new_vsn_replaces_the_old_incarnation_and_a_late_old_one_is_ignored():
    a, old, new = replica("a"), replica("b", 1), replica("b", 2)
    old.state.join(1, "t", "old", b"\x80")
    a.on_heartbeat(heartbeat(old, with_delta=True), 0.0)
    joins, leaves = a.on_heartbeat(heartbeat(new), 1.0)
    assert [e.key for e in leaves] == ["old"] and joins == []
    assert a.on_heartbeat(heartbeat(old), 1.1) == ([], [])  # late: ignored
    assert a.peers["b"].vsn == 2


def test_a_peer_clock_naming_an_unknown_replica_does_not_make_transfers_for_ever():
    a, b = replica("a"), replica("b")
    b.state.replica_up(("c", 1))  # b knows c, a never will (partition)
    b.state.context[("c", 1)] = 7
    a.on_heartbeat(heartbeat(b), 0.0)
    requests = [m for t in range(6) for _, m in a.tick(float(t))[0] if isinstance(m, TransferReq)]
    assert requests == []


def test_a_goodbye_is_acknowledged_every_time_and_drops_the_replica_once():
    a, b, c = replica("a"), replica("b"), replica("c")
    b.state.join(1, "t", "bob", b"\x80")
    a.on_heartbeat(heartbeat(b, with_delta=True), 0.0)
    a.on_heartbeat(heartbeat(c), 0.0)
    (to, goodbye), waiting = b.goodbye()
    assert to == "*" and waiting == set()  # b heard from nobody: no one to wait for
    outs, (_, leaves) = a.on_graceful_permdown(goodbye, 0.5)
    assert outs == [("b", GoodbyeAck(a.me))] and [e.key for e in leaves] == ["bob"]
    assert list(a.peers) == ["c"]
    outs, diff = a.on_graceful_permdown(goodbye, 0.6)  # repeated (its ack was lost): ack again
    assert outs == [("b", GoodbyeAck(a.me))] and diff == ([], [])
    b.on_heartbeat(heartbeat(a), 1.0)
    assert b.goodbye()[1] == {"a"}


def test_a_late_heartbeat_of_a_replica_that_said_goodbye_never_brings_it_back():
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "bob", b"\x80")
    late = heartbeat(b, with_delta=True)
    a.on_heartbeat(late, 0.0)
    (_, goodbye), _ = b.goodbye()
    _, (_, leaves) = a.on_graceful_permdown(goodbye, 1.0)
    assert [e.key for e in leaves] == ["bob"]
    assert a.on_heartbeat(late, 1.1) == ([], [])  # sent before the goodbye, came after
    assert a.peers == {} and a.state.list("t") == []
    a.on_heartbeat(heartbeat(replica("b", 2)), 2.0)  # b restarted: a new vsn, welcome
    assert list(a.peers) == ["b"]
    a.tick(1.0 + OPTS.permdown_period + 1)  # remembered as long as a silent one would be
    assert a.departed == {}


def test_a_goodbye_from_a_peer_down_here_leaves_nothing_twice():
    """Its presences left when it went down; the goodbye only forgets it, whether it is
    down or catching up (heard again, not shown yet)."""
    for catching_up in (False, True):
        a, b = replica("a"), replica("b")
        b.state.join(1, "t", "bob", b"\x80")
        a.on_heartbeat(heartbeat(b, with_delta=True), 0.0)
        _, (_, leaves) = a.tick(5.5)
        assert [e.key for e in leaves] == ["bob"]  # down: left once
        if catching_up:
            b.state.join(1, "t", "new", b"\x80")
            b.state.take_delta()  # lost: a is behind b
            assert a.on_heartbeat(heartbeat(b), 6.0) == ([], [])
            assert a.status(6.0)["b"]["status"] == "catching up"
        (_, goodbye), _ = b.goodbye()
        outs, diff = a.on_graceful_permdown(goodbye, 6.5)
        assert outs == [("b", GoodbyeAck(a.me))] and diff == ([], [])
        assert a.peers == {} and len(a.state) == 0


def test_a_peer_back_from_down_is_shown_once_caught_up_without_flicker():
    """While b was down here it removed "goes" and added "new": a must not show "goes"
    again (upstream: it joins, then leaves once the transfer is merged)."""
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "stays", b"\x80")
    b.state.join(1, "t", "goes", b"\x80")
    a.on_heartbeat(heartbeat(b, with_delta=True), 0.0)
    b.on_heartbeat(heartbeat(a), 0.0)
    _, (_, leaves) = a.tick(5.5)  # silent: down
    assert sorted(e.key for e in leaves) == ["goes", "stays"]
    b.state.leave(1, "t", "goes")
    b.state.join(1, "t", "new", b"\x80")
    b.state.take_delta()  # its heartbeats during the split were lost
    assert a.on_heartbeat(heartbeat(b), 6.0) == ([], [])  # back, but behind: not shown yet
    assert a.status(6.0)["b"]["status"] == "catching up"
    requests = [m for to, m in a.tick(6.5)[0] if isinstance(m, TransferReq) and to == "b"]
    assert len(requests) == 1  # asked at once, naming b's replica though it is down here
    ((_to, ack),) = b.on_transfer_req(requests[0])
    joins, leaves = a.on_transfer_ack(ack, 6.6)
    assert sorted(e.key for e in joins) == ["new", "stays"] and leaves == []
    assert a.status(6.6)["b"]["status"] == "up"


def test_a_peer_that_cannot_be_caught_up_with_is_shown_after_down_period():
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "bob", b"\x80")
    a.on_heartbeat(heartbeat(b, with_delta=True), 0.0)
    a.tick(5.5)  # down
    b.state.join(1, "t", "new", b"\x80")
    b.state.take_delta()  # lost, and every transfer will be too
    assert a.on_heartbeat(heartbeat(b), 6.0) == ([], [])
    assert a.on_heartbeat(heartbeat(b), 9.0) == ([], [])
    joins, _ = a.on_heartbeat(heartbeat(b), 11.5)  # down_period (5 s) of trying: shown
    assert [e.key for e in joins] == ["bob"]


def test_one_transfer_at_a_time_is_asked_of_a_peer():
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "bob", b"\x80")
    b.state.take_delta()  # lost: a is behind and will ask
    requests = []
    for t in range(20):
        a.on_heartbeat(heartbeat(b), t * 0.5)  # b keeps saying it is ahead
        if t == 15:
            a.transfer_progress("b", t * 0.5)  # a piece of a big answer came: wait on
        requests += [(t, m) for _, m in a.tick(t * 0.5)[0] if isinstance(m, TransferReq)]
    # sampled every 2 ticks (1 s); asked once b looked ahead at two samples in a row; asked
    # again only after 8 s of no answer (nor progress)
    assert [t for t, _ in requests] == [3]
    late, last = requests[0][1], None
    for t in range(20, 40):
        a.on_heartbeat(heartbeat(b), t * 0.5)
        for _, m in a.tick(t * 0.5)[0]:
            if isinstance(m, TransferReq):
                last = (t, m)
    assert last is not None and last[0] == 31  # 8 s after the progress at 7.5 s
    ((_, stale),) = b.on_transfer_req(late)
    a.on_transfer_ack(stale, 16.0)  # an answer to the older request: the gate stays
    assert a.asked["b"][0] == last[1].ref
    ((_, ack),) = b.on_transfer_req(last[1])
    a.on_transfer_ack(ack, 16.1)
    assert a.asked == {} and [e.key for e in a.state.list("t")] == ["bob"]


def test_pieces_of_other_messages_do_not_keep_a_lost_request_waiting_for_ever():
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "bob", b"\x80")
    b.state.take_delta()
    asked = []
    for t in range(200):
        a.on_heartbeat(heartbeat(b), t * 0.5)
        a.transfer_progress("b", t * 0.5)  # big heartbeats keep coming, the answer never
        asked += [t * 0.5 for _, m in a.tick(t * 0.5)[0] if isinstance(m, TransferReq)]
    assert asked[:2] == [1.5, 81.5]  # asked again after 10 transfer timeouts (8 s each)


def test_a_lost_answer_is_asked_again_without_waiting_for_the_peers_next_heartbeat():
    """b showed it is ahead, a asked, and the answer was lost; b's heartbeats since were
    lost too (a heard only other messages of b's): a asks again once the wait is over."""
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "bob", b"\x80")
    b.state.take_delta()  # lost
    a.on_heartbeat(heartbeat(b), 0.0)
    a.on_heartbeat(heartbeat(b), 0.5)
    asked = []
    for t in range(1, 14):
        a.heard("b", t - 0.5)  # b is up, its clock unchanged
        asked += [t for _, m in a.tick(float(t))[0] if isinstance(m, TransferReq)]
    # sampled at 2, 4, 6...: ahead at 2 and still at 4, asked; no answer within the 8 s
    # transfer timeout, asked again at the first sample after it
    assert asked == [4, 12]


def test_any_message_of_an_up_peer_keeps_it_up_not_only_heartbeats():
    a, b = replica("a"), replica("b")
    a.on_heartbeat(heartbeat(b, sent_at=0.0), 0.0)
    t = 0.0
    while t < 3 * OPTS.down_period:  # b sends pieces of a big transfer, and asks, for long
        t += 1.0
        a.transfer_progress("b", t)
        a.on_transfer_req(TransferReq(1, b.me, wire.encode_clock(b.state.clocks())), t)
        a.tick(t)
    assert a.status(t)["b"]["status"] == "up"
    a.tick(t + OPTS.down_period + 1)  # and then silence: down
    assert a.status(t + OPTS.down_period + 1)["b"]["status"] == "down"


def test_a_dead_peers_late_heartbeats_never_bring_it_back():
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "bob", b"\x80")
    a.on_heartbeat(heartbeat(b, True, sent_at=100.0), 0.5)  # b's clock runs 99.5 s ahead
    a.tick(1.0)
    assert a.tick(7.0)[1][1], "b down after down_period: its presence leaves"
    # b died at about 6.0 (its time 105.5); the network now delivers what it sent before
    for sent in (104.0, 105.0, 105.4):
        joins, _ = a.on_heartbeat(heartbeat(b, sent_at=sent), 8.0)
        assert joins == [] and a.status(8.0)["b"]["status"] == "down"
    # a live peer proves it: a heartbeat sent after a first heard it again brings it back
    c = replica("c")
    c.state.join(2, "t", "carol", b"\x80")
    a.on_heartbeat(heartbeat(c, True, sent_at=0.0), 0.5)
    a.tick(7.5)
    assert a.status(7.5)["c"]["status"] == "down"
    assert a.on_heartbeat(heartbeat(c, sent_at=7.9), 8.0) == ([], [])  # heard again
    joins, _ = a.on_heartbeat(heartbeat(c, sent_at=8.2), 8.3)  # sent after: alive
    assert [e.key for e in joins] == ["carol"] and a.status(8.3)["c"]["status"] == "up"


def test_an_idle_replica_speaks_within_two_thirds_of_down_period():
    opts = TrackerOptions(broadcast_period=0.2, down_period=2.0, max_silent_periods=10)
    a = Replication(State(("a", 1)), opts)
    a.on_heartbeat(heartbeat(replica("b")), 0.0)
    sent = [t / 10 for t in range(2, 100, 2) if beats(a.tick(t / 10)[0])]
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert gaps and max(gaps) <= 2.0 * 2 / 3 + 1e-9  # not every 11 x 0.2 s > down_period
    assert Replication(State(("c", 1)), TrackerOptions()).max_silent == 10  # Phoenix's default


def test_a_peer_is_silent_only_up_to_what_this_shard_has_read():
    """A shard busy for longer than down_period has the peer's heartbeats unread in its own
    queue: they count once read, and the silence is measured up to what has been read."""
    a, b = replica("a"), replica("b")
    a.on_heartbeat(heartbeat(b), 0.0)
    a.tick(9.0, read_until=3.0)  # a's queue was last seen empty at 3.0
    assert a.status(9.0)["b"]["status"] == "up" and not a.events["down"]
    a.tick(9.5, read_until=9.4)  # read up to 9.4 and still nothing from b: it is down
    assert a.status(9.5)["b"]["status"] == "down" and a.events["down"] == 1


def test_no_transfer_is_asked_for_while_a_merge_is_under_way():
    """Mid-merge, this replica's clocks lag behind what it has received: a peer would look
    ahead of it and be asked for a transfer it does not need."""
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "bob", b"\x80")
    b.state.take_delta()  # lost: a is behind b
    a.on_heartbeat(heartbeat(b), 0.0)
    asked = [
        m for t in (1.0, 2.0, 3.0) for _, m in a.tick(t, busy=True)[0] if isinstance(m, TransferReq)
    ]
    assert asked == []
    asked = []
    for t in (4.0, 5.0, 6.0, 7.0):
        a.on_heartbeat(heartbeat(b), t - 0.5)
        asked += [t for _, m in a.tick(t)[0] if isinstance(m, TransferReq)]
    assert asked == [6.0], "asked once idle, at the second sample that finds b ahead"


def test_changes_on_their_way_are_not_asked_for():
    """b's clock shows a change its heartbeat has not brought yet (it comes a moment
    later, as in a burst): no transfer; a change lost is asked for a sample later."""
    a, b = replica("a"), replica("b")
    a.on_heartbeat(heartbeat(b), 0.0)
    b.state.join(1, "t", "bob", b"\x80")
    on_its_way = b.state.take_delta()
    a.on_heartbeat(heartbeat(b), 0.5)  # the clock came first
    assert not [m for _, m in a.tick(1.0)[0] if isinstance(m, TransferReq)]
    a.on_heartbeat(Heartbeat(b.me, wire.encode_delta(on_its_way), heartbeat(b).clocks, None), 1.5)
    asked = []
    for t in range(2, 8):
        a.on_heartbeat(heartbeat(b), t - 0.5)
        asked += [t for _, m in a.tick(float(t))[0] if isinstance(m, TransferReq)]
    assert asked == [] and [e.key for e in a.state.list("t")] == ["bob"]
    b.state.join(1, "t", "carol", b"\x80")
    b.state.take_delta()  # lost
    requests = []
    for t in range(8, 14):
        a.on_heartbeat(heartbeat(b), t - 0.5)
        requests += [t for _, m in a.tick(float(t))[0] if isinstance(m, TransferReq)]
    assert requests[:1] == [10]  # at the second sample that finds it missing


def test_a_heartbeat_merged_in_parts_adds_up_to_one_merged_at_once():
    a, whole, b = replica("a"), replica("a"), replica("b")
    for i in range(5_000):
        b.state.join(1, f"t{i % 7}", f"k{i}", b"\x80")
    beat = heartbeat(b, with_delta=True)
    joins, _ = whole.on_heartbeat(beat, 0.0)
    parts = list(a.heartbeat_parts(beat, 0.0))
    assert len(parts) > 2
    assert sum(len(j) for j, _ in parts) == len(joins) == 5_000
    assert a.state.context == whole.state.context and len(a.state) == len(whole.state)


def test_a_whole_state_is_not_sent_again_while_the_last_may_be_on_its_way():
    """Building and sending a big shard's whole state takes a while; the peer's repeated
    request, which waited behind it, must not make it twice."""
    a, b = replica("a"), replica("b")
    b.state.join(1, "t", "bob", b"\x80")
    b.state.take_delta()
    a.on_heartbeat(heartbeat(b), 0.0)
    b.on_heartbeat(heartbeat(a), 0.0)
    ask = TransferReq(1, a.me, wire.encode_clock({a.state.replica: 0, b.state.replica: 0}))
    assert b.on_transfer_req(ask, 1.0)  # the whole state (no generation covers it)
    assert b.on_transfer_req(ask._replace(ref=2), 2.0) == []  # sent 1 s ago: on its way
    assert b.on_transfer_req(ask._replace(ref=3), 9.5)  # a transfer timeout later: again
    assert b.events["sent_whole"] == 2
