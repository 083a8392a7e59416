"""The Redis engine actor's peers and its name's lease, decided without Redis."""

from __future__ import annotations

import logging

from whosthere.actors.engine_peers import EnginePeers, NameLease

LOG = logging.getLogger("test")


def test_a_peer_counts_once_it_greeted_with_our_pool_size():
    book = EnginePeers("a", 2, forget_after=10.0, log=LOG)
    assert not book.accepts("b", 0.0)  # never greeted: its casts do not count
    assert book.hello("b", 2, 0.0) is None
    assert book.accepts("b", 1.0)
    assert book.heard["b"] == 1.0


def test_another_pool_size_is_refused_and_its_casts_dropped():
    book = EnginePeers("a", 2, forget_after=10.0, log=LOG)
    book.hello("b", 2, 0.0)
    reason = book.hello("b", 3, 1.0)
    assert reason is not None and "pool_size mismatch" in reason
    assert "b" in book.refused and not book.accepts("b", 1.0)
    assert book.hello("b", 2, 2.0) is None  # restarted with the right size: welcome
    assert "b" not in book.refused


def test_another_wire_protocol_is_refused_whatever_its_pool_size():
    book = EnginePeers("a", 2, forget_after=10.0, log=LOG)
    assert book.hello("b", 2, 0.0, mismatch="wire protocol mismatch: ...") is not None
    assert "wire protocol" in book.refused["b"] and not book.accepts("b", 1.0)


def test_dropped_peers_are_neither_heard_nor_sent_to_one_by_one():
    book = EnginePeers("a", 1, forget_after=10.0, log=LOG)
    for name in ("b", "c"):
        book.hello(name, 1, 0.0)
    book.dropping = {"b"}
    assert not book.accepts("b", 1.0)
    assert book.reachable() == ["c"]
    book.hello("b", 1, 2.0)
    assert not book.accepts("b", 2.0)


def test_silent_peers_and_old_refusals_are_forgotten():
    book = EnginePeers("a", 1, forget_after=10.0, log=LOG)
    book.hello("b", 1, 0.0)
    book.hello("c", 2, 0.0)
    book.hello("d", 1, 5.0)
    book.forget_silent(11.0)
    assert list(book.heard) == ["d"] and book.refused == {}


def test_a_held_lease_serves_at_once():
    lease = NameLease("a", wait_s=5.0, started_at=0.0)
    assert not lease.joined
    assert lease.claimed() and lease.joined
    assert not lease.claimed()  # renewed: no news


def test_a_live_lease_of_another_is_waited_for_then_refused():
    lease = NameLease("a", wait_s=5.0, started_at=0.0)
    assert lease.taken("host pid 1", 1.0) == "wait"
    assert lease.taken("host pid 1", 4.9) == "wait"
    assert lease.taken("host pid 1", 5.0) == "refuse"
    assert "'a' is taken" in lease.refusal() and "host pid 1" in lease.refusal()
    assert lease.taken("host pid 1", 6.0) == "still"


def test_a_lease_that_lapses_while_waiting_is_claimed():
    lease = NameLease("a", wait_s=5.0, started_at=0.0)
    assert lease.taken("old me", 1.0) == "wait"
    assert lease.claimed() and lease.joined


def test_redis_away_at_boot_serves_alone_and_joins_later():
    lease = NameLease("a", wait_s=5.0, started_at=0.0)
    assert lease.unreachable()  # start serving now
    assert not lease.unreachable() and not lease.joined
    assert lease.claimed() and lease.joined


def test_a_name_taken_while_serving_is_news_once():
    lease = NameLease("a", wait_s=5.0, started_at=0.0)
    lease.claimed()
    assert lease.taken("intruder", 10.0) == "lost" and not lease.joined
    assert lease.taken("intruder", 11.0) == "still"
    lease.claimed()
    assert lease.taken("intruder", 12.0) == "lost"
