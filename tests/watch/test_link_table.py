"""The supervisor's link table without processes: both directions kept in step."""

from __future__ import annotations

import pytest

from whosthere.errors import MalformedFrame
from whosthere.watch.link_table import LinkTable, process_key

P, Q = (100, 5), (200, 7)
A, B = b"linker-a", b"linker-b"


def test_a_process_linked_twice_is_watched_until_both_unlink():
    table = LinkTable()
    table.link(P, A)
    table.link(P, B)
    assert len(table) == 1 and table.linked == {A: {P}, B: {P}}
    assert table.unlink(P, A) is False  # B still links it
    assert table.unlink(P, B) is True
    assert len(table) == 0 and table.linked == {}


def test_unlinking_what_is_not_linked_changes_nothing():
    table = LinkTable()
    table.link(P, A)
    assert table.unlink(Q, A) is False
    assert table.unlink(P, B) is False
    assert table.linkers == {P: {A}} and table.linked == {A: {P}}


def test_an_exit_is_told_to_each_linker_once_and_forgotten():
    table = LinkTable()
    table.link(P, A)
    table.link(P, B)
    table.link(Q, A)
    assert table.exited(P) == {A, B}
    assert table.exited(P) == set()
    assert table.linkers == {Q: {A}} and table.linked == {A: {Q}}


def test_a_linker_gone_drops_its_links_and_names_what_nobody_links():
    table = LinkTable()
    table.link(P, A)
    table.link(Q, A)
    table.link(Q, B)
    assert table.drop_linker(A) == [P]  # Q is still linked by B
    assert table.linkers == {Q: {B}} and table.linked == {B: {Q}}
    assert table.drop_linker(A) == []


@pytest.mark.parametrize(
    "item", [[0, 1], [1 << 23, 1], [True, 1], [1, "x"], [1], (1, 2, 3), "1", [1.5, 1]]
)
def test_a_malformed_process_is_refused(item):
    with pytest.raises(MalformedFrame, match="a linked process is"):
        process_key(item)


def test_a_process_comes_off_the_wire_as_a_tuple():
    assert process_key([42, 1234]) == (42, 1234)
    assert process_key([42, None]) == (42, None)


def test_a_batch_of_exits_is_grouped_by_linker_in_exit_order():
    table = LinkTable()
    table.link(P, A)
    table.link(Q, A)
    table.link(Q, B)
    unlinked = (300, 9)  # nobody links it (e.g. an actor of the tree)
    assert table.exited_many([Q, unlinked, P]) == {A: [Q, P], B: [Q]}
    assert len(table) == 0 and table.linked == {}
    assert table.exited_many([P]) == {}
