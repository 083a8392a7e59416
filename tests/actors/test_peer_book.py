"""The cluster actor's peer bookkeeping without processes or sockets: time is an argument."""

from __future__ import annotations

import logging

import pytest

from whosthere.actors.peer_book import (
    _MAX_CONFLICTS,
    _MAX_DORMANT,
    _MAX_LEARNED,
    _QUIET_S,
    GOSSIP_EVERY_S,
    PeerBook,
)

ME, A, B, C = (f"tcp://10.0.0.{i}:4000" for i in (9, 1, 2, 3))
T = 1000.0  # a monotonic clock is far from 0 (never heard counts as heard at 0)


def book(seeds: tuple[str, ...] = (), forget_after: float = 100.0) -> PeerBook:
    b = PeerBook("me", set(seeds), forget_after, logging.getLogger("tests.peer_book"))
    b.listening(ME)
    return b


def answer(b: PeerBook, name: str, address: str, now: float, peers: tuple = ()) -> list[str]:
    """`name`'s hello on our connection to `address`, saying it listens there."""
    b.heard_on(("out", address), now)
    return b.hello(name, ("out", address), address, list(peers), now)


def test_our_own_address_is_no_seed():
    b = PeerBook("me", {A, ME, B}, 100.0, logging.getLogger("tests.peer_book"))
    assert b.listening(ME) == [A, B]
    assert b.seeds == {A, B}


def test_a_hello_on_our_connection_makes_the_name_reachable_there():
    b = book()
    b.dialled(A, T)
    assert answer(b, "a", A, T + 1, peers=(B, ME, A, B, 7)) == [B]  # new, once, strings only
    assert b.routes == {"a": ("out", A)}
    assert b.speaks_for == {("out", A): "a"}
    assert b.address_of == {"a": A}
    assert b.heard == {"a": T + 1}


def test_a_welcome_from_ourselves_is_ignored():
    b = book()
    assert b.learn("me", ("out", A), [B], T) == []
    assert b.routes == {} and b.speaks_for == {}


def test_our_connection_is_preferred_over_an_incoming_one_and_kept():
    b = book()
    assert b.hello("a", ("in", b"x"), A, [], T) == [A]
    assert b.routes == {"a": ("in", b"x")}
    b.dialled(A, T)
    b.heard_on(("out", A), T + 0.1)
    assert b.learn("a", ("out", A), [], T + 0.1) == []  # its welcome on our connection
    assert b.routes == {"a": ("out", A)}
    # it reconnects to us; our connection, even quiet, is kept: it says it listens there
    b.hello("a", ("in", b"y"), A, [], T + 10)
    assert b.routes == {"a": ("out", A)}
    assert b.speaks_for[("in", b"y")] == "a"  # its casts count there too


def test_a_reconnect_replaces_the_old_incoming_route():
    b = book()
    b.hello("a", ("in", b"x"), A, [], T)
    b.hello("a", ("in", b"y"), A, [], T + 1)
    assert b.routes == {"a": ("in", b"y")}


def test_whoever_answers_on_our_connection_is_the_one_there_now():
    b = book()
    b.dialled(A, T)
    answer(b, "a", A, T)
    b.learn("a2", ("out", A), [], T + 0.5)  # a restarted under another name: replaced at once
    assert b.routes == {"a2": ("out", A)}
    assert b.speaks_for == {("out", A): "a2"}
    assert b.address_of == {"a2": A}


def test_a_peer_restarted_elsewhere_is_moved_to_only_once_the_old_route_is_quiet():
    b = book()
    b.dialled(A, T)
    answer(b, "a", A, T)
    b.dialled(B, T)
    answer(b, "a", B, T + _QUIET_S - 1)  # A only slow: kept (a transfer may be under way)
    assert b.routes == {"a": ("out", A)}
    assert b.speaks_for == {("out", A): "a", ("out", B): "a"}
    b.heard_on(("out", B), T + _QUIET_S + 1)
    b.learn("a", ("out", B), [], T + _QUIET_S + 1)  # A quiet, but a welcome says no address
    assert b.routes == {"a": ("out", A)}
    answer(b, "a", B, T + _QUIET_S + 1)  # A quiet and a says it listens at B
    assert b.routes == {"a": ("out", B)}
    assert b.address_of == {"a": B}


