"""`AsyncOwner`, and owners closed in one turn of the loop, untracked together.

A web worker's connections close in bursts (a deploy, a network blip): a thousand
`await owner.close()` in one turn of the loop go as one `UntrackMany` per shard for all of
them, not a thousand round trips (`Closings`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from whosthere.owners import OwnerIdentity

if TYPE_CHECKING:
    from whosthere.aio.presence import AsyncPresence


class AsyncOwner(OwnerIdentity):
    """`whosthere.Owner` for asyncio: `await owner.close()`, `async with`."""

    __slots__ = ("_presence",)

    def __init__(self, presence: AsyncPresence) -> None:
        super().__init__()
        self._presence = presence

    def close(self) -> asyncio.Future[None]:
        """Untrack every presence of this owner (one message per shard): `await owner.close()`.
        Idempotent. It returns a future, not a coroutine, so that a hundred thousand closes
        gathered at once cost no task each (`asyncio.ensure_future` takes either)."""
        if self.closed:
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        return self._presence._closings.close(self.id, self)

    async def __aenter__(self) -> AsyncOwner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


Closing = tuple[int, AsyncOwner | None, asyncio.Future[None]]  # (owner id, owner, its close)


class Closings:
    """Owners untracked whole in this turn of the loop: at its end, `untrack` (every shard,
    all of them at once) runs for all, and each close's future gets the outcome."""

    def __init__(self, untrack: Callable[[list[int]], Awaitable[None]]) -> None:
        self._untrack = untrack
        self._closing: list[Closing] = []  # asked in this turn
        self._tasks: set[asyncio.Task[None]] = set()  # under way: kept from the collector

    def close(self, pid: int, owner: AsyncOwner | None) -> asyncio.Future[None]:
        """Untrack every presence of `pid` (an owner's id) with the others of this turn."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._closing.append((pid, owner, future))
        if len(self._closing) == 1:  # after the other tasks of this turn
            loop.call_soon(self._close_together)
        return future

    def _close_together(self) -> None:
        batch, self._closing = self._closing, []
        task = asyncio.get_running_loop().create_task(self._untrack_many(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _untrack_many(self, batch: list[Closing]) -> None:
        try:
            await self._untrack([pid for pid, _, _ in batch])
        except Exception as exc:  # every close of the batch fails alike
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, owner, future in batch:
            if owner is not None:
                owner.closed = True
            if not future.done():
                future.set_result(None)
