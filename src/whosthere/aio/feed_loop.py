"""`LoopFeed`: a process's feed from one node, read on an event loop.

Every `AsyncSubscription` of one event loop to one node is a member of one feed (`feed`):
the loop reads the feed's SUB socket when its file descriptor says something came, queues
each message for the members of its topic, and sets the event of each member whose queue
gained something. An idle subscription costs no timer and no wake-up. The loop wakes on a
clock only while a mark the feed asked for is missing (`sequencer.SYNC_RETRY`), or when the
node's supervisor has no pidfd to watch. Its pidfd readable: every member hears the node's
end.

A feed belongs to one loop (the socket is only touched from it); another loop of the
process makes its own. It lives from its first member to its last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections.abc import Iterable
from typing import Any, cast

import zmq

from whosthere.aio import readers
from whosthere.aio.dealer import AsyncDealer
from whosthere.client import NodeInfo
from whosthere.errors import NodeUnavailable
from whosthere.feed import FeedMember, Handshake
from whosthere.sequencer import SYNC_RETRY
from whosthere.sub_socket import SubSocket
from whosthere.topology import PUBSUB, PUBSUB_PUB
from whosthere.transport.sockets import GUARD_POLL

log = logging.getLogger("whosthere.pubsub")


class LoopFeed:
    """One loop's node subscription to one node, shared by its `AsyncSubscription`s."""

    tell_last = True  # told of a node back after the clients that track again (`revival`)

    def __init__(self, info: NodeInfo, loop: asyncio.AbstractEventLoop) -> None:
        self.info = info
        self.loop = loop
        self.pid = os.getpid()
        self.users = 0
        self._sub = SubSocket(info)
        self._conn = AsyncDealer(info.endpoints[PUBSUB], what="pubsub actor")  # `Sync`s
        self._fd = int(cast(int, self._sub.socket.get(zmq.FD)))
        self._soon = False  # a `_read` is scheduled
        self._timer: asyncio.TimerHandle | None = None
        readers.add(loop, self._fd, self._read)
        guard = self._sub.guard
        self._guard_fd = None if guard is None else guard.fileno()
        if self._guard_fd is not None:
            readers.add(loop, self._guard_fd, self._read)
        self._read_soon()
        if guard is not None and guard.stable:
            guard.listen(self)

    # -- the node going and coming back (called by `revival.Revival`, in its thread) ------------

    def node_gone(self) -> None:
        """Seen on the pidfd already; a node that came back unlike this one ends the feed."""
        if self._sub.guard is not None and self._sub.guard.changed is not None:
            self.node_back()

    def node_back(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to tell
            self.loop.call_soon_threadsafe(self._revived)

    def _revived(self) -> None:
        """Watch the new node; and once this loop's clients have tracked their presences
        again (`retracks`), let the members hear of it: a member that lists then finds
        them."""
        sub = self._sub
        if sub.socket.closed:
            return
        fd = None if sub.guard is None else sub.guard.fileno()
        if fd is not None:
            readers.renew(self.loop, fd)  # whoever watches it on this loop, anew
        pending = [t for t in retracks.get(self.loop, ()) if not t.done()]
        if pending:
            waited = asyncio.gather(*pending, return_exceptions=True)
            waited.add_done_callback(lambda _: self._resume())
        else:
            self._resume()

    def _resume(self) -> None:
        sub = self._sub
        if sub.socket.closed:
            return
        sub.revived()
        fd = None if sub.guard is None else sub.guard.fileno()
        if fd is not None and self._guard_fd is None:
            readers.add(self.loop, fd, self._read)
            self._guard_fd = fd
        self._read_soon()

    @property
    def ended(self) -> bool:
        """Whether it serves no more (closed, or its node came back unlike the old)."""
        return self._sub.socket.closed or self._sub.feed.gone is not None

    def begin(self, member: FeedMember, topics: Iterable[str]) -> Handshake | None:
        handshake = self._sub.begin(member, topics)
        self._read_soon()  # a socket operation may have taken the descriptor's signal
        return handshake

    def end(self, handshake: Handshake, reply: list[Any] | None) -> None:
        self._sub.end(handshake, reply)
        self._wake()
        self._read_soon()

    def leave(self, member: FeedMember, topic: str | None = None) -> None:
        self._sub.leave(member, topic)
        self._read_soon()

    def close(self) -> None:
        """Stop reading and close the socket; called when the last member left."""
        if self.info.supervisor is not None:
            self.info.supervisor.unlisten(self)
        readers.remove(self.loop, self._fd, self._read)
        if self._guard_fd is not None:
            readers.remove(self.loop, self._guard_fd, self._read)
            self._guard_fd = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sub.close()
        self._conn.close()

    # -- reading -----------------------------------------------------------------------------

    def _read_soon(self) -> None:
        if not self._soon:
            self._soon = True
            self.loop.call_soon(self._read)

    def _read(self) -> None:
        self._soon = False
        sub = self._sub
        if sub.socket.closed:
            return
        if not sub.check_guard() and self._guard_fd is not None:
            readers.remove(self.loop, self._guard_fd, self._read)
            self._guard_fd = None
        more = sub.read()
        self._wake()
        if more:  # let the loop turn between batches
            self._read_soon()
            return
        sync = sub.drained(time.monotonic())
        if sync is not None:
            try:
                self._conn.cast_nowait(sync)
            except NodeUnavailable:
                log.debug("could not ask the PubSub actor for a mark; asking again later")
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Look again later only while a mark is missing, or the supervisor has no pidfd."""
        waits = [SYNC_RETRY] if self._sub.awaiting_mark else []
        guard = self._sub.guard
        if guard is not None and guard.fileno() is None and self._sub.feed.gone is None:
            waits.append(GUARD_POLL)
        if waits and self._timer is None:
            self._timer = self.loop.call_later(min(waits), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._read()

    def _wake(self) -> None:
        for member in self._sub.feed.take_woken():
            member.wake()


_feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, LoopFeed]] = (
    weakref.WeakKeyDictionary()
)
# each loop's clients tracking their presences again on a node back at the address
# (`AsyncPresence`): the feeds tell their members of the new node once these are done
retracks: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakSet[asyncio.Task[None]]
] = weakref.WeakKeyDictionary()


def attach(info: NodeInfo) -> LoopFeed:
    """The running loop's feed from the node `info` describes (made on first use)."""
    loop = asyncio.get_running_loop()
    feeds = _feeds.setdefault(loop, {})
    key = info.endpoints[PUBSUB_PUB]
    feed = feeds.get(key)
    if feed is None or feed.pid != os.getpid() or feed.ended:
        feed = feeds[key] = LoopFeed(info, loop)
    feed.users += 1
    return feed


def detach(feed: LoopFeed) -> None:
    """A member left `feed` for good; the last one closes it."""
    feed.users -= 1
    if feed.users > 0:
        return
    feeds = _feeds.get(feed.loop)
    key = feed.info.endpoints[PUBSUB_PUB]
    if feeds is not None and feeds.get(key) is feed:
        del feeds[key]
    with contextlib.suppress(Exception):  # the loop may be closing
        feed.close()
