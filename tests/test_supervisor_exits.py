"""The supervisor's batch of exits: one that fails to be handled loses none of the others.

The watcher reports each exit once; an exit dropped part-way through a batch would leave its
presences tracked for ever. These tests drive `_on_exits` with a fake watcher and push."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest

from whosthere.supervisor import Supervisor
from whosthere.transport.messages import ProcessesExited
from whosthere.watch import ProcessKey
from whosthere.watch.link_table import LinkTable

CHILD, P, Q, R = (10, 1), (100, 5), (200, 7), (300, 9)
A, B = b"linker-a", b"linker-b"


class FakeWatcher:
    def __init__(self, exits: list[ProcessKey]) -> None:
        self.exits = exits
        self.unwatched: list[ProcessKey] = []

    def collect(self) -> list[ProcessKey]:
        exits, self.exits = self.exits, []
        return exits

    def unwatch(self, key: ProcessKey) -> None:
        self.unwatched.append(key)


def supervisor(exits: list[ProcessKey], links: dict[ProcessKey, list[bytes]]) -> Any:
    """A Supervisor without a process: only what `_on_exits` touches."""
    sup: Any = object.__new__(Supervisor)
    sup.log = logging.getLogger("tests.supervisor_exits")
    sup.watcher = FakeWatcher(exits)
    sup.links = LinkTable()
    for key, linkers in links.items():
        for linker in linkers:
            sup.links.link(key, linker)
    sup.by_key = {}
    sup.parent_key = (1, 1)
    sup.pushed = []

    def push(linker: bytes, msg: tuple) -> bool:
        sup.pushed.append((linker, msg))
        return True

    sup.push = push
    return sup


def told(sup: Any) -> list[tuple[bytes, list]]:
    """(linker, exits) of each push, all `ProcessesExited` stamped with when they were seen."""
    for _, msg in sup.pushed:
        assert isinstance(msg, ProcessesExited) and abs(msg.seen_at - time.time()) < 60
    return [(linker, msg.exits) for linker, msg in sup.pushed]


def test_a_child_exit_that_fails_to_be_handled_loses_no_other_exit(caplog):
    sup = supervisor([CHILD, P, Q], {P: [A], Q: [A, B]})
    sup.by_key = {CHILD: SimpleNamespace(name="shard.0")}

    def broken(child: object) -> None:
        raise OSError("restart failed")

    sup._child_exited = broken
    with caplog.at_level(logging.ERROR, "tests.supervisor_exits"):
        sup._on_exits()
    assert sorted(told(sup)) == [(A, [[100, 5], [200, 7]]), (B, [[200, 7]])]
    assert "exit of process 10" in caplog.text and "restart failed" in caplog.text


def test_a_push_that_raises_does_not_stop_the_other_linkers(caplog):
    sup = supervisor([P, Q], {P: [A], Q: [B]})
    sent = sup.push

    def push(linker: bytes, msg: tuple) -> bool:
        if linker == A:
            raise RuntimeError("socket broke")
        return sent(linker, msg)

    sup.push = push
    with caplog.at_level(logging.ERROR, "tests.supervisor_exits"):
        sup._on_exits()
    assert told(sup) == [(B, [[200, 7]])]
    assert "socket broke" in caplog.text


def test_a_linker_gone_loses_its_links_and_the_rest_are_still_told():
    sup = supervisor([P], {P: [A, B], R: [A]})
    sent = sup.push
    sup.push = lambda linker, msg: linker != A and sent(linker, msg)
    sup._on_exits()
    assert told(sup) == [(B, [[100, 5]])]
    assert sup.links.linked == {} and sup.watcher.unwatched == [R]


@pytest.mark.parametrize("failing", [0, 1])
def test_every_exit_of_a_batch_reaches_its_linker_whichever_fails(failing):
    keys = [CHILD, (11, 1)]
    sup = supervisor([*keys, P], {P: [A]})
    sup.by_key = {k: SimpleNamespace(key=k) for k in keys}
    handled = []

    def child_exited(child: Any) -> None:
        if child.key == keys[failing]:
            raise ValueError("bug")
        handled.append(child.key)

    sup._child_exited = child_exited
    sup._on_exits()
    assert handled == [keys[1 - failing]]
    assert told(sup) == [(A, [[100, 5]])]
