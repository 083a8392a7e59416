"""The links clients' bookkeeping without a node: messages out, pushes in, each exit once."""

from __future__ import annotations

import os

import pytest

from whosthere.link_book import LinkBook, ProcessExit
from whosthere.transport.messages import Link, ProcessesExited, Unlink
from whosthere.watch import start_time

ME = os.getpid()


def test_pids_count_as_linked_only_once_the_node_has_them():
    book = LinkBook()
    msg = book.link([ME, 1], [None, 5])
    assert msg == Link([[ME, start_time(ME)], [1, 5]])  # a start time read where not given
    assert book.linked == {}
    book.linked_by(msg)
    assert book.linked == {ME: start_time(ME), 1: 5}
    with pytest.raises(TypeError, match="^pid must be a positive int"):
        book.link([0], None)


def test_unlinking_names_the_start_time_it_was_linked_with():
    book = LinkBook()
    book.linked_by(Link([[10, 1], [11, 2]]))
    assert book.unlink(10) == Unlink([[10, 1]])
    assert book.unlink(10) is None  # not linked any more: nothing to send
    assert book.unlink_all() == Unlink([[11, 2]])
    assert book.unlink_all() is None and book.linked == {}


def test_each_exit_is_handed_out_once_in_the_order_pushed():
    book = LinkBook()
    book.linked_by(Link([[10, 1], [11, 2]]))
    assert not book.pushed(object())  # another push: no exit
    assert book.pushed(ProcessesExited([[11, 2], [10, 1]]))
    assert book.linked == {}
    assert [book.next_exit(), book.next_exit(), book.next_exit()] == [
        ProcessExit(11, 2),
        ProcessExit(10, 1),
        None,
    ]