def test_the_addresses_passed_on():
    b = book(seeds=(C, ME), forget_after=100.0)
    for address in (A, B, C):
        b.dialled(address, T)
    b.heard_on(("out", A), T)
    b.heard_on(("out", B), T + 60)
    assert b.passed_on(T + 60) == [B, C]  # A silent beyond forget_after/2; C a seed; not ME
    assert b.forget_silent(T + 101) == []
    assert b.dormant == {A}
    assert b.passed_on(T + 101) == [B, C]
    assert b.passed_on(T + 111) == [C]


def test_a_silent_address_goes_dormant_and_its_names_are_forgotten_but_seeds_never():
    b = book(seeds=(C,), forget_after=100.0)
    for name, address in (("a", A), ("c", C)):
        b.dialled(address, T)
        answer(b, name, address, T)
    b.dialled(B, T + 50)  # never answers: silent since dialled
    assert b.forget_silent(T + 100) == []
    assert b.dormant == set()
    assert b.forget_silent(T + 101) == []
    assert b.dormant == {A}
    assert b.routes == {"c": ("out", C)}
    assert b.speaks_for == {("out", C): "c"}
    assert set(b.address_of) == set(b.heard) == {"c"}
    assert set(b.dialled_at) == {A, B, C}  # still dialled: a long split may heal
    b.forget_silent(T + 1000)
    assert b.dormant == {A, B}
    assert b.routes == {"c": ("out", C)}
    b.heard_on(("out", A), T + 1001)  # back
    assert b.dormant == {B}


def test_beyond_max_dormant_the_longest_silent_are_to_be_closed():
    b = book(forget_after=10.0)
    addresses = [f"tcp://10.1.0.{i}:4000" for i in range(_MAX_DORMANT + 2)]
    for i, address in enumerate(addresses):
        b.dialled(address, T + i)
    b.heard_on(("out", addresses[0]), T + 80)  # dialled first, heard last
    assert b.forget_silent(T + 100) == [addresses[1], addresses[2]]
    assert len(b.dormant) == _MAX_DORMANT
    assert addresses[1] not in b.dialled_at and addresses[1] not in b.answered
    assert b.forget_silent(T + 101) == []
    assert b.learn("a", ("in", b"x"), [addresses[1], addresses[3]], T + 101) == [addresses[1]]


def talking(b, greetings, start, end, step=1.0):
    """Each (name, route, address) of `greetings` greets at every step from start to end."""
    t = start
    while t <= end:
        for name, route, address in greetings:
            b.hello(name, route, address, [], t)
        t += step


def test_a_name_on_a_live_names_address_is_a_conflict_once_and_a_quiet_one_is_replaced(caplog):
    b = book()
    b.hello("a", ("in", b"x"), A, [], T)
    with caplog.at_level(logging.WARNING, logger="tests.peer_book"):
        both = [("a", ("in", b"x"), A), ("z", ("in", b"y"), A)]
        talking(b, both, T + 1, T + _QUIET_S + 1)  # both go on talking: not a restart
        assert b.conflicts == {}  # not yet: one of them may fall silent
        talking(b, both, T + _QUIET_S + 2, T + _QUIET_S + 4)
    assert set(b.conflicts) == {("a", "z")}
    assert [r.getMessage() for r in caplog.records] == [
        f"me: peers a and z both say they listen at {A}"
    ]
    assert set(b.routes) == {"a", "z"}
    now = T + 2 * _QUIET_S + 5
    b.hello("z", ("in", b"y"), A, [], now)  # a last heard long ago: quiet
    assert b.routes == {"z": ("in", b"y")}
    assert b.address_of == {"z": A}
    assert b.speaks_for == {("in", b"y"): "z"}


