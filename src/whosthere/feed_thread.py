"""`ThreadFeed`: a process's feed from one node, read by one thread for blocking readers.

Every `Subscription` of a process to one node is a member of one feed (`feed`). A thread of
the feed's own reads its SUB socket as messages come and queues them for the members, so a
subscription nobody reads costs nothing but its queue, and one that waits in `get` wakes
only when its queue gains something: no timer. The thread waits in `poll` on three file
descriptors: the socket's, a pipe that callers write to after they touched the socket, and
the node supervisor's pidfd (its exit ends every member). It wakes on a clock only while
a mark it asked for is missing (`sequencer.SYNC_RETRY`), or without a pidfd.

ZeroMQ sockets are not thread-safe: the socket is only ever used under the feed's lock, and
the thread polls its file descriptor, not the socket. A caller that sets a filter writes to
the pipe after it, since a socket operation may consume the descriptor's signal.

The thread starts with the feed's first member and ends with its last one. A process forked
from one with a feed starts afresh (`os.register_at_fork`): the parent's sockets are never
touched in the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Iterable
from typing import Any, cast

import zmq

from whosthere.client import NodeInfo
from whosthere.errors import NodeUnavailable
from whosthere.feed import FeedMember, Handshake
from whosthere.sequencer import SYNC_RETRY, Message
from whosthere.sub_socket import SubSocket
from whosthere.topology import PUBSUB, PUBSUB_PUB
from whosthere.transport.sockets import GUARD_POLL, Dealer

log = logging.getLogger("whosthere.pubsub")

SYNC_CAST_TIMEOUT = 0.1  # seconds a `Sync` may wait to be queued (else: asked again later)


class Doorbell:
    """What a blocking reader waits on until its queue gains something, rung by the feed.

    A bare lock, held while there is nothing new: a Ctrl-C that lands in the wait leaves it
    whole. (`threading.Event` waits on a `Condition`, whose lock an exception raised in the
    middle of `wait` can leave released twice: the feed's thread then fails in `set`.) A
    ring with nobody waiting makes the next wait return at once; the reader then finds its
    queue empty and waits again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def ring(self) -> None:
        with contextlib.suppress(RuntimeError):  # rung already
            self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        """Whether it was rung within `timeout` seconds (None: for ever)."""
        return self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))


