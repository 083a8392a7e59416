"""`OwnPresences`: what a client tracked for its own process, to track again on a new node.

A node's presences die with it. When a node serves its fixed address again (DESIGN section
12), a client tracks again the presences it had tracked for its own OS process (its pid,
and its `owner()`s) and not untracked: same metas, new `phx_ref`s. Presences of other
processes are theirs to track again. So each client notes, from the messages it sent and
their replies, what is held: a `Track` or an entry of `TrackMany` that got its phx_ref, an
`Update`'s new meta, and what `Untrack`, `UntrackPid` and `UntrackMany` took away. Pure:
messages in, `TrackMany` batches out. Cheap on the hot path: a type test and a dict write.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

from whosthere.errors import NodeUnavailable, WhosthereError
from whosthere.owners import start_of
from whosthere.steps import Call
from whosthere.tracker.pool import shard_for
from whosthere.transport.messages import Track, TrackMany, Untrack, UntrackMany, UntrackPid, Update
from whosthere.watch.identity import os_pid

log = logging.getLogger("whosthere.client")

RETRACK_BATCH = 1000  # entries per `TrackMany` when tracking again


class OwnPresences:
    """The presences this process holds through one client: owner -> (topic, key) -> meta."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.held: dict[int, dict[tuple[str, str], bytes]] = {}
        self.lock = threading.Lock()  # user threads note; the revival thread reads it all
        _books.add(self)

    def forked(self) -> None:
        """In a forked child: the parent's presences are not this process's."""
        self.pid = os.getpid()
        self.held = {}
        self.lock = threading.Lock()  # a fork may have copied it held

    def __len__(self) -> int:
        return sum(len(presences) for presences in self.held.values())

    def observe(self, msg: tuple[Any, ...], reply: Any) -> None:
        """`msg` was answered with `reply` (not an error): note what it changed."""
        with self.lock:
            self._observe(msg, reply)

    def failed(self, msg: tuple[Any, ...], error: BaseException) -> None:
        """`msg` failed with `error`. An untrack the node could not take (it is gone, with
        its presences) still holds: what it untracked is not tracked again on a new node."""
        if isinstance(error, NodeUnavailable) and type(msg) in (Untrack, UntrackPid, UntrackMany):
            self.observe(msg, None)

    def _observe(self, msg: tuple[Any, ...], reply: Any) -> None:
        kind = type(msg)
        if kind is Track:
            owner = msg[0]
            if os_pid(owner) == self.pid:
                held = self.held.get(owner)
                if held is None:
                    self.held[owner] = {(msg[2], msg[3]): msg[4]}
                else:
                    held[(msg[2], msg[3])] = msg[4]
        elif kind is Update:
            presences = self.held.get(msg[0])
            if presences is not None and (msg[1], msg[2]) in presences:
                presences[(msg[1], msg[2])] = msg[3]
        elif kind is Untrack:
            self._drop(msg[0], (msg[1], msg[2]))
        elif kind is UntrackPid:
            self.held.pop(msg[0], None)
        elif kind is UntrackMany:
            for owner in msg[0]:
                self.held.pop(owner, None)
        elif kind is TrackMany and isinstance(reply, list):
            for entry, result in zip(msg[0], reply, strict=False):
                if isinstance(result, str) and os_pid(entry[0]) == self.pid:
                    self.held.setdefault(entry[0], {})[(entry[2], entry[3])] = entry[4]

    def retrack(self, pool_size: int) -> list[Call]:
        """The `TrackMany` calls that track every held presence again, per shard."""
        per_shard: dict[int, list[list[Any]]] = {}
        with self.lock:
            held = [(owner, dict(presences)) for owner, presences in self.held.items()]
        for owner, presences in held:
            start = start_of(owner)
            for (topic, key), meta in presences.items():
                shard = shard_for(topic, pool_size) if pool_size > 1 else 0
                per_shard.setdefault(shard, []).append([owner, start, topic, key, meta])
        return [
            Call(shard, TrackMany(entries[i : i + RETRACK_BATCH]))
            for shard, entries in per_shard.items()
            for i in range(0, len(entries), RETRACK_BATCH)
        ]

    def _drop(self, owner: int, presence: tuple[str, str]) -> None:
        presences = self.held.get(owner)
        if presences is not None:
            presences.pop(presence, None)
            if not presences:
                del self.held[owner]


def report_retrack(replies: list[Any], address: str) -> tuple[int, int]:
    """Log what tracking again on the node at `address` did: (tracked, refused). A presence
    the user tracked again first is refused as `AlreadyTracked`, and not counted."""
    retracked = refused = 0
    for reply in replies:
        if isinstance(reply, WhosthereError):
            log.warning("whosthere: tracking again on %s failed: %s", address, reply)
            continue
        for result in reply:
            if isinstance(result, str):
                retracked += 1
            elif not (isinstance(result, list) and result[:1] == ["AlreadyTracked"]):
                refused += 1
    log.info(
        "whosthere: %d presence(s) of this process tracked again on %s (%d refused)",
        retracked,
        address,
        refused,
    )
    return retracked, refused


_books: weakref.WeakSet[OwnPresences] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for book in list(_books):
        book.forked()


os.register_at_fork(after_in_child=_forget_after_fork)
