"""Erlang-style links to OS processes, served by the node's supervisor, blocking.

What is linked and what exits were told is `link_book.LinkBook`, shared with the asyncio
client; this module sends its messages and waits for the node's pushes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import zmq

from whosthere.client import SupervisorWatch, lookup, resolve_address
from whosthere.errors import NodeUnavailable
from whosthere.link_book import LinkBook, ProcessExit, link_items
from whosthere.transport.messages import StartTime
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Dealer

__all__ = ["Links", "ProcessExit", "link_items"]


class Links:
    """Watch OS processes through the node and receive their exits, once each.

    Use it from one thread. `link(pid)` reads the process's start time here and now, so a pid
    that is later reused by another process is never mistaken for the linked one; a pid that
    is already gone is reported at once.
    """

    def __init__(self, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = resolve_address(address)
        self._dealer = Dealer(self.address, timeout=timeout, what="node")
        self._book = LinkBook()
        self._looked = False  # the node's supervisor watch, looked up at the first link
        self._watch: SupervisorWatch | None = None
        self._generation = 0  # the watch's re-armings the links were made for

    # -- a node serving the address again (DESIGN section 12) ---------------------------------

    def node_gone(self) -> None:
        """Told by the revival thread; nothing to do until a node is back."""

    def node_back(self) -> None:
        """Told by the revival thread; the links are made again by this client's own
        thread, at its next call or within a second of `get` (`_relink`)."""

    def _watch_node(self) -> None:
        if not self._looked:
            self._watch = lookup(self.address, self._dealer.timeout).supervisor
            self._looked = True  # only once the lookup worked
            if self._watch is not None:
                self._generation = self._watch.generation
                if self._watch.stable:
                    self._watch.listen(self)

    def _relink(self) -> None:
        """A node serves the address again: link on it everything linked here."""
        watch = self._watch
        if watch is None or watch.generation == self._generation or watch.exited:
            return
        msg = self._book.relink()
        if msg is not None:
            self._dealer.call(msg)  # if it fails, tried again at the next call
        self._generation = watch.generation

    def link(self, pid: int, start: StartTime = None) -> None:
        """Watch `pid`. Blocks until the node has it (at most the timeout: `NodeUnavailable`).

        `start` is the process's start time if the caller knows it (`watch.start_time`).
        """
        self.link_many([pid], [start])

    def link_many(self, pids: list[int], starts: list[StartTime] | None = None) -> None:
        """Watch several processes in one request."""
        self._watch_node()
        self._relink()
        msg = self._book.link(pids, starts)
        self._dealer.call(msg)
        self._book.linked_by(msg)  # only once the node has them

    def unlink(self, pid: int) -> None:
        """Stop watching `pid` (no-op if not linked); its exit is then not reported."""
        msg = self._book.unlink(pid)
        if msg is not None:
            self._dealer.call(msg)

    def get(self, timeout: float | None = None) -> ProcessExit | None:
        """The next exit; waits up to `timeout` seconds (None: forever), then returns None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._book.exits:
            self._relink()
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            for push in self._dealer.recv_pushes(wait):
                self._book.pushed(push)
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self._book.next_exit()

    def __iter__(self) -> Iterator[ProcessExit]:
        while True:
            exit_ = self.get()
            if exit_ is not None:
                yield exit_

    @property
    def socket(self) -> zmq.Socket[bytes]:
        """The socket exits arrive on, to poll beside others (then call `get(timeout=0)`)."""
        return self._dealer.socket

    @property
    def linked(self) -> set[int]:
        """The pids linked and not yet reported."""
        return set(self._book.linked)

    def close(self) -> None:
        """Drop every link and the connection. Idempotent."""
        if self._watch is not None:
            self._watch.unlisten(self)
        if self._dealer.socket.closed:
            return
        msg = self._book.unlink_all()
        if msg is not None:
            with contextlib.suppress(NodeUnavailable):
                self._dealer.call(msg, 0.5)
        self._dealer.close()

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