class ThreadFeed:
    """One process's node subscription to one node, shared by its `Subscription`s."""

    tell_last = True  # told of a node back after the clients that track again (`revival`)

    def __init__(self, info: NodeInfo) -> None:
        self.info = info
        self.pid = os.getpid()
        self.users = 0  # members attached (`attach` / `detach`)
        self.lock = threading.Lock()  # the socket, the feed and every member's queue
        self._sub = SubSocket(info)
        self._fd = int(cast(int, self._sub.socket.get(zmq.FD)))
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poke_lock = threading.Lock()
        self._stopping = False
        self._revived = False  # a node serves the fixed address again: watch its supervisor
        self._thread = threading.Thread(target=self._run, name="whosthere-feed", daemon=True)
        self._thread.start()
        if info.supervisor is not None and info.supervisor.stable:
            info.supervisor.listen(self)

    # -- the node going and coming back (called by `revival.Revival`) --------------------------

    def node_gone(self) -> None:
        """Seen on the pidfd already; a node that came back unlike this one ends the feed."""
        if self.info.supervisor is not None and self.info.supervisor.changed is not None:
            self.node_back()

    def node_back(self) -> None:
        with self.lock:
            self._revived = True
        self._poke()

    # -- members (any thread) ----------------------------------------------------------------

    def begin(self, member: FeedMember, topics: Iterable[str]) -> Handshake | None:
        with self.lock:
            handshake = self._sub.begin(member, topics)
        self._poke()
        return handshake

    def end(self, handshake: Handshake, reply: list[Any] | None) -> None:
        with self.lock:
            self._sub.end(handshake, reply)
            woken = self._sub.feed.take_woken()
        self._poke()
        for member in woken:
            member.wake()

    def leave(self, member: FeedMember, topic: str | None = None) -> None:
        with self.lock:
            self._sub.leave(member, topic)
        self._poke()

    @property
    def serving(self) -> bool:
        """Whether a new subscription may join it (its thread runs, its node is not one
        that came back unlike the old)."""
        return self._thread.is_alive() and not self._stopping and self._sub.feed.gone is None

    def take(self, member: FeedMember) -> Message | None:
        """`member.take()` under the lock (raises its losses and the node's end)."""
        if self.pid != os.getpid():  # before the lock: a fork may have copied it held
            raise NodeUnavailable("a subscription made before fork() is the parent's")
        with self.lock:
            return member.take()

    def stop(self) -> None:
        """End the thread (it closes the socket); called when the last member left."""
        if self.info.supervisor is not None:
            self.info.supervisor.unlisten(self)
        with self.lock:
            self._stopping = True
        self._poke()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        with self._poke_lock:  # a late poke must not write to a number reused since
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the thread --------------------------------------------------------------------------

    def _poke(self) -> None:
        with self._poke_lock, contextlib.suppress(OSError):  # full: it is woken anyway
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def _run(self) -> None:
        dealer: Dealer | None = None
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        guard = self._sub.guard
        guard_fd = None if guard is None else guard.fileno()
        watching = guard_fd is not None  # the pidfd is in the poll (not while it is readable)
        if guard_fd is not None:
            poller.register(guard_fd, select.POLLIN)
        try:
            more = True  # the socket may hold messages already
            while True:
                if not more:
                    poller.poll(self._wait_ms(guard is not None and guard_fd is None))
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
                with self.lock:
                    if self._stopping:
                        return
                    if self._revived:
                        self._revived = False
                        self._sub.revived()
                        if guard_fd is not None and not watching:
                            poller.register(guard_fd, select.POLLIN)
                            watching = True
                    if not self._sub.check_guard() and watching and guard_fd is not None:
                        poller.unregister(guard_fd)  # readable until a node is back
                        watching = False
                    more = self._sub.read()
                    sync = None if more else self._sub.drained(time.monotonic())
                    woken = self._sub.feed.take_woken()
                for member in woken:
                    member.wake()
                if sync is not None:
                    if dealer is None:
                        dealer = Dealer(self.info.endpoints[PUBSUB], what="pubsub actor")
                    try:
                        dealer.cast(sync, SYNC_CAST_TIMEOUT)
                    except NodeUnavailable:
                        log.debug("could not ask the PubSub actor for a mark; asking again later")
        except Exception:  # never silently: the members would wait for ever
            log.exception("the subscription reader thread failed")
            with self.lock:
                self._sub.feed.end(NodeUnavailable("the subscription reader thread failed"))
                woken = self._sub.feed.take_woken()
            for member in woken:
                member.wake()
        finally:
            with self.lock:
                self._sub.close()
            if dealer is not None:
                dealer.close()

    def _wait_ms(self, sleepy_guard: bool) -> int | None:
        """How long the thread may sleep: for ever, unless a mark is missing or the
        supervisor has no pidfd to wake it."""
        waits = [SYNC_RETRY] if self._sub.awaiting_mark else []
        if sleepy_guard:
            waits.append(GUARD_POLL)
        return int(min(waits) * 1000) + 1 if waits else None


_feeds: dict[str, ThreadFeed] = {}  # the PubSub's publishing endpoint -> its feed here
_lock = threading.Lock()


def attach(info: NodeInfo) -> ThreadFeed:
    """This process's feed from the node `info` describes (made on first use)."""
    key = info.endpoints[PUBSUB_PUB]
    with _lock:
        feed = _feeds.get(key)
        if feed is None or feed.pid != os.getpid() or not feed.serving:
            feed = _feeds[key] = ThreadFeed(info)
        feed.users += 1
        return feed


def detach(feed: ThreadFeed) -> None:
    """A member left `feed` for good; the last one stops it."""
    with _lock:
        feed.users -= 1
        if feed.users > 0:
            return
        key = feed.info.endpoints[PUBSUB_PUB]
        if _feeds.get(key) is feed:
            del _feeds[key]
    feed.stop()


def _forget_after_fork() -> None:
    """In a forked child: the parent's feeds (and their threads) are not ours."""
    global _lock
    _feeds.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
