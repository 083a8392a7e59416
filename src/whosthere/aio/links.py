"""`AsyncLinks`: Erlang-style links to OS processes (`whosthere.Links`) for an event loop.

What is linked and what exits were told is `link_book.LinkBook`, shared with the blocking
client; this module sends its messages and waits on the loop for the node's pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from whosthere.aio.client import lookup
from whosthere.aio.dealer import AsyncDealer
from whosthere.aio.waits import wait_event
from whosthere.client import SupervisorWatch, resolve_address
from whosthere.errors import NodeUnavailable
from whosthere.link_book import LinkBook, ProcessExit
from whosthere.transport.messages import StartTime
from whosthere.transport.sockets import DEFAULT_TIMEOUT

log = logging.getLogger("whosthere.client")


def links(address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> AsyncLinks:
    """`AsyncLinks` to the node at `address` (default `$WHOSTHERE_ADDRESS`)."""
    return AsyncLinks(address, timeout=timeout)


class AsyncLinks:
    """Watch OS processes through the node; `await links.get()` or `async for exit in links`
    gives each exit once. As `whosthere.Links`: a pid's start time is read at `link`, so a
    reused pid is never taken for the linked process; one already gone is reported at once.
    For one event loop."""

    def __init__(self, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = resolve_address(address)
        self._dealer = AsyncDealer(
            self.address, timeout=timeout, what="node", on_push=self._on_push
        )
        self._book = LinkBook()
        self._arrived = asyncio.Event()
        self._timeout = timeout
        self._looked = False  # the node's supervisor watch, looked up at the first link
        self._watch: SupervisorWatch | None = None
        self._generation = 0  # the watch's re-armings the links were made for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._relinking: asyncio.Task[None] | None = None

    # -- a node serving the address again (DESIGN section 12) ---------------------------------

    def node_gone(self) -> None:
        """Told by the revival thread; nothing to do until a node is back."""

    def node_back(self) -> None:
        """Told by the revival thread: link everything again, on this client's loop."""
        if self._loop is not None and not self._dealer.closed:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._start_relink)

    def _start_relink(self) -> None:
        self._relinking = asyncio.get_running_loop().create_task(self._relink_now())

    async def _relink_now(self) -> None:
        try:
            await self._relink()
        except NodeUnavailable as exc:  # tried again at the next call
            log.warning("whosthere: linking again on the new node failed: %s", exc)

    async def _watch_node(self) -> None:
        if not self._looked:
            self._loop = asyncio.get_running_loop()
            self._watch = (await lookup(self.address, self._timeout)).supervisor
            self._looked = True  # only once the lookup worked
            if self._watch is not None:
                self._generation = self._watch.generation
                if self._watch.stable:
                    self._watch.listen(self)

    async def _relink(self) -> None:
        watch = self._watch
        if watch is None or watch.generation == self._generation or watch.exited:
            return
        msg = self._book.relink()
        if msg is not None and not self._dealer.closed:
            await self._dealer.call(msg)  # if it fails, tried again at the next call
        self._generation = watch.generation

    async def link(self, pid: int, start: StartTime = None) -> None:
        """Watch `pid` (once this returns, the node has it)."""
        await self.link_many([pid], [start])

    async def link_many(self, pids: list[int], starts: list[StartTime] | None = None) -> None:
        """Watch several processes in one request."""
        await self._watch_node()
        await self._relink()
        msg = self._book.link(pids, starts)
        await self._dealer.call(msg)
        self._book.linked_by(msg)  # only once the node has them

    async def unlink(self, pid: int) -> None:
        """Stop watching `pid` (no-op if not linked); its exit is then not reported."""
        msg = self._book.unlink(pid)
        if msg is not None:
            await self._dealer.call(msg)

    def _on_push(self, push: Any) -> None:
        if self._book.pushed(push):
            self._arrived.set()

    async def get(self, timeout: float | None = None) -> ProcessExit | None:
        """The next exit; waits up to `timeout` seconds (None: forever), then returns None.
        `NodeUnavailable` once the connection is closed."""
        while not self._book.exits:
            if self._dealer.closed:
                raise NodeUnavailable("the links' connection to the node is closed")
            self._dealer.start_reading()
            self._arrived.clear()
            if not await wait_event(self._arrived, timeout):
                return None
        return self._book.next_exit()

    async def __aiter__(self) -> AsyncIterator[ProcessExit]:
        while True:
            exit_ = await self.get()
            if exit_ is not None:
                yield exit_

    @property
    def linked(self) -> set[int]:
        """The pids linked and not yet reported."""
        return set(self._book.linked)

    async def close(self) -> None:
        """Drop every link and the connection. Idempotent."""
        if self._watch is not None:
            self._watch.unlisten(self)
        if self._dealer.closed:
            return
        msg = self._book.unlink_all()
        if msg is not None:
            with contextlib.suppress(NodeUnavailable):
                await self._dealer.call(msg, 0.5)
        await self._dealer.aclose()
        self._arrived.set()  # a waiting `get` sees the close

    async def __aenter__(self) -> AsyncLinks:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