def test_a_node_replaced_under_a_new_name_on_its_address_is_no_conflict(caplog):
    """A rolling deploy on one host: the old node's last words are recent when the new one
    greets, then it falls silent; the new name takes its place and nothing is logged."""
    b = book()
    b.hello("old", ("in", b"x"), A, [], T)
    with caplog.at_level(logging.WARNING, logger="tests.peer_book"):
        talking(b, [("new", ("in", b"y"), A)], T + 0.5, T + 2 * _QUIET_S)
    assert caplog.records == []
    assert b.routes == {"new": ("in", b"y")} and b.suspects == {} and b.conflicts == {}


def test_incoming_routes_and_their_names_are_forgotten_after_forget_after():
    b = book(forget_after=100.0)
    b.hello("a", ("in", b"x"), A, [], T)
    b.heard_on(("in", b"x"), T + 50)
    b.heard_on(("in", b"q"), T + 50)  # nobody greeted there: not kept
    b.forget_silent(T + 101)  # a not heard since T
    assert b.routes == {} and b.speaks_for == {} and b.address_of == {}
    assert b.route_heard == {("in", b"x"): T + 50}
    b.forget_silent(T + 151)
    assert b.route_heard == {}


@pytest.mark.parametrize("reason", ["pool_size mismatch", "another"])
def test_a_refusal_is_new_once_and_expires_after_forget_after(reason):
    b = book(forget_after=100.0)
    assert b.refuse("p", "pool_size mismatch", T) is True
    assert b.refuse("p", reason, T + 50) is (reason != "pool_size mismatch")
    b.forget_silent(T + 149)  # counted from the last refusal
    assert b.refused == {"p": reason}
    b.forget_silent(T + 151)
    assert b.refused == {} and b.refused_at == {}


def test_a_compatible_hello_lifts_a_refusal():
    b = book()
    b.refuse("p", "pool_size mismatch", T)
    b.hello("p", ("in", b"x"), A, [], T + 1)
    assert b.refused == {} and b.refused_at == {}


def test_casts_count_only_on_a_route_their_sender_greeted_on():
    b = book()
    b.hello("a", ("in", b"x"), A, [], T)
    b.hello("b", ("in", b"y"), B, [], T)
    assert b.accepts("b", ("in", b"x"), T + 1) is False  # b's name on a's connection
    assert b.accepts("a", ("in", b"z"), T + 1) is False  # nobody greeted there
    assert b.heard == {"a": T, "b": T}
    assert b.accepts("a", ("in", b"x"), T + 1) is True
    assert b.heard == {"a": T + 1, "b": T}


def test_learned_addresses_are_dialled_up_to_a_cap_and_hitting_it_is_logged_once(caplog):
    b = book(seeds=(C,))
    b.dialled(C, T)
    flood = [f"tcp://10.2.{i // 250}.{i % 250}:4000" for i in range(_MAX_LEARNED + 50)]
    with caplog.at_level(logging.WARNING, logger="tests.peer_book"):
        to_dial = b.hello("rogue", ("in", b"x"), A, flood, T)
        for address in to_dial:
            b.dialled(address, T)
        assert b.hello("rogue", ("in", b"x"), A, flood, T + 1) == []
    assert to_dial == [A, *flood[: _MAX_LEARNED - 1]]  # its own address first; seeds apart
    assert len(set(b.dialled_at) - {C}) == _MAX_LEARNED
    assert [r.getMessage() for r in caplog.records] == [
        f"me: not dialling 51 address(es) learned from rogue: at most {_MAX_LEARNED} "
        "learned addresses are dialled (0 already were)"
    ]
    assert b.learn("c", ("out", C), [C], T + 2) == []  # a seed is no learned address


