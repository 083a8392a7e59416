"""The version in the greetings: read back, tolerated by the first releases, compared."""

from __future__ import annotations

import logging

from whosthere.actors.peer_book import PeerBook
from whosthere.transport import codec
from whosthere.transport import messages as m
from whosthere.transport.wire_version import (
    OURS,
    UNVERSIONED,
    WIRE_VERSION,
    Version,
    incompatible,
    split_version,
    with_version,
)

A, B = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"


def test_a_greeting_carries_our_version_after_the_addresses():
    told = with_version([A, B])
    hello = codec.decode(codec.encode(m.PeerHello("a", 1, A, told)))
    assert split_version(hello.peers) == ([A, B], OURS)
    assert split_version(with_version([])) == ([], OURS)


def test_a_release_from_before_the_versioned_greeting_speaks_the_first_protocol():
    assert split_version([A, B]) == ([A, B], Version(UNVERSIONED, "before the versioned greeting"))
    assert split_version([]) == ([], Version(UNVERSIONED, "before the versioned greeting"))


def test_the_first_releases_skip_the_version_as_a_non_address():
    """Their peer book dials only the strings of a greeting's list (`learn`, as then; run
    against such a release in tests/test_versions.py)."""
    book = PeerBook("me", set(), 10.0, logging.getLogger("tests.wire_version"))
    assert book.learn("a", ("out", A), with_version([B]), 0.0) == [B]


def test_a_later_version_may_say_more_and_an_unreadable_one_is_refused():
    later = [A, {"wire": WIRE_VERSION + 1, "release": "9.0", "features": ["x"]}]
    assert split_version(later) == ([A], Version(WIRE_VERSION + 1, "9.0"))
    for bad in ({"wire": "1"}, {"wire": True}, {"release": "1.0"}, {"wire": 1, "release": 3}):
        assert split_version([A, bad]) == ([A], None)


def test_only_the_same_wire_protocol_joins_and_a_refusal_names_both_versions():
    assert incompatible("b", OURS, "a") is None
    assert incompatible("b", Version(WIRE_VERSION, "0.0.1"), "a") is None  # releases differ
    reason = incompatible("b", Version(WIRE_VERSION + 1, "9.0"), "a")
    assert reason == (
        f"wire protocol mismatch: b speaks wire protocol {WIRE_VERSION + 1} (whosthere 9.0), "
        f"a speaks {OURS}; nodes of different wire protocols cannot form a cluster "
        "(upgrade every node, or roll back)"
    )
    assert "b speaks an unreadable version" in (incompatible("b", None, "a") or "")
