"""The graceful-permdown handshake without processes: acks come in, time is an argument."""

from __future__ import annotations

from whosthere.tracker.departure import Departure


def test_every_peer_acknowledging_completes_it():
    peers = {"n2", "n1"}
    d = Departure(peers, deadline=1.0)
    assert not d.done and d.missing() == ["n1", "n2"]
    assert d.acked("n2") is False
    assert d.acked("n2") is False  # a repeated goodbye is acknowledged again
    assert d.acked("n9") is False  # a peer not waited for
    assert d.missing() == ["n1"]
    assert d.acked("n1") is True
    assert d.done and d.missing() == []
    assert peers == {"n1", "n2"}  # the caller's set is left alone


def test_the_goodbye_is_repeated_until_the_deadline_then_given_up_with_the_missing_names():
    d = Departure(["n2", "n10", "n1"], deadline=1.0)
    d.acked("n10")
    assert [d.due(t) for t in (0.1, 0.5, 0.999)] == [True, True, True]
    assert sorted(d.waiting) == ["n1", "n2"]  # whom to say goodbye again
    assert d.due(1.0) is False and d.due(1.5) is False
    assert d.missing() == ["n1", "n2"] and not d.done


def test_without_peers_it_is_done_at_once():
    d = Departure(set(), deadline=1.0)
    assert d.done and d.missing() == []