def test_once_learned_addresses_are_closed_the_cap_has_room_again(caplog):
    b = book(forget_after=10.0)
    for i in range(_MAX_LEARNED):
        b.dialled(f"tcp://10.3.{i // 250}.{i % 250}:4000", T)
    with caplog.at_level(logging.WARNING, logger="tests.peer_book"):
        assert b.learn("a", ("in", b"x"), [A], T) == []
        closed = b.forget_silent(T + 11)  # every one silent: all dormant, the oldest closed
        assert len(closed) == _MAX_LEARNED - _MAX_DORMANT
        assert b.learn("a", ("in", b"x"), [A, B], T + 11) == [A, B]
        assert b.learn("a", ("in", b"x"), [f"tcp://10.4.0.{i}:1" for i in range(999)], T + 12)
    assert len([r for r in caplog.records if "not dialling" in r.getMessage()]) == 2


def test_conflicts_are_forgotten_with_their_names_and_after_forget_after():
    b = book(forget_after=100.0)
    b.hello("a", ("in", b"x"), A, [], T)
    b.hello("b", ("in", b"u"), B, [], T)
    pairs = [("a", ("in", b"x"), A), ("z", ("in", b"y"), A)]
    pairs += [("b", ("in", b"u"), B), ("y", ("in", b"v"), B)]
    talking(b, pairs, T + 1, T + _QUIET_S + 2)
    assert set(b.conflicts) == {("a", "z"), ("b", "y")}
    logged = T + _QUIET_S + 2
    b.hello("z", ("in", b"y"), A, [], logged + _QUIET_S + 1)  # a quiet: replaced by z
    assert set(b.conflicts) == {("b", "y")}
    talking(b, pairs[2:], logged + 1, logged + 98)  # b and y both keep talking on B
    b.forget_silent(logged + 99)
    assert set(b.conflicts) == {("b", "y")}
    b.forget_silent(logged + 101)  # logged over forget_after ago: forgotten, logged again
    assert b.conflicts == {}


def test_conflicts_are_bounded():
    b = book()
    later = T + _QUIET_S * 4 / 3
    for i in range(_MAX_CONFLICTS + 10):
        address = f"tcp://10.5.{i // 250}.{i % 250}:4000"
        for now in (T, T + _QUIET_S * 2 / 3, later):  # both go on talking: a conflict
            b.hello(f"a{i}", ("in", b"a%d" % i), address, [], now)
            b.hello(f"z{i}", ("in", b"z%d" % i), address, [], now)
    assert len(b.conflicts) == _MAX_CONFLICTS
    for i in range(_MAX_CONFLICTS + 10):  # suspected, not yet conflicts: bounded too
        address = f"tcp://10.6.{i // 250}.{i % 250}:4000"
        b.hello(f"b{i}", ("in", b"b%d" % i), address, [], later)
        b.hello(f"y{i}", ("in", b"y%d" % i), address, [], later)
    assert len(b.suspects) == _MAX_CONFLICTS
    assert ("a0", "z0") not in b.conflicts  # the oldest went first
    assert (f"a{_MAX_CONFLICTS + 9}", f"z{_MAX_CONFLICTS + 9}") in b.conflicts


def test_a_connection_is_told_the_addresses_when_they_change_and_now_and_then():
    b = book()
    route, other = ("out", A), ("in", b"x")
    assert b.gossip(route, [A, B], T) == [A, B]
    assert b.gossip(route, [A, B], T + 1) == []  # it has them
    assert b.gossip(other, [A, B], T + 1) == [A, B]  # another connection: told in full
    assert b.gossip(route, [A, B, C], T + 2) == [A, B, C]  # changed
    assert b.gossip(route, [A, B, C], T + 3) == []
    assert b.gossip(route, [A, B, C], T + 2 + GOSSIP_EVERY_S) == [A, B, C]  # anyway, now and then
    answer(b, "a", A, T + 40)
    b.learn("b", route, [], T + 41)  # another name answers there: told afresh
    assert b.gossip(route, [A, B, C], T + 41) == [A, B, C]
    b.forget_silent(T + 41 + GOSSIP_EVERY_S + 1)
    assert b.told == {}  # nothing kept beyond what it is for
