"""Changes grouped by topic, and the gathering of one message's changes into one diff each.

A shard answers a message first and reports what it changed after: a `Calls` batch of a
thousand tracks into one topic is one diff, not a thousand. Within a diff, joins apply
before leaves (Phoenix's `presence_diff`), so a presence that left and joins again within
one message (a peer's, when that peer is up again) cannot share a diff with its leave: the
topic's changes so far are reported first, and gathering starts afresh for it.

Pure: elements in, changes out.
"""

from __future__ import annotations

from whosthere.tracker.state import Element, JoinsLeaves

Changes = dict[str, JoinsLeaves]  # topic -> its joins and leaves, each diff to be


def by_topic(joins: list[Element], leaves: list[Element]) -> Changes:
    changes: Changes = {}
    for e in joins:
        changes.setdefault(e.topic, ([], []))[0].append(e)
    for e in leaves:
        changes.setdefault(e.topic, ([], []))[1].append(e)
    return changes


def group(elements: list[Element]) -> dict[str, list[bytes]]:
    """Elements of one topic by key: {key: [packed meta, ...]}."""
    out: dict[str, list[bytes]] = {}
    for e in elements:
        metas = out.get(e.key)
        if metas is None:
            out[e.key] = [e.meta]
        else:
            metas.append(e.meta)
    return out


class Gathering:
    """The changes of the message being handled, one entry per topic, in the order made."""

    def __init__(self) -> None:
        self._changes: Changes = {}
        self._left: dict[str, set[int]] = {}  # topic -> dots of its gathered leaves, once asked

    def add(self, changes: Changes) -> Changes:
        """Gather `changes`. Returns what must be reported now, before the rest: a topic's
        changes so far, when a presence that left among them joins again."""
        gathered, left = self._changes, self._left
        now: Changes = {}
        for topic, (joins, leaves) in changes.items():
            entry = gathered.get(topic)
            if entry is None:
                gathered[topic] = (list(joins), list(leaves))
                continue
            if joins and entry[1]:
                dots = left.get(topic)
                if dots is None:
                    dots = left[topic] = {e.dot for e in entry[1]}
                if any(e.dot in dots for e in joins):  # back after leaving: the leave first
                    now[topic] = entry
                    del left[topic]
                    gathered[topic] = (list(joins), list(leaves))
                    continue
            entry[0].extend(joins)
            entry[1].extend(leaves)
            dots = left.get(topic)
            if dots is not None:
                dots.update(e.dot for e in leaves)
        return now

    def take(self) -> Changes:
        """Everything gathered (to report), and a fresh start."""
        changes = self._changes
        self._changes, self._left = {}, {}
        return changes
