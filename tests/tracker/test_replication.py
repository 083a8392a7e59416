"""Replication bookkeeping without processes: time is an argument, messages come back."""

from __future__ import annotations

from whosthere.node import TRACKER_DEFAULTS
from whosthere.tracker.replication import Replication
from whosthere.tracker.state import State
from whosthere.transport import crdt_wire as wire
from whosthere.transport.messages import GoodbyeAck, Heartbeat, TransferReq

OPTS = {**TRACKER_DEFAULTS, "broadcast_period": 1.0, "down_period": 5.0,
        "permdown_period": 20.0, "max_silent_periods": 3, "clock_sample_periods": 2}  # fmt: skip


def replica(name: str, vsn: int = 1) -> Replication:
    return Replication(State((name, vsn)), OPTS)


def heartbeat(r: Replication, with_delta: bool = False) -> Heartbeat:
    delta = wire.encode_delta(r.state.take_delta()) if with_delta else None
    return Heartbeat(r.me, delta, wire.encode_clock(r.state.clocks()))


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
    outs, (_, leaves) = a.on_graceful_permdown(goodbye)
    assert outs == [("b", GoodbyeAck(a.me))] and [e.key for e in leaves] == ["bob"]
    assert list(a.peers) == ["c"]
    outs, diff = a.on_graceful_permdown(goodbye)  # repeated (its ack was lost): ack again
    assert outs == [("b", GoodbyeAck(a.me))] and diff == ([], [])
    b.on_heartbeat(heartbeat(a), 1.0)
    assert b.goodbye()[1] == {"a"}
