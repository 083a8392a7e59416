"""PeerBook with peers found by DNS: which addresses are dialled, which closed and when, and
our own addresses skipped. Pure: time is an argument."""

from __future__ import annotations

import logging

from whosthere.actors.peer_book import _MAX_LEARNED, PeerBook

ME, A, B, C, D = (f"tcp://10.0.0.{i}:4000" for i in (9, 1, 2, 3, 4))
T = 1000.0
FORGET = 100.0  # forget_after: the permdown period


def book(seeds: tuple[str, ...] = ()) -> PeerBook:
    b = PeerBook("me", set(seeds), FORGET, logging.getLogger("tests.dns"), discovering=True)
    b.listening(ME, {ME, "tcp://127.0.0.1:4000"})
    return b


def dial(b: PeerBook, addresses: list[str], now: float) -> list[str]:
    for address in addresses:
        b.dialled(address, now)
    return addresses


def answer(b: PeerBook, name: str, address: str, now: float, peers: tuple = ()) -> None:
    b.heard_on(("out", address), now)
    b.hello(name, ("out", address), address, list(peers), now)


def test_what_dns_names_is_dialled_once_and_our_own_addresses_never():
    b = book()
    assert b.discover({A, B, ME, "tcp://127.0.0.1:4000"}) == [A, B]
    dial(b, [A, B], T)
    assert b.discover({A, B, C}) == [C]  # only what is new
    assert b.discovered == {A, B, C}


def test_an_address_dns_names_is_kept_however_long_it_is_silent():
    b = book()
    dial(b, b.discover({A, B}), T)
    assert b.forget_silent(T + 10 * FORGET) == []
    assert set(b.dialled_at) == {A, B}


def test_an_address_that_leaves_dns_is_closed_only_once_silent_for_forget_after():
    b = book()
    dial(b, b.discover({A, B}), T)
    answer(b, "a", A, T)
    answer(b, "b", B, T)
    b.discover({A})  # B left DNS: nothing happens at once
    assert b.forget_silent(T + 1) == []
    answer(b, "b", B, T + 50)  # and while it answers it stays
    assert b.forget_silent(T + 50 + FORGET) == []
    assert b.forget_silent(T + 51 + FORGET) == [B]  # silent forget_after: its replica permdown
    assert set(b.dialled_at) == {A}
    assert "b" not in b.routes and B not in b.dormant and B not in b.answered
    assert b.discover({A, B}) == [B]  # back in DNS: dialled again


def test_a_silent_address_a_live_peer_still_names_is_kept_dormant():
    b = book()
    dial(b, b.discover({A}), T)
    answer(b, "a", A, T, peers=(B,))  # A knows of B (which DNS has not named yet)
    assert dial(b, b.learn("a", ("out", A), [B], T), T) == [B]
    assert b.forget_silent(T + FORGET + 1) == []  # B silent, but live A names it
    assert B in b.dormant
    answer(b, "a", A, T + FORGET + 2, peers=(C,))  # A no longer names B
    assert b.forget_silent(T + FORGET + 3) == [B]


def test_what_a_peer_named_counts_no_more_once_the_peer_is_gone():
    b = book()
    dial(b, b.discover({A}), T)
    answer(b, "a", A, T, peers=(B,))
    dial(b, [B], T)
    b.discover(set())  # A left DNS and went silent with B
    assert b.forget_silent(T + FORGET + 1) == [A, B]
    assert b.dialled_at == {}


def test_a_hello_with_no_addresses_leaves_what_the_peer_named_as_it_was():
    b = book()
    dial(b, b.discover({A}), T)
    answer(b, "a", A, T, peers=(B,))
    dial(b, [B], T)
    answer(b, "a", A, T + FORGET, peers=())  # unchanged since last told
    assert b.forget_silent(T + FORGET + 1) == []
    assert B in b.dialled_at


def test_without_discovery_a_silent_learned_address_stays_dormant():
    b = PeerBook("me", set(), FORGET, logging.getLogger("tests.dns"))
    b.listening(ME)
    dial(b, [A], T)
    assert b.forget_silent(T + FORGET + 1) == []
    assert b.dormant == {A}


def test_seeds_given_beside_names_are_never_closed():
    b = book(seeds=(C,))
    dial(b, [C], T)
    assert b.forget_silent(T + 10 * FORGET) == []
    assert set(b.dialled_at) == {C}


def test_addresses_dns_names_are_not_counted_against_the_cap_on_learned_ones():
    b = book()
    named = {f"tcp://10.2.{i // 250}.{i % 250}:4000" for i in range(_MAX_LEARNED + 10)}
    dial(b, b.discover(named), T)
    assert len(b.learn("a", ("in", b"x"), [D], T)) == 1


def test_our_own_addresses_are_neither_passed_on_nor_learned():
    b = book()
    dial(b, b.discover({A}), T)
    answer(b, "a", A, T)
    assert b.learn("a", ("out", A), ["tcp://127.0.0.1:4000", ME, B], T) == [B]
    assert b.passed_on(T) == [A]
