"""Which OS processes hold presences on a shard: links, unlinks, exits and reused pids."""

from __future__ import annotations

import pytest

from whosthere.errors import MalformedFrame
from whosthere.tracker.owner_links import OwnerLinks, check_owner
from whosthere.watch.identity import owner_of

P, Q = 100, 200
TAB1, TAB2 = owner_of(P, 1), owner_of(P, 2)  # two lightweight owners inside process P


def test_a_process_is_linked_on_its_first_presence_only():
    owners = OwnerLinks({})
    assert owners.joined(P, 7) == (P, 7)
    assert owners.joined(P, 7) is None
    assert owners.joined(TAB1, 7) is None  # another owner in the same process: one link
    assert owners.linked == {P: 7}


def test_a_process_is_unlinked_once_its_last_owner_holds_nothing():
    owners = OwnerLinks({})
    owners.joined(TAB1, 7)
    owners.joined(TAB2, 7)
    assert owners.released(TAB1, holds_more=True) is None
    assert owners.released(TAB1, holds_more=False) is None  # TAB2 still holds something
    assert owners.released(TAB2, holds_more=False) == (P, 7)
    assert owners.linked == {}
    assert owners.released(TAB2, holds_more=False) is None  # idempotent


def test_an_exit_takes_every_owner_of_the_process():
    owners = OwnerLinks({})
    owners.joined(TAB1, 7)
    owners.joined(TAB2, 7)
    owners.joined(Q, 9)
    assert owners.exited(P, 7) == {TAB1, TAB2}
    assert owners.linked == {Q: 9}
    assert owners.exited(P, 7) is None  # told twice: once is enough


def test_the_exit_of_an_older_process_with_the_same_pid_takes_nothing():
    owners = OwnerLinks({})
    owners.joined(P, 8)  # the process now holding pid P started at 8
    assert owners.exited(P, 7) is None  # the one that started at 7 had left before
    assert owners.linked == {P: 8}


def test_a_reused_pid_shows_the_linked_process_gone():
    owners = OwnerLinks({})
    owners.joined(P, 7)
    assert owners.stale(P, 7) is None
    assert owners.stale(TAB1, 7) is None
    assert owners.stale(P, 8) == (P, 7)  # pid P now names a process started at 8
    assert owners.stale(Q, 8) is None  # not linked: nothing is stale
    assert owners.exited(*owners.stale(TAB1, 8)) == {P}
    assert owners.joined(TAB1, 8) == (P, 8)  # the new process is linked anew


def test_a_restarted_shard_starts_from_its_journal():
    owners = OwnerLinks({P: 7, Q: 9}, [TAB1, Q])
    assert sorted(owners.processes()) == [(P, 7), (Q, 9)]
    assert owners.exited(P, 7) == {TAB1}
    assert owners.released(Q, holds_more=False) == (Q, 9)


def test_an_unknown_start_time_is_a_start_time_like_any():
    owners = OwnerLinks({})
    assert owners.joined(P, None) == (P, None)
    assert owners.stale(P, None) is None
    assert owners.stale(P, 5) == (P, None)


@pytest.mark.parametrize("bad", [0, -1, True, 1 << 22 | 1 << 23, "1", 1.0, 1 << 62])
def test_check_owner_refuses_what_cannot_name_an_owner(bad):
    with pytest.raises(MalformedFrame):
        check_owner(bad)


def test_check_owner_accepts_pids_and_owners():
    check_owner(P)
    check_owner(TAB2)
